"""Saved QAT models load back exactly (.h5, SavedModel and .keras) and keep training."""

import numpy as np
import pytest

import lstm_transforms as lt
from lstm_transforms._keras import keras
from tests.helpers import assert_recurrent_quantized, calibrate

L = keras.layers


def _trained_qat():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 7, 4)).astype("float32")
    y = rng.integers(0, 3, 32)
    inputs = keras.Input((7, 4))
    h = L.Bidirectional(L.LSTM(6, return_sequences=True))(inputs)
    h = L.RNN(L.StackedRNNCells([L.GRUCell(5), L.SimpleRNNCell(4)]))(h)
    model = keras.Model(inputs, L.Dense(3)(h))
    qat = lt.quantize_model(model)
    qat.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qat.fit(x, y, epochs=2, batch_size=8, verbose=0)
    return qat, x, y


_PATHS = {"h5": "model.h5", "tf": "saved_model", "keras": "model.keras"}


def _save_and_load(model, path, fmt):
    model.save(path, save_format=fmt)
    with lt.quantize_scope():
        return keras.models.load_model(path)


@pytest.mark.parametrize("fmt", list(_PATHS))
def test_round_trip_is_exact_and_training_resumes(tmp_path, fmt):
    qat, x, y = _trained_qat()
    loaded = _save_and_load(qat, str(tmp_path / ("1_" + _PATHS[fmt])), fmt)
    np.testing.assert_array_equal(qat.predict(x, verbose=0), loaded.predict(x, verbose=0))
    assert len(qat.get_weights()) == len(loaded.get_weights())
    for a, b in zip(qat.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert_recurrent_quantized(loaded, x, expected_layers=2)
    # A loaded model saves and loads again: same variables, names and values.
    again = _save_and_load(loaded, str(tmp_path / ("2_" + _PATHS[fmt])), fmt)
    assert [w.name for w in again.weights] == [w.name for w in qat.weights]
    for a, b in zip(qat.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)
    before = [w.numpy().copy() for w in loaded.trainable_weights]
    history = loaded.fit(x, y, epochs=1, batch_size=8, verbose=0).history["loss"]
    assert np.isfinite(history[0])
    assert any(not np.array_equal(a, w.numpy()) for a, w in zip(before, loaded.trainable_weights))


def test_loading_with_stock_scope_after_install(tmp_path):
    import tensorflow_model_optimization as tfmot

    qat, x, _ = _trained_qat()
    path = str(tmp_path / "model.h5")
    qat.save(path)
    lt.install()
    try:
        with tfmot.quantization.keras.quantize_scope():
            loaded = keras.models.load_model(path)
    finally:
        lt.uninstall()
    np.testing.assert_array_equal(qat.predict(x, verbose=0), loaded.predict(x, verbose=0))


def test_keras_format_of_a_stock_tfmot_model(tmp_path):
    """tfmot's own QuantizeLayer cannot be loaded from a .keras file; inside lt.quantize_scope it can."""
    import tensorflow_model_optimization as tfmot

    inputs = keras.Input((6,))
    model = keras.Model(inputs, L.Dense(3)(L.Dense(4, activation="relu")(inputs)))
    qat = tfmot.quantization.keras.quantize_model(model)
    x = np.random.default_rng(0).standard_normal((8, 6)).astype("float32")
    qat(x, training=True)
    path = str(tmp_path / "stock.keras")
    qat.save(path)
    with pytest.raises(ValueError, match="expected 5 variables, but received 3"):
        with tfmot.quantization.keras.quantize_scope():
            keras.models.load_model(path)
    with lt.quantize_scope():
        loaded = keras.models.load_model(path)
    for a, b in zip(qat.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(qat(x).numpy(), loaded(x).numpy())
