import warnings

import numpy as np
import pytest

from lstm_transforms._keras import keras, tf
from lstm_transforms.layer_configs import IndexSlice
from lstm_transforms.transforms import FloatLambdaWarning, graph, rewrite
from lstm_transforms.transforms.pattern import find_matches
from lstm_transforms.transforms.rules import shape_lambda

L, K = keras.layers, keras.backend


def _model(fn, shape=(6, 4, 1), name="op"):
    i = keras.Input(shape)
    x = L.Dense(shape[-1], name="pre")(i)
    x = L.Lambda(fn, name=name)(x)
    return keras.Model(i, L.Dense(2, name="post")(x))


@pytest.mark.parametrize(
    "fn, shape, native",
    [
        (lambda q: K.squeeze(q, -1), (6, 4, 1), L.Reshape),
        (lambda q: tf.squeeze(q, 2), (6, 1, 4), L.Reshape),
        (lambda q: tf.expand_dims(q, 1), (6, 4), L.Reshape),
        (lambda q: tf.reshape(q, (-1, 12)), (4, 3), L.Reshape),
        (lambda q: tf.transpose(q, (0, 2, 1)), (6, 4), L.Permute),
        (lambda q: q[:, -1], (6, 4), IndexSlice),
        (lambda q: q, (6, 4), L.Reshape),
    ],
)
def test_pure_shape_lambda_becomes_native_layer(fn, shape, native, checks):
    model = _model(fn, shape=shape)
    before = checks.snapshot(model)
    x = np.random.randn(3, *shape).astype("float32")
    with warnings.catch_warnings():
        warnings.simplefilter("error", FloatLambdaWarning)
        rewritten = rewrite(model)
    op = rewritten.get_layer("op")
    assert type(op) is native
    assert not any(isinstance(layer, L.Lambda) for layer in rewritten.layers)
    checks.same_outputs(model, rewritten, x)
    checks.untouched(model, before)


def test_rule_matches_only_single_input_shape_lambdas():
    i = keras.Input((6, 4, 1))
    a = L.Lambda(lambda q: K.squeeze(q, -1), name="shape")(i)
    b = L.Lambda(lambda q: q * 2, name="times2")(i)
    c = L.Lambda(lambda qs: qs[0] + qs[1], name="two_inputs")([i, i])
    g = graph.from_model(keras.Model(i, [a, b, c]))
    matches = find_matches(g, shape_lambda.RULE)
    assert len(matches) == 3  # the pattern sees every Lambda call ...
    accepted = [g.nodes[m["op"]]["name"] for m in matches if shape_lambda.RULE.filter(g, m)]
    assert accepted == ["shape"]  # ... the traced filter keeps only the shape op


@pytest.mark.parametrize(
    "fn, why",
    [
        (lambda q: q * 2, "Mul"),
        (lambda q: tf.reshape(q, (-1, 4)), "no single native layer"),  # folds time into the batch
        (lambda q: q[:, -3:], "no single native layer"),  # keeps several steps
    ],
)
def test_non_shape_lambda_is_kept_in_float_with_a_warning_naming_it(fn, why, checks):
    model = _model(fn, shape=(6, 4))
    with pytest.warns(FloatLambdaWarning, match=r"'op'.*" + why):
        rewritten = rewrite(model)
    assert type(rewritten.get_layer("op")) is L.Lambda
    assert rewritten is model  # nothing else to rewrite: nothing rebuilt


def test_non_shape_lambda_is_cloned_safely_when_the_model_is_rebuilt(checks):
    i = keras.Input((6, 4, 1))
    x = L.Lambda(lambda q: K.squeeze(q, -1), name="squeeze")(i)
    x = L.Lambda(lambda q: q * 2, name="times2")(x)
    model = keras.Model(i, x)
    with pytest.warns(FloatLambdaWarning, match="'times2'"):
        rewritten = rewrite(model)
    kept = rewritten.get_layer("times2")
    assert type(kept) is L.Lambda and kept is not model.get_layer("times2")
    checks.same_outputs(model, rewritten, np.random.randn(3, 6, 4, 1).astype("float32"))


def test_lambda_with_variable_time_uses_a_free_dimension(checks):
    model = _model(lambda q: K.squeeze(q, -1), shape=(None, 4, 1))
    rewritten = rewrite(model)
    assert rewritten.get_layer("op").target_shape == (-1, 4)
    for steps in (2, 7):
        checks.same_outputs(model, rewritten, np.random.randn(2, steps, 4, 1).astype("float32"))


def test_sequential_model_with_a_shape_lambda(checks):
    model = keras.Sequential([keras.Input((6, 4, 1)), L.Lambda(lambda q: K.squeeze(q, -1), name="sq"), L.Dense(2)])
    before = checks.snapshot(model)
    rewritten = rewrite(model)
    assert type(rewritten.get_layer("sq")) is L.Reshape
    checks.same_outputs(model, rewritten, np.random.randn(3, 6, 4, 1).astype("float32"))
    checks.untouched(model, before)
