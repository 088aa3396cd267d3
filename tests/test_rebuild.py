"""A QAT model is a clean graph: every layer's nodes are the model's own, so sub-models work."""

import numpy as np
import pytest

import lstm_transforms as lt
from lstm_transforms._keras import keras
from lstm_transforms.rebuild import stale_layers

L = keras.layers
K = keras.backend
T, F = 6, 5


def _seq(inputs):
    return keras.Model(inputs, L.Dense(3)(L.LSTM(8)(inputs)))


def _zoo():
    def single(make):
        def build():
            inputs = keras.Input((T, F))
            return keras.Model(inputs, L.Dense(3)(make()(inputs)))

        return build

    def stacked():
        return keras.Sequential([keras.Input((T, F)), L.LSTM(8, return_sequences=True), L.GRU(6), L.Dense(2)])

    def question():
        i = keras.Input(shape=(16, 8, 1))
        x = L.Conv2D(1, (5, 1), activation="relu", padding="same")(i)
        x = L.BatchNormalization()(x)
        x = L.Lambda(lambda q: K.squeeze(q, -1), name="squeeze_last_dim")(x)
        x = L.LSTM(8, return_sequences=True)(x)
        x = L.Dense(8, activation="relu")(L.Flatten()(x))
        return keras.Model(i, L.Dense(4, activation="softmax")(x))

    def multi_input():
        a, b = keras.Input((T, F)), keras.Input((4,))
        return keras.Model([a, b], L.Dense(2)(L.Concatenate()([L.GRU(6)(a), L.Dense(4)(b)])))

    def return_state():
        inputs = keras.Input((T, F))
        seq, h, c = L.LSTM(8, return_sequences=True, return_state=True)(inputs)
        decoded = L.GRU(8)(seq, initial_state=h)
        return keras.Model(inputs, L.Dense(3)(L.Concatenate()([decoded, c])))

    return {
        "lstm": single(lambda: L.LSTM(8)),
        "gru": single(lambda: L.GRU(8)),
        "bidirectional": single(lambda: L.Bidirectional(L.LSTM(6))),
        "stacked-cells": single(lambda: L.RNN(L.StackedRNNCells([L.LSTMCell(6), L.SimpleRNNCell(4)]))),
        "stacked-layers": stacked,
        "question": question,
        "multi-input": multi_input,
        "return-state": return_state,
    }


def _inputs(model, n=4):
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((n,) + tuple(t.shape[1:])).astype("float32") for t in model.inputs]
    return xs if len(xs) > 1 else xs[0]


@pytest.mark.parametrize("name", list(_zoo()))
def test_a_sub_model_for_every_layer(name):
    model = _zoo()[name]()
    qat = lt.quantize_model(model)
    assert stale_layers(qat) == []
    x = _inputs(qat)
    lt.calibrate(qat, x)
    for layer in qat.layers:
        assert len(layer.inbound_nodes) == 1, (layer.name, len(layer.inbound_nodes))
        sub = keras.Model(qat.inputs, layer.output)
        out = sub(x, training=False)
        assert all(np.all(np.isfinite(np.asarray(o))) for o in (out if isinstance(out, list) else [out]))
    last = keras.Model(qat.inputs, qat.layers[-1].output)
    np.testing.assert_array_equal(last(x, training=False).numpy(), qat(x, training=False).numpy())


def test_quantized_weights_and_names_survive_the_rebuild():
    model = _zoo()["stacked-cells"]()
    qat = lt.quantize_model(model)
    wrapper = qat.layers[2]
    names = [w.name for w in wrapper.weights]
    assert names[0] == "rnn/stacked_rnn_cells/lstm_cell/kernel:0", names
    assert len(set(names)) == len(names)
    for original in model.layers[1].weights:
        (copy,) = [w for w in wrapper.weights if w.name == original.name]
        np.testing.assert_array_equal(copy.numpy(), original.numpy())
