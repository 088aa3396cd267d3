"""lstm_transforms.plan: per layer, what is quantized and how it deploys; export refuses before converting.

No conversion runs here except where a test proves that the converter is *not* reached.
"""

import importlib
import json
import warnings

import numpy as np
import pytest

import lstm_transforms as lt
from lstm_transforms._keras import keras
from lstm_transforms.export import ExportError, ExportWarning, plan
from lstm_transforms.export.plan import BLOCKED, FUSED, REVERSE_V2, SPLIT_CONCATENATION, UNROLLED, deployment_plan

L = keras.layers
T, F = 6, 3


def _model(make, shape=(T, F)):
    i = keras.Input(shape)
    out = make(i)
    return keras.Model(i, L.Dense(2)(out if len(out.shape) == 2 else L.Flatten()(out)))


def _out_and_c(outputs):
    return L.Concatenate()([outputs[0], outputs[2]])


def _cells(model_plan, name):
    return [(c.direction, c.deploy) for c in model_plan.layer(name).cells]


@pytest.mark.parametrize("make, cells", [
    (lambda i: L.LSTM(4, name="rnn")(i), [("", FUSED)]),
    (lambda i: L.LSTM(4, recurrent_dropout=0.1, dropout=0.1, name="rnn")(i), [("", FUSED)]),
    (lambda i: L.LSTM(4, use_bias=False, name="rnn")(i), [("", FUSED)]),
    (lambda i: L.RNN(L.LSTMCell(4), name="rnn")(i), [("", FUSED)]),
    (lambda i: L.LSTM(4, unroll=True, name="rnn")(i), [("", FUSED)]),
    (lambda i: L.RNN(L.StackedRNNCells([L.LSTMCell(4), L.LSTMCell(4)]), name="rnn")(i), [("", FUSED)] * 2),
    (lambda i: L.LSTM(4, go_backwards=True, return_sequences=True, name="rnn")(i), [("", FUSED)]),
    (lambda i: L.Add()(L.LSTM(4, return_state=True, name="rnn")(i)[:2]), [("", FUSED)]),
    (lambda i: L.Bidirectional(L.LSTM(4), merge_mode="mul", name="rnn")(i), [("forward", FUSED), ("backward", FUSED)]),
    (lambda i: L.LSTM(4, activation="relu", name="rnn")(i), [("", UNROLLED)]),
    (lambda i: L.LSTM(4, recurrent_activation="hard_sigmoid", name="rnn")(i), [("", UNROLLED)]),
    (lambda i: _out_and_c(L.LSTM(4, return_state=True, name="rnn")(i)), [("", UNROLLED)]),
    (lambda i: L.GRU(4, reset_after=False, name="rnn")(i), [("", UNROLLED)]),
    (lambda i: L.SimpleRNN(4, activation="relu", name="rnn")(i), [("", UNROLLED)]),
    (lambda i: L.RNN(L.StackedRNNCells([L.LSTMCell(4), L.GRUCell(4)]), name="rnn")(i), [("", FUSED), ("", UNROLLED)]),
], ids=["lstm", "recurrent_dropout", "use_bias_false", "rnn_lstmcell", "unroll", "stacked", "go_backwards",
        "return_state_h", "bidirectional", "relu", "hard_sigmoid", "return_state_c", "gru_reset_before", "simple_rnn_relu",
        "mixed_stack"])
def test_each_cell_deploys_as_planned(make, cells):
    model_plan = deployment_plan(_model(make))  # QAT models: tests/test_export_table.py
    assert _cells(model_plan, "rnn") == cells and model_plan.deployable


def test_a_float_model_is_planned_as_its_quantized_model():
    i = keras.Input((T, F))
    h = L.LSTM(4, return_sequences=True, name="fused")(i)
    h = L.RNN(L.StackedRNNCells([L.LSTMCell(4), L.GRUCell(4)]), return_sequences=True, name="mixed")(h)
    model = keras.Model(i, L.Dense(2)(L.LSTM(4, activation="relu", name="relu")(h)))
    float_plan, qat_plan = plan(model), plan(lt.quantize_model(model))
    for name in ("fused", "mixed", "relu"):
        assert _cells(float_plan, name) == _cells(qat_plan, name) == _cells(deployment_plan(model), name)
    assert _cells(float_plan, "mixed") == [("", FUSED), ("", UNROLLED)]


def test_why_a_cell_is_unrolled_names_the_setting():
    relu = plan(_model(lambda i: L.LSTM(4, activation="relu", name="rnn")(i))).layer("rnn").cells[0]
    assert "activation='relu'" in relu.reason and "tanh" in relu.reason
    state = plan(_model(lambda i: _out_and_c(L.LSTM(4, return_state=True, name="rnn")(i))))
    assert "cell state c is used" in state.layer("rnn").cells[0].reason
    notes = plan(_model(lambda i: L.LSTM(4, use_bias=False, recurrent_dropout=0.2, unroll=True, name="rnn")(i)))
    assert notes.layer("rnn").cells[0].notes == (
        "use_bias=False: zero bias", "dropout / recurrent_dropout: off at inference",
        "unroll=True: a training-time loop choice")


