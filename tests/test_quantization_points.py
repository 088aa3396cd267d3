"""Every named quantization point acts: narrowing it changes the quantized model's output."""

import numpy as np
import pytest

import lstm_transforms as lt
from lstm_transforms._keras import keras
from tests.helpers import calibrate

L = keras.layers


def _x(scale=1.0):
    return (np.random.default_rng(3).standard_normal((8, 12, 5)) * scale).astype("float32")


def _model(layer, x):
    inputs = keras.Input(x.shape[1:])
    return keras.Model(inputs, layer(inputs))


def _quantize(model, x, **scheme):
    qat = lt.quantize_model(model, scheme=lt.RNNQuantizeScheme(**scheme))
    calibrate(qat, x)
    return qat


def _qat(layer, x, **scheme):
    model = _model(layer, x)
    return model, _quantize(model, x, **scheme)


def _differs(a, b, atol=1e-4):
    return np.max(np.abs(np.asarray(a) - np.asarray(b))) > atol


@pytest.mark.parametrize("make", [lambda: L.LSTM(8, return_sequences=True), lambda: L.GRU(8, return_sequences=True)])
def test_weight_bits_act_on_kernel_and_recurrent_kernel(make):
    x = _x()
    model, q8 = _qat(make(), x)
    q3 = _quantize(model, x, weight_bits=3)
    assert _differs(q8(x), q3(x), 0.01)
    wrapper = q8.layers[-1]
    names = [w.name.split("/")[-1] for w, _, _ in wrapper._weight_vars]
    assert names == ["kernel:0", "recurrent_kernel:0"]
    assert all(isinstance(q, lt.PerGateWeightQuantizer) for _, q, _ in wrapper._weight_vars)


def test_gate_bits_act():
    x = _x()
    model, q16 = _qat(L.LSTM(8, return_sequences=True), x)
    q4 = _quantize(model, x, gate_bits=4)
    assert _differs(q16(x), q4(x), 0.01)


def test_hidden_state_range_acts_and_output_is_on_its_grid():
    x = _x()
    _, qat = _qat(L.LSTM(8, return_sequences=True), x)
    cell = qat.layers[-1].layer.cell
    y = qat(x).numpy()
    lo, hi = cell.quant_output_min.numpy(), cell.quant_output_max.numpy()
    assert len(np.unique(y)) <= 256 < y.size  # int8: at most 256 distinct output values
    step = (hi - lo) / 255  # fake quant may nudge the range by under one step so that 0 is exact
    assert y.min() >= min(lo, 0) - step and y.max() <= hi + step
    cell.quant_output_max.assign(hi / 4)
    assert _differs(y, qat(x))


def test_cell_state_range_and_clip_act():
    x = _x(scale=4.0)
    inputs = keras.Input(x.shape[1:])
    layer = L.LSTM(4, return_state=True)
    model = keras.Model(inputs, layer(inputs)[2])  # the final cell state c
    kernel, rec, bias = layer.get_weights()
    bias[:12] = 20.0  # input, forget and candidate gates saturate: c grows by ~1 per step
    layer.set_weights([kernel, rec, bias])
    assert np.abs(model(x).numpy()).max() > 10.0
    clipped = lt.quantize_model(model)
    unclipped = lt.quantize_model(model, scheme=lt.RNNQuantizeScheme(cell_clip=0.0))
    calibrate(clipped, x)
    calibrate(unclipped, x)
    c_clipped, c_unclipped = clipped(x).numpy(), unclipped(x).numpy()
    assert np.abs(c_clipped).max() <= 10.0 < np.abs(c_unclipped).max()
    np.testing.assert_allclose(c_unclipped, model(x).numpy(), atol=0.01)
    cell = clipped.layers[-1].layer.cell
    assert cell.quant_cell_max_abs.numpy() <= 10.0 < unclipped.layers[-1].layer.cell.quant_cell_max_abs.numpy()
    cell.quant_cell_max_abs.assign(0.1)
    assert _differs(c_clipped, clipped(x))


def test_activation_bits_16_is_finer_than_8():
    x = _x()
    model, q8 = _qat(L.GRU(8, return_sequences=True), x)
    q16 = _quantize(model, x, activation_bits=16)
    reference = model(x).numpy()
    assert np.abs(q16(x).numpy() - reference).mean() < np.abs(q8(x).numpy() - reference).mean()


def test_weights_only_keeps_activations_float_and_fused_path():
    x = _x()
    model, qat = _qat(L.LSTM(8, return_sequences=True), x, weights_only=True)
    layer = qat.layers[-1].layer
    assert layer._could_use_gpu_kernel and not layer.cell.full_quantization
    y = qat(x).numpy()
    assert len(np.unique(y)) > 256  # outputs not quantized
    assert _differs(y, model(x), 1e-5)  # but weights are


