"""`lstm_transforms.data`: every accepted form of data gives the same batches, lazily, checked."""

import numpy as np
import pytest

from lstm_transforms import data
from lstm_transforms._keras import keras, tf

L = keras.layers
T, F = 6, 5


def _one_input():
    inputs = keras.Input((T, F), name="seq")
    return keras.Model(inputs, L.LSTM(3)(inputs))


def _two_inputs():
    a, b = keras.Input((T, F), name="a"), keras.Input((4,), name="b")
    return keras.Model([a, b], L.Concatenate()([L.LSTM(3)(a), b]))


def _x(n=10):
    return np.random.default_rng(0).standard_normal((n, T, F)).astype("float32")


def _z(n=10):
    return np.random.default_rng(1).standard_normal((n, 4)).astype("float32")


def _joined(batches):
    batches = list(batches)
    return batches, [np.concatenate(column) for column in zip(*batches)]


def _generator(arrays, batch_axis=True):
    def gen():
        for k in range(len(arrays[0])):
            sample = [a[k : k + 1] if batch_axis else a[k] for a in arrays]
            yield sample if len(sample) > 1 else sample[0]

    return gen


def _forms_one_input(x):
    y = np.arange(len(x))
    return {
        "array": x,
        "list": [x],
        "dict": {"seq": x},
        "generator": _generator([x]),
        "generator-no-batch-axis": _generator([x], batch_axis=False),
        "dataset": tf.data.Dataset.from_tensor_slices(x),
        "dataset-batched": tf.data.Dataset.from_tensor_slices(x).batch(3),
        "dataset-xy": tf.data.Dataset.from_tensor_slices((x, y)),
        "dataset-xy-batched": tf.data.Dataset.from_tensor_slices((x, y)).batch(7),
        "dataset-xyw-batched": tf.data.Dataset.from_tensor_slices((x, y, y * 1.0)).batch(2),
    }


@pytest.mark.parametrize("form", list(_forms_one_input(_x())))
def test_every_form_gives_the_same_batches(form):
    x = _x()
    batches, (joined,) = _joined(data.batches(_forms_one_input(x)[form], _one_input(), batch_size=4))
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(joined, x)
    assert joined.dtype == np.float32


def _forms_two_inputs(x, z):
    y = np.arange(len(x))
    return {
        "list": [x, z],
        "dict-by-name": {"b": z, "a": x},
        "generator": _generator([x, z]),
        "dataset": tf.data.Dataset.from_tensor_slices((x, z)),
        "dataset-xy": tf.data.Dataset.from_tensor_slices(((x, z), y)).batch(3),
        "dataset-dict": tf.data.Dataset.from_tensor_slices({"a": x, "b": z}).batch(4),
    }


@pytest.mark.parametrize("form", list(_forms_two_inputs(_x(), _z())))
def test_two_inputs(form):
    x, z = _x(), _z()
    _, (got_x, got_z) = _joined(data.batches(_forms_two_inputs(x, z)[form], _two_inputs(), batch_size=4))
    np.testing.assert_array_equal(got_x, x)
    np.testing.assert_array_equal(got_z, z)


def test_max_samples_and_samples_have_a_batch_axis_of_one():
    x = _x()
    batches, (joined,) = _joined(data.batches(x, _one_input(), batch_size=4, max_samples=5))
    assert [len(b[0]) for b in batches] == [4, 1]
    np.testing.assert_array_equal(joined, x[:5])
    each = list(data.samples(_generator([x]), _one_input(), max_samples=3))
    assert [s[0].shape for s in each] == [(1, T, F)] * 3
    assert data.sample_count(x) == 10 and data.sample_count(x, max_samples=3) == 3
    assert data.sample_count(_generator([x])) is None


def test_integer_inputs_keep_their_dtype():
    inputs = keras.Input((T,), dtype="int32")
    model = keras.Model(inputs, L.Embedding(10, 3)(inputs))
    (batch,) = data.batches(np.arange(3 * T).reshape(3, T) % 10, model, batch_size=8)
    assert batch[0].dtype == np.int32


def test_generators_and_datasets_are_read_as_batches_are_needed():
    x, pulled = _x(100), []

    def gen():
        for k in range(len(x)):
            pulled.append(k)
            yield x[k : k + 1]

    stream = data.batches(gen, _one_input(), batch_size=4)
    next(stream)
    assert len(pulled) == 4
    stream = data.batches(tf.data.Dataset.from_generator(gen, output_signature=tf.TensorSpec((1, T, F))),
                          _one_input(), batch_size=4)
    pulled.clear()
    next(stream)
    assert len(pulled) < 20


@pytest.mark.parametrize(
    "make, message",
    [
        pytest.param(lambda: _x()[:, :, :2], r"input 0 has sample shape \(6, 2\); the model expects \(6, 5\)", id="shape"),
        pytest.param(lambda: _x(0), r"representative_dataset is empty", id="empty"),
        pytest.param(lambda: [_x(), _x()], r"representative_dataset has 2 arrays; the model has 1 inputs", id="count"),
        pytest.param(lambda: _generator([_x(), _x()]), r"representative_dataset yielded 2 arrays; the model has 1",
                     id="generator-count"),
        pytest.param(lambda: tf.data.Dataset.from_tensor_slices(_x()[:, :2]),
                     r"input 0 has sample shape \(2, 5\); the model expects \(6, 5\)", id="dataset-shape"),
    ],
)
def test_errors_name_the_input_and_the_expected_shape(make, message):
    with pytest.raises(ValueError, match=message):
        list(data.batches(make(), _one_input()))


def test_different_sample_counts():
    with pytest.raises(ValueError, match="arrays have different numbers of samples"):
        list(data.batches([_x(10), _z(9)], _two_inputs()))


@pytest.mark.parametrize("bad, message", [
    pytest.param(lambda: (s for s in _x()), r"an iterator, which can be read only once: pass the generator function",
                 id="generator-object"),
    pytest.param(lambda: None, r"must be a numpy array, a list of arrays .* got NoneType", id="none"),
    pytest.param(lambda: "x.npy", r"got str", id="string"),
])
def test_unsupported_kinds(bad, message):
    with pytest.raises(TypeError, match=message):
        list(data.batches(bad(), _one_input(), name="data"))
