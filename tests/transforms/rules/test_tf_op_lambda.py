import numpy as np
import pytest

from lstm_transforms._keras import keras, tf
from lstm_transforms.layer_configs import IndexSlice
from lstm_transforms.transforms import FloatLambdaWarning, rewrite

L = keras.layers


def _wrap(op, shape):
    i = keras.Input(shape)
    x = L.Dense(shape[-1], name="pre")(i)
    return keras.Model(i, L.Dense(2, name="post")(op(x)))


def _middle(model):
    (layer,) = [layer for layer in model.layers if layer.name not in ("pre", "post") and layer.name != model.layers[0].name]
    return layer


@pytest.mark.parametrize(
    "op, shape, native",
    [
        (lambda x: tf.squeeze(x, -1), (6, 4, 1), L.Reshape),
        (lambda x: tf.squeeze(x, axis=[1]), (1, 4, 3), L.Reshape),
        (lambda x: tf.expand_dims(x, 1), (6, 4), L.Reshape),
        (lambda x: tf.reshape(x, (-1, 24)), (6, 4), L.Reshape),
        (lambda x: tf.transpose(x, (0, 2, 1)), (6, 4), L.Permute),
        (lambda x: x[:, -1, :], (6, 4), IndexSlice),
        (lambda x: x[..., 0, :], (6, 3, 4), IndexSlice),
        (lambda x: x[:, 2], (6, 4), IndexSlice),
        (lambda x: x[..., None], (6, 4), L.Reshape),
    ],
)
def test_shape_tf_op_becomes_native_layer(op, shape, native, checks):
    model = _wrap(op, shape)
    before = checks.snapshot(model)
    assert type(_middle(model)).__name__ in ("TFOpLambda", "SlicingOpLambda")
    rewritten = rewrite(model)
    assert type(_middle(rewritten)) is native
    checks.same_outputs(model, rewritten, np.random.randn(3, *shape).astype("float32"))
    checks.untouched(model, before)


@pytest.mark.parametrize(
    "op",
    [
        lambda x: x[:, -3:, :],  # keeps several steps
        lambda x: x[:, ::2],  # strided
        lambda x: tf.nn.relu(x),  # computes
        lambda x: tf.reshape(x, (-1, 4)),  # folds time into the batch
    ],
)
def test_near_misses_are_not_made_native_and_warn(op, checks):
    model = _wrap(op, (6, 4))
    with pytest.warns(FloatLambdaWarning):
        rewritten = rewrite(model)
    # Not turned into a native layer; wrapped in a float Lambda of the same name (float_op_lambda).
    assert type(_middle(rewritten)) is L.Lambda
    assert _middle(rewritten).name == _middle(model).name
    x = np.random.randn(3, 6, 4).astype("float32")
    checks.same_outputs(model, rewritten, x)


def test_index_slice_serializes():
    layer = IndexSlice(axis=1, index=-1, name="last")
    again = IndexSlice.from_config(layer.get_config())
    x = np.arange(24, dtype="float32").reshape(2, 3, 4)
    np.testing.assert_array_equal(again(x), x[:, -1])
    assert again.compute_output_shape((None, 3, 4)) == (None, 4)