@pytest.mark.parametrize("make, message", [
    (lambda i: L.GRU(4, name="rnn")(i), r"Layer 'rnn' \(GRU\) has a time dimension of None\..*keras.Input\(shape=\(T, "
                                         r"features\)\)"),
    (lambda i: L.LSTM(4, activation="relu", name="rnn")(i),
     r"Layer 'rnn' \(LSTM\) has a time dimension of None\. It is exported unrolled \(activation='relu': TFLite's "
     r"integer LSTM kernel computes tanh only\).*keras.Input\(shape=\(T, features\)\), or fuse it instead "
     r"\(activation='tanh'\)"),
    (lambda i: L.Bidirectional(L.SimpleRNN(4), name="rnn")(i),
     r"Layer 'rnn' \(Bidirectional\(SimpleRNN\)\), forward cell 0 \(SimpleRNNCell\) has a time dimension of None"),
], ids=["gru", "lstm_relu", "bidirectional_simple_rnn"])
def test_unrolled_cells_need_a_fixed_time_dimension(make, message):
    model_plan = plan(_model(make, shape=(None, F)))
    assert not model_plan.deployable
    ((name, problem),) = model_plan.problems
    assert name == "rnn" and model_plan.layer("rnn").deploy == BLOCKED
    import re

    assert re.search(message, problem), problem


@pytest.mark.parametrize("make, steps, reversal", [
    (lambda i: L.Bidirectional(L.LSTM(4), name="rnn")(i), T, SPLIT_CONCATENATION),
    (lambda i: L.Bidirectional(L.LSTM(4, go_backwards=True), name="rnn")(i), T, SPLIT_CONCATENATION),
    (lambda i: L.LSTM(4, go_backwards=True, name="rnn")(i), T, SPLIT_CONCATENATION),
    (lambda i: L.Bidirectional(L.GRU(4), name="rnn")(i), T, SPLIT_CONCATENATION),
    (lambda i: L.Bidirectional(L.LSTM(4), name="rnn")(i), None, REVERSE_V2),
    (lambda i: L.LSTM(4, go_backwards=True, name="rnn")(i), None, REVERSE_V2),
    (lambda i: L.LSTM(4, name="rnn")(i), T, ""),
    (lambda i: L.Concatenate()([L.Bidirectional(L.LSTM(4), name="rnn")(i), L.LSTM(4)(i)]), T, REVERSE_V2),
    (lambda i: L.Concatenate()([L.Bidirectional(L.LSTM(4), name="rnn")(i), L.GRU(4)(i)]), T, SPLIT_CONCATENATION),
], ids=["bidirectional", "bidirectional_go_backwards", "go_backwards", "bidirectional_gru", "bidirectional_none_steps",
        "go_backwards_none_steps", "forward_only", "input_shared_with_a_fused_lstm", "input_shared_with_a_gru"])
def test_time_reversal_is_split_and_concatenation_unless_the_time_dimension_is_none(make, steps, reversal):
    """What inspect prints is what the bake builds (the bake reads `time_reversal` off the plan)."""
    layer = plan(_model(make, shape=(steps, F))).layer("rnn")
    assert layer.time_reversal == reversal and layer.to_dict()["time_reversal"] == reversal
    assert (f"time reversal by {reversal}" in layer.detail) == bool(reversal)
    if reversal == REVERSE_V2 and steps is not None:  # the LSTM beside it would be left in float next to a SPLIT
        assert "also feeds the fused LSTM of" in layer.detail
    assert ("REVERSE_V2" in str(layer.to_dict())) == (reversal == REVERSE_V2)


def test_a_none_time_dimension_lstm_is_fine_when_fused():
    assert plan(_model(lambda i: L.LSTM(4)(i), shape=(None, F))).deployable


def test_other_blockers_name_the_setting_and_the_fix():
    i = keras.Input((T, F))
    h0 = L.Dense(4)(L.Flatten()(i))
    with_state = keras.Model(i, L.Dense(2)(L.LSTM(4, name="rnn")(i, initial_state=[h0, h0])))
    assert "initial_state" in deployment_plan(with_state).layer("rnn").problem
    stateful = keras.Sequential([keras.Input((T, F), batch_size=1), L.GRU(4, stateful=True, name="rnn")])
    assert "stateful=True" in deployment_plan(stateful).layer("rnn").problem
    assert "stateful=True: the fused op keeps h and c" in deployment_plan(
        keras.Sequential([keras.Input((T, F), batch_size=1), L.LSTM(4, stateful=True, name="rnn")])
    ).layer("rnn").cells[0].notes[0]
    time_major = keras.Model(i, L.LSTM(4, time_major=True, name="rnn")(i))
    assert "time_major=True" in deployment_plan(time_major).layer("rnn").problem


