"""The model from the original question goes through install() + stock tfmot quantize_model."""

import numpy as np
import pytest
import tensorflow_model_optimization as tfmot

import lstm_transforms as lt
from lstm_transforms._keras import keras, tf
from tests.helpers import assert_recurrent_quantized, question_model, squeeze_last_dim

L = keras.layers


def _squeeze_variants():
    return {
        "K.squeeze Lambda": squeeze_last_dim,
        "tf.squeeze": lambda x: tf.squeeze(x, -1),
        "slice": lambda x: x[..., 0],
        "Reshape": lambda x: L.Reshape((32, 32))(x),
    }


@pytest.fixture
def installed():
    lt.install()
    yield
    lt.uninstall()


@pytest.mark.parametrize("variant", list(_squeeze_variants()))
def test_stock_quantize_model_after_install(installed, variant):
    model = question_model(_squeeze_variants()[variant])
    qat = tfmot.quantization.keras.quantize_model(model)

    inner = [type(getattr(layer, "layer", layer)).__name__ for layer in qat.layers]
    assert not {"Lambda", "TFOpLambda", "SlicingOpLambda"} & set(inner), inner
    bn = [layer for layer in qat.layers if isinstance(getattr(layer, "layer", None), L.BatchNormalization)]
    assert len(bn) == 1 and bn[0].quantize_config.get_output_quantizers(bn[0].layer)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 32, 32, 1)).astype("float32")
    y = rng.integers(0, 12, 16)
    lt.calibrate(qat, x)
    assert_recurrent_quantized(qat, x)
    # The LSTM output (a sub-model of the QAT model) within a few int8 steps of the float one...
    float_lstm = [layer for layer in model.layers if isinstance(layer, L.LSTM)][0]
    qat_lstm = [layer for layer in qat.layers if isinstance(getattr(layer, "layer", None), L.LSTM)][0]
    h_float = keras.Model(model.inputs, float_lstm.output)(x).numpy()
    h_qat = keras.Model(qat.inputs, qat_lstm.output)(x).numpy()
    np.testing.assert_allclose(h_qat, h_float, atol=0.03 * np.abs(h_float).max())
    # ...and the softmax within 10% of the spread of the float probabilities (near 1/12 each, untrained).
    y_float, y_qat = model(x).numpy(), qat(x).numpy()
    assert np.abs(y_qat - y_float).max() < 0.1 * np.ptp(y_float), (np.abs(y_qat - y_float).max(), np.ptp(y_float))

    qat.compile("adam", "sparse_categorical_crossentropy")
    before = [w.numpy().copy() for w in qat.trainable_weights]
    loss = qat.fit(x, y, epochs=1, batch_size=8, verbose=0).history["loss"][0]
    assert np.isfinite(loss)
    assert any(not np.array_equal(a, w.numpy()) for a, w in zip(before, qat.trainable_weights))


def test_stock_tfmot_fails_on_it_without_install():
    model = question_model(_squeeze_variants()["Reshape"])
    with pytest.raises((RuntimeError, ValueError)):
        tfmot.quantization.keras.quantize_model(model)
