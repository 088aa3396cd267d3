"""bake: the float model the converter sees computes what the Keras model computes (no conversion here).

A float model baked with `DeployedRNN`s (fused LSTMs as stock LSTM layers, everything else written
out step by step) must give the float model's outputs: that is what "unrolled integer ops that
compute exactly what the layer computes" rests on. For a QAT model the weights are the QAT model's
fake-quantized weights.
"""

import numpy as np
import pytest

import lstm_transforms as lt
from lstm_transforms._keras import keras
from lstm_transforms.export import ExportError, baked_float_model
from lstm_transforms.export.bake import bake
from lstm_transforms.export.deployed import DeployedRNN
from lstm_transforms.export.plan import deployment_plan

L = keras.layers
T, F = 5, 3


def _stacked(cells, **kwargs):
    return L.RNN(L.StackedRNNCells(cells), **kwargs)


LAYERS = {
    "lstm": lambda: L.LSTM(4),
    "lstm_options": lambda: L.LSTM(4, use_bias=False, recurrent_dropout=0.3, unroll=True, go_backwards=True,
                                   return_sequences=True),
    "lstm_relu_hard_sigmoid": lambda: L.LSTM(4, activation="relu", recurrent_activation="hard_sigmoid",
                                             return_sequences=True),
    "gru": lambda: L.GRU(4, return_sequences=True, go_backwards=True),
    "gru_reset_after_false": lambda: L.GRU(4, reset_after=False),
    "gru_no_bias": lambda: L.GRU(4, use_bias=False),
    "simple_rnn_relu": lambda: L.SimpleRNN(4, activation="relu", return_sequences=True),
    "simple_rnn_tanh": lambda: L.SimpleRNN(4),
    "mixed_stack": lambda: _stacked([L.LSTMCell(4), L.GRUCell(3, reset_after=False), L.SimpleRNNCell(2)],
                                    go_backwards=True),
    "bidirectional_sum": lambda: L.Bidirectional(L.LSTM(4, return_sequences=True), merge_mode="sum"),
    "bidirectional_gru_ave": lambda: L.Bidirectional(L.GRU(4), merge_mode="ave"),
}


@pytest.mark.parametrize("make", list(LAYERS.values()), ids=list(LAYERS))
def test_baked_float_model_equals_the_float_model(make):
    keras.utils.set_random_seed(0)
    i = keras.Input((T, F))
    model = keras.Model(i, make()(i))
    for w in model.weights:  # non-zero biases too
        w.assign(np.random.default_rng(1).normal(0, 0.5, w.shape))
    baked = baked_float_model(model)
    assert any(isinstance(layer, DeployedRNN) for layer in baked.layers)
    x = np.random.default_rng(2).normal(size=(4, T, F)).astype(np.float32)
    np.testing.assert_allclose(baked.predict(x, verbose=0), model.predict(x, verbose=0), atol=2e-5)


def test_return_state_outputs_keep_their_nesting_and_order():
    i = keras.Input((T, F))
    outputs = _stacked([L.LSTMCell(4), L.GRUCell(3)], return_state=True, return_sequences=True)(i)
    bi = L.Bidirectional(L.LSTM(2, return_state=True), merge_mode=None)(i)
    # c of the LSTM cell used: that cell is unrolled; h only: fused
    # bi: [forward sequence, backward sequence, forward h, forward c, backward h, backward c]
    model = keras.Model(i, [outputs[0], outputs[1][1], outputs[2], bi[0], bi[4], bi[5]])
    plan = deployment_plan(model)
    assert [c.deploy for c in plan.layer(model.layers[1].name).cells] == ["unrolled", "unrolled"]
    assert [c.deploy for c in plan.layer(model.layers[2].name).cells] == ["fused", "unrolled"]
    baked = baked_float_model(model)
    x = np.random.default_rng(2).normal(size=(4, T, F)).astype(np.float32)
    for got, want in zip(baked.predict(x, verbose=0), model.predict(x, verbose=0)):
        np.testing.assert_allclose(got, want, atol=2e-5)


def test_fused_cells_hold_the_qat_weights_and_ranges():
    keras.utils.set_random_seed(0)
    i = keras.Input((T, F))
    qat = lt.quantize_model(keras.Model(i, L.Dense(2)(L.RNN(L.StackedRNNCells([L.LSTMCell(4), L.LSTMCell(3)]))(i))))
    x = np.random.default_rng(0).normal(size=(16, T, F)).astype(np.float32)
    lt.calibrate(qat, x)
    baked = bake(qat, deployment_plan(qat))
    wrapper = next(layer for layer in qat.layers if hasattr(layer, "_weight_vars") and len(layer._weight_vars) == 4)
    qat_values = [w._make_quantizer_fn(q, v, False, qv)().numpy() for w in [wrapper] for v, q, qv in w._weight_vars]
    lstms = [layer for d in baked.model.layers if isinstance(d, DeployedRNN) for layer in d._fused.values()]
    np.testing.assert_array_equal(lstms[0].cell.kernel.numpy(), qat_values[0])
    np.testing.assert_array_equal(lstms[1].cell.recurrent_kernel.numpy(), qat_values[3])
    cells = wrapper.layer.cell.cells
    for ranges, cell in zip(baked.lstm_ranges, cells):
        assert ranges.output == pytest.approx((min(cell.quant_output_min.numpy(), 0), cell.quant_output_max.numpy()))
        assert ranges.cell_clip == 10.0 and ranges.cell_bound >= float(cell.quant_cell_max_abs.numpy())
        np.testing.assert_array_equal(ranges.input_to_forget, np.split(lstms[cells.index(cell)].cell.kernel.numpy(),
                                                                        4, axis=1)[1].T)


def test_gru_with_a_none_time_dimension_is_a_clear_error():
    i = keras.Input((None, F))
    model = keras.Model(i, L.Dense(2)(L.GRU(4, name="my_gru")(i)))
    with pytest.raises(ExportError, match=r"at layer 'my_gru': Layer 'my_gru' \(GRU\) has a time dimension of None"):
        baked_float_model(model)


def test_a_none_time_dimension_reverses_time_with_reverse_v2():
    """Nothing to SPLIT without a fixed number of steps: the plan says REVERSE_V2, the bake builds it, and
    the baked model runs any length like the Keras model."""
    keras.utils.set_random_seed(0)
    i = keras.Input((None, 3))
    model = keras.Model(i, L.Bidirectional(L.LSTM(4, return_sequences=True), name="rnn")(i))
    assert deployment_plan(model).layer("rnn").time_reversal == "REVERSE_V2"
    baked = baked_float_model(model)
    (deployed,) = [layer for layer in baked.layers if isinstance(layer, DeployedRNN)]
    assert deployed.spec.time_reversal == "REVERSE_V2"
    for steps in (5, 9):
        x = np.random.default_rng(steps).normal(size=(4, steps, 3)).astype(np.float32)
        np.testing.assert_allclose(baked.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