def test_export_raises_before_the_converter_runs(monkeypatch):
    export = importlib.import_module("lstm_transforms.export")

    def no_conversion(*args, **kwargs):
        raise AssertionError("the converter was reached")

    monkeypatch.setattr(export, "convert", no_conversion)
    qat = lt.quantize_model(_model(lambda i: L.LSTM(4, recurrent_activation="hard_sigmoid", name="rnn")(i),
                                   shape=(None, F)))
    x = np.zeros((2, T, F), np.float32)
    with pytest.raises(ExportError, match=r"Cannot export '.*' at layer 'rnn': Layer 'rnn' \(LSTM\) has a time "
                                          r"dimension of None\. It is exported unrolled \(recurrent_activation="
                                          r"'hard_sigmoid'.*\(recurrent_activation='sigmoid'\)"):
        lt.export_tflite(qat, x)
    with pytest.raises(ExportError, match=r"\(activations='int16': the converter has no 16x8 .*, or fuse it instead "
                                          r"\(activations='int8'\)"):
        lt.export_tflite(lt.quantize_model(_model(lambda i: L.LSTM(4)(i), shape=(None, F))), x, activations="int16")


def test_int16_activations_unroll_every_lstm():
    model_plan = plan(_model(lambda i: L.LSTM(4, name="rnn")(i)), activations="int16")
    (cell,) = model_plan.layer("rnn").cells
    assert cell.deploy == UNROLLED and "no 16x8 UNIDIRECTIONAL_SEQUENCE_LSTM" in cell.reason
    with pytest.raises(ValueError, match=r"activations must be one of \('int8', 'int16'\), got 'int4'"):
        plan(_model(lambda i: L.LSTM(4)(i)), activations="int4")


def test_what_is_quantized_and_the_rows_of_a_float_model():
    K = keras.backend
    i = keras.Input((T, F, 1))
    h = L.Conv2D(1, (3, 1), activation="relu", padding="same", name="conv")(i)
    h = L.Lambda(lambda q: K.squeeze(q, -1), name="squeeze_last_dim")(L.BatchNormalization(name="bn")(h))
    h = L.Dropout(0.1, name="drop")(L.LSTM(4, return_sequences=True, name="rnn")(h))
    model_plan = plan(keras.Model(i, L.Dense(2, name="head")(L.Flatten(name="flat")(h))))
    rnn = model_plan.layer("rnn")
    assert rnn.status == "quantized" and rnn.deploy == FUSED and rnn.detail == "1 UNIDIRECTIONAL_SEQUENCE_LSTM op(s)"
    assert any("kernel: int8 per-gate (4 blocks)" in q for q in rnn.quantized)
    assert any("cell state int16 with a power-of-two scale, clipped to +-10" in q for q in rnn.quantized)
    assert "kernel: int8 per-channel" in " ".join(model_plan.layer("conv").quantized)
    assert model_plan.layer("squeeze_last_dim").class_name == "Reshape"  # the Lambda squeeze, rewritten
    assert model_plan.layer("drop").deploy == "no op"
    assert model_plan.layer("head").deploy == "integer"
    text = str(model_plan)
    assert "rnn" in text and "deploys: fused" in text and "deployable" in text.splitlines()[0]
    as_json = json.loads(model_plan.to_json())
    assert as_json["deployable"] is True
    assert [c["deploy"] for c in next(r for r in as_json["layers"] if r["name"] == "rnn")["cells"]] == [FUSED]


def test_settings_the_flatbuffer_cannot_hold_are_named():
    scheme = lt.RNNQuantizeScheme(activation_bits=6, gate_bits=12, state_bits=12, cell_clip=5.0)
    qat = lt.quantize_model(_model(lambda i: L.LSTM(4, name="rnn")(i)), scheme=scheme)
    differs = plan(qat).layer("rnn").device_differs
    assert differs == ("activation_bits=6: QAT simulated 6-bit activations, the device computes int8",
                       "gate_bits=12: the integer LSTM's gates are int16",
                       "state_bits=12: the integer LSTM's cell state is int16")
    assert any("clipped to +-5" in q for q in plan(qat).layer("rnn").quantized)  # written as CellClip: no warning
    export = importlib.import_module("lstm_transforms.export")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export._warn_differences(plan(qat))
    messages = [str(w.message) for w in caught if issubclass(w.category, ExportWarning)]
    assert any("gate_bits=12" in m and "'rnn'" in m for m in messages)
    assert any("activation_bits=6" in m and "'rnn'" in m for m in messages)
