"""Saved QAT models load back exactly (.h5 and SavedModel) and keep training."""

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


@pytest.mark.parametrize("fmt", ["h5", "tf"])
def test_round_trip_is_exact_and_training_resumes(tmp_path, fmt):
    qat, x, y = _trained_qat()
    path = str(tmp_path / ("model.h5" if fmt == "h5" else "saved_model"))
    qat.save(path, save_format=fmt)
    with lt.quantize_scope():
        loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(qat.predict(x, verbose=0), loaded.predict(x, verbose=0))
    assert len(qat.get_weights()) == len(loaded.get_weights())
    for a, b in zip(qat.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert_recurrent_quantized(loaded, x, expected_layers=2)
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
