import pytest

from lstm_transforms._keras import keras, tf
from lstm_transforms.transforms.shape_ops import analyze

K = keras.backend


@pytest.mark.parametrize(
    "fn, shape, spec",
    [
        (lambda q: K.squeeze(q, -1), (None, 8, 5, 1), ("Reshape", (8, 5))),
        (lambda q: tf.squeeze(q, axis=2), (None, 8, 1, 5), ("Reshape", (8, 5))),
        (lambda q: tf.expand_dims(q, -1), (None, 8, 5), ("Reshape", (8, 5, 1))),
        (lambda q: tf.reshape(q, (-1, 40)), (None, 8, 5), ("Reshape", (40,))),
        (lambda q: tf.reshape(q, (-1, tf.shape(q)[1], 5)), (None, None, 5), ("Reshape", (-1, 5))),
        (lambda q: q, (None, 8, 5), ("Reshape", (8, 5))),
        (lambda q: tf.identity(q), (None, 8, 5), ("Reshape", (8, 5))),
        (lambda q: tf.transpose(q, (0, 2, 1)), (None, 8, 5), ("Permute", (2, 1))),
        (lambda q: q[:, -1, :], (None, 8, 5), ("IndexSlice", 1, 7)),
        (lambda q: q[:, -1, :], (None, None, 5), ("IndexSlice", 1, -1)),
        (lambda q: q[..., 0], (None, 8, 5), ("IndexSlice", 2, 0)),
    ],
)
def test_pure_shape_ops_map_to_one_native_layer(fn, shape, spec):
    result = analyze(fn, shape, tf.float32)
    assert result.pure
    assert result.layer_spec == spec


@pytest.mark.parametrize(
    "fn, word",
    [
        (lambda q: q * 2, "Mul"),
        (lambda q: tf.nn.relu(q), "Relu"),
        (lambda q: tf.reshape(q + 0.0, (-1, 40)), "Add"),
        (lambda q: tf.cast(q, tf.float16), "Cast"),
        (lambda q: tf.shape(q), "output not derived"),
    ],
)
def test_computation_is_not_a_shape_op(fn, word):
    result = analyze(fn, (None, 8, 5), tf.float32)
    assert not result.pure and result.layer_spec is None
    assert word in result.reason


@pytest.mark.parametrize(
    "fn",
    [
        lambda q: q[:, -3:, :],  # keeps several steps
        lambda q: tf.reshape(q, (-1, 5)),  # folds time into the batch
        lambda q: tf.squeeze(q),  # no axis: would squeeze a batch of 1 too
        lambda q: tf.reshape(tf.transpose(q, (0, 2, 1)), (-1, 40)),  # two moves, no single layer
    ],
)
def test_shape_ops_without_a_single_native_layer_are_left_alone(fn):
    result = analyze(fn, (None, 8, 5), tf.float32)
    assert result.layer_spec is None


def test_names_and_source_text_do_not_matter():
    def squeeze_last_dim(q):  # named like a squeeze, computes a product
        return K.squeeze(q, -1) * 1.0001

    assert analyze(squeeze_last_dim, (None, 8, 1), tf.float32).layer_spec is None


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=15, deadline=None)
@given(st.permutations([1, 2, 3]), st.integers(0, 1))
def test_any_transpose_is_a_permute_and_any_index_a_slice(perm, index):
    shape = (None, 2, 3, 4)
    permute = analyze(lambda q: tf.transpose(q, [0] + list(perm)), shape, tf.float32)
    expected = ("Reshape", (2, 3, 4)) if list(perm) == [1, 2, 3] else ("Permute", tuple(perm))
    assert permute.layer_spec == expected
    axis = perm[0]
    sliced = analyze(lambda q: tf.gather(q, index, axis=axis), shape, tf.float32)
    assert sliced.layer_spec is None  # GatherV2 reads values by index: not in the data-moving set
    key = (slice(None),) * axis + (index,)
    assert analyze(lambda q: q[key], shape, tf.float32).layer_spec == ("IndexSlice", axis, index)
