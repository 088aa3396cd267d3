"""`lstm_transforms.calibrate`: ranges from data (min / max), nothing else changed."""

import numpy as np
import pytest

import lstm_transforms as lt
from lstm_transforms._keras import keras
from lstm_transforms.recurrent import cells_of

L = keras.layers
T, F = 8, 5


def _model():
    inputs = keras.Input((T, F))
    x = L.Conv1D(6, 3, padding="same", activation="relu", name="front")(inputs)
    x = L.BatchNormalization(name="bn")(x)
    x = L.LSTM(8, return_sequences=True, dropout=0.2, name="lstm")(x)
    x = L.Dropout(0.3)(L.Flatten()(x))
    return keras.Model(inputs, L.Dense(3, name="head")(x))


def _data(n=96):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((n, T, F)) * 3.0).astype("float32")


def _var(model, suffix):
    (v,) = [w for w in model.weights if w.name.endswith(suffix)]
    return float(v.numpy())


def test_ranges_are_the_extremes_of_the_data_and_nothing_else_changes():
    model, x = _model(), _data()
    bn = model.get_layer("bn")
    bn.set_weights([w + 0.5 for w in bn.get_weights()])  # non-trivial moving statistics
    qat = lt.quantize_model(model)
    trainable_before = [w.numpy().copy() for w in qat.trainable_weights]
    bn_stats_before = [w.numpy().copy() for w in qat.weights if "moving_" in w.name]

    assert lt.calibrate(qat, x, batch_size=32) is qat

    # tfmot's Conv1D ReLU output range: the float layer's extremes (it sees the 8-bit input).
    front = keras.Model(model.input, model.get_layer("front").output)(x).numpy()
    assert _var(qat, "front/post_activation_max:0") == pytest.approx(front.max(), rel=0.03)
    assert _var(qat, "front/post_activation_min:0") == 0.0
    # The standalone BatchNormalization output range: its inference-mode output, not batch statistics.
    bn_out = keras.Model(model.input, bn.output)(x, training=False).numpy()
    assert _var(qat, "bn/output_max:0") == pytest.approx(bn_out.max(), rel=0.03)
    assert _var(qat, "bn/output_min:0") == pytest.approx(bn_out.min(), rel=0.03)
    # The LSTM output range: extremes of h over every step and sample.
    h = keras.Model(model.input, model.get_layer("lstm").output)(x, training=False).numpy()
    (cell,) = cells_of(qat.get_layer("quant_lstm").layer)
    assert float(cell.quant_output_max.numpy()) == pytest.approx(h.max(), abs=0.02)
    assert float(cell.quant_output_min.numpy()) == pytest.approx(h.min(), abs=0.02)

    for a, w in zip(trainable_before, qat.trainable_weights):
        np.testing.assert_array_equal(a, w.numpy())
    for a, b in zip(bn_stats_before, [w.numpy() for w in qat.weights if "moving_" in w.name]):
        np.testing.assert_array_equal(a, b)
    # Dropout and BatchNormalization settings are restored.
    assert qat.get_layer("quant_bn").layer.trainable
    assert cell.dropout == pytest.approx(0.2)


def test_calibration_is_deterministic_and_brings_qat_close_to_float():
    model, x = _model(), _data()
    float_y = model(x, training=False).numpy()
    qat = lt.quantize_model(model)
    qat.get_layer("quantize_layer")(x, training=True)  # tfmot's input range starts at [0, 0]
    uncalibrated = np.abs(qat(x, training=False).numpy() - float_y).max()
    lt.calibrate(qat, x)
    ranges = [w.numpy().copy() for w in qat.weights if w.shape.rank == 0]
    calibrated = np.abs(qat(x, training=False).numpy() - float_y).max()
    lt.calibrate(qat, x)  # no dropout noise: the same ranges again (up to the quantized inputs they saw)
    for a, w in zip(ranges, [w for w in qat.weights if w.shape.rank == 0]):
        np.testing.assert_allclose(a, w.numpy(), rtol=1e-2)
    scale = np.abs(float_y).max()
    assert calibrated < 0.05 * scale, (calibrated, scale)
    assert calibrated < uncalibrated, (calibrated, uncalibrated)


def test_fine_tuning_continues_with_moving_averages():
    model, x = _model(), _data()
    qat = lt.quantize_model(model)
    lt.calibrate(qat, x)
    (cell,) = cells_of(qat.get_layer("quant_lstm").layer)
    before = float(cell.quant_output_max.numpy())
    qat.compile("adam", "mse")
    qat.train_on_batch(x * 0.0, np.zeros((len(x), 3), "float32"))  # all-zero batch: range shrinks by EMA only
    after = float(cell.quant_output_max.numpy())
    assert 0.9 * before < after < before


def test_bad_arguments():
    qat = lt.quantize_model(_model())
    with pytest.raises(ValueError, match="batch_size and passes must be >= 1"):
        lt.calibrate(qat, _data(), batch_size=0)
    with pytest.raises(ValueError, match="sample shape"):
        lt.calibrate(qat, np.zeros((4, T + 1, F), "float32"))
    with pytest.raises(ValueError, match="only tf-keras functional and Sequential"):
        lt.calibrate(None, _data())