def test_ranges_learn_over_every_time_step_not_only_the_last():
    x = _x()
    x[:, :6] *= 6.0  # early steps drive h further than the last step does
    model = _model(L.SimpleRNN(8, return_sequences=False, activation="relu"), x)
    rng = np.random.default_rng(0)  # fixed weights: a weakly recurrent cell, so h follows its input
    model.layers[1].set_weights([0.5 * rng.standard_normal((5, 8)), 0.1 * rng.standard_normal((8, 8)), np.zeros(8)])
    qat = lt.quantize_model(model)
    # Each pass feeds h(t-1) back through the range of the pass before: a few passes to converge.
    lt.calibrate(qat, x, passes=4)
    inputs = keras.Input(x.shape[1:])
    cell = qat.layers[-1].layer.cell
    float_layer = L.SimpleRNN(8, return_sequences=True, activation="relu")
    seq_model = keras.Model(inputs, float_layer(inputs))
    float_layer.set_weights([w.numpy() for w in qat.layers[-1].weights if "quant_" not in w.name and "optimizer" not in w.name][:3])
    seq = seq_model(x).numpy()
    assert seq.max() > seq[:, -1].max() * 1.2
    assert abs(seq.max() - 6.0) > 1.0  # far from the initial range [-6, 6] of a ReLU cell
    # The learned max is the max of h over every step (up to the int8 quantization of the inputs).
    assert cell.quant_output_max.numpy() == pytest.approx(seq.max(), rel=0.03)


@pytest.mark.parametrize(
    "layer_class,dropout",
    [
        (lt.QuantizedLSTM, {"dropout": 0.5}),
        (lt.QuantizedLSTM, {"recurrent_dropout": 0.5}),
        (lt.QuantizedGRU, {"dropout": 0.5}),
        (lt.QuantizedGRU, {"recurrent_dropout": 0.5}),
    ],
)
def test_dropout_draws_one_mask_per_sample(layer_class, dropout):
    # Identical samples: only per-sample dropout masks can make their outputs differ.
    x = np.repeat(_x()[:1], 6, axis=0)
    y = layer_class(8, return_sequences=True, **dropout)(x, training=True).numpy()
    assert all(_differs(y[0], y[k]) for k in range(1, len(y)))


STEP_LAYERS = {  # cells deployed as per-step integer ops: QAT simulates that step
    "gru": lambda: L.GRU(8, return_sequences=True),
    "gru_reset_before": lambda: L.GRU(8, return_sequences=True, reset_after=False),
    "simple_rnn_tanh": lambda: L.SimpleRNN(8, return_sequences=True),
    "simple_rnn_relu": lambda: L.SimpleRNN(8, activation="relu", return_sequences=True),
}
STEP_POINTS = {
    "gru": {"output", "input_z", "input_r", "input_h", "recurrent_z", "recurrent_r", "recurrent_h", "pre_z", "pre_r",
            "pre_h", "reset_product", "state_delta", "update"},
    "simple_rnn_tanh": {"output", "input", "recurrent", "pre"},
    "simple_rnn_relu": {"output", "input", "recurrent"},  # the ReLU is fused into the ADD: its output is h
}
STEP_POINTS["gru_reset_before"] = STEP_POINTS["gru"]


@pytest.mark.parametrize("kind", list(STEP_LAYERS))
def test_every_point_of_a_deployed_step_acts(kind):
    x = _x()
    _, qat = _qat(STEP_LAYERS[kind](), x)
    cell = qat.layers[-1].layer.cell
    assert set(cell.learned_points) == STEP_POINTS[kind]
    # h of a tanh SimpleRNN is the TANH output, on its fixed grid: its learned range is only observed.
    inert = {"output"} if kind == "simple_rnn_tanh" else set()
    y = qat(x).numpy()
    for point in cell.learned_points:
        lo, hi = cell.learned_range(point)
        saved = lo.numpy(), hi.numpy()
        lo.assign(saved[0] / 4)
        hi.assign(saved[1] / 4)
        try:
            changed = _differs(y, qat(x))
        finally:
            lo.assign(saved[0])
            hi.assign(saved[1])
        assert changed == (point not in inert), point


@pytest.mark.parametrize("activation, step, lowest", [("tanh", 1 / 128, -1.0), ("sigmoid", 1 / 256, 0.0)])
def test_tanh_and_logistic_are_on_tflites_fixed_int8_grids(activation, step, lowest):
    x = _x()
    _, qat = _qat(L.SimpleRNN(8, activation=activation, return_sequences=True), x)
    y = qat(x).numpy().astype(np.float64)
    codes = (y - lowest) / step
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)
    assert codes.min() >= 0 and codes.max() <= 255
    assert len(np.unique(y)) > 50  # many grid points used, not a clamp
