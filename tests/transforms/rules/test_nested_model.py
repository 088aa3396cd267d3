import numpy as np

from lstm_transforms._keras import keras
from lstm_transforms.transforms import graph, rewrite
from lstm_transforms.transforms.pattern import find_matches
from lstm_transforms.transforms.rules import nested_model

L, K = keras.layers, keras.backend


def _encoder():
    i = keras.Input((6, 4, 1))
    x = L.Lambda(lambda q: K.squeeze(q, -1), name="squeeze")(i)
    x = L.Dense(5, name="dense")(x)
    return keras.Model(i, x, name="encoder")


def test_nested_model_is_flattened_and_its_lambda_rewritten(checks):
    i = keras.Input((6, 4, 1))
    x = _encoder()(i)
    x = L.Dense(5, name="dense")(x)  # same name as inside: inner names get a prefix
    model = keras.Model(i, x)
    before = checks.snapshot(model)
    rewritten = rewrite(model)
    names = [layer.name for layer in rewritten.layers]
    assert "encoder_dense" in names and "encoder_squeeze" in names
    assert not any(isinstance(layer, (keras.Model, L.Lambda)) for layer in rewritten.layers)
    assert type(rewritten.get_layer("encoder_squeeze")) is L.Reshape
    checks.same_outputs(model, rewritten, np.random.randn(2, 6, 4, 1).astype("float32"))
    checks.untouched(model, before)


def test_nested_sequential_called_twice_keeps_shared_weights(checks):
    block = keras.Sequential([keras.Input((4,)), L.Dense(4, activation="relu", name="d")], name="block")
    i = keras.Input((4,))
    model = keras.Model(i, L.Add()([block(i), block(L.Dense(4)(i))]))
    rewritten = rewrite(model)
    shared = rewritten.get_layer("block_d")
    assert len(shared._inbound_nodes) == 2
    checks.same_outputs(model, rewritten, np.random.randn(3, 4).astype("float32"))


def test_nested_call_with_extra_arguments_is_not_flattened():
    inner = keras.Sequential([keras.Input((4,)), L.BatchNormalization()], name="inner")
    i = keras.Input((4,))
    g = graph.from_model(keras.Model(i, inner(i, training=False)))
    assert find_matches(g, nested_model.RULE) == []
