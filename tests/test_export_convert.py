"""convert: what lands in the flatbuffer (real converter, real interpreter).

Weights equal to the QAT weights gate by gate (and on their low-bit grid), biases at
input_scale * weight_scale, QAT ranges on the LSTM output / hidden state / cell state, CellClip,
int8 and int16 I/O, the LSTM state reset per sequence, crash isolation, and post-training
quantization of float LSTMs that stock TFLite calibration gets wrong.
"""

import importlib
import warnings

import numpy as np
import pytest
import tensorflow_model_optimization as tfmot

import lstm_transforms as lt
from lstm_transforms import tflite_utils
from lstm_transforms._keras import keras, tf
from lstm_transforms.export import ExportError, ExportWarning, convert, export_tflite
from lstm_transforms import data as data_mod
from lstm_transforms.export.verify import integer_violations, requantizations
from lstm_transforms.quantizers import power_of_two_bound
from tests.export_helpers import bias_scale_mismatches, lsb_errors, qat_weight, summary

L = keras.layers
T, F, CLASSES = 12, 6, 3


def _data(n=48, shape=(T, F), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n,) + shape).astype(np.float32)
    y = (x[:, -3:].sum(axis=tuple(range(1, x.ndim))) > 0).astype(np.int32) + (x[:, 0].sum(
        axis=tuple(range(1, x.ndim - 1))) > 0).astype(np.int32)
    return x, y


def _qat(model, x, y, epochs=2, scheme=None):
    """quantize_model + calibrate + a short fine-tune."""
    qat = lt.quantize_model(model, scheme=scheme)
    lt.calibrate(qat, x)
    qat.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    qat.fit(x, y, batch_size=16, epochs=epochs, verbose=0)
    return qat


def _model(rnn, shape=(T, F)):
    i = keras.Input(shape)
    return keras.Model(i, L.Dense(CLASSES, activation="softmax")(rnn(i)))


def _assert_gates_equal(gates, kernel, recurrent_kernel):
    for k, gate in enumerate(tflite_utils.KERAS_GATE_ORDER):
        for prefix, full in (("input_to_", kernel), ("recurrent_to_", recurrent_kernel)):
            block = np.split(full, 4, axis=1)[k]
            got = gates[prefix + gate]
            assert got["dtype"] == "int8" and got["scale"].size == 1, prefix + gate
            # Same grid: the int8 codes times the scale are the QAT weights (float32 rounding only).
            np.testing.assert_allclose(got["value"], block, rtol=0, atol=1e-6 * np.abs(block).max(),
                                       err_msg=prefix + gate)


def _assert_same_predictions(p_int8, p_qat, atol):
    """The int8 outputs are within `atol` of QAT's; where QAT is decided by more than 2*atol, same class."""
    assert np.abs(p_int8 - p_qat).max() < atol
    top2 = np.sort(p_qat, -1)[:, -2:]
    decided = top2[:, 1] - top2[:, 0] > 2 * atol
    np.testing.assert_array_equal(p_int8.argmax(-1)[decided], p_qat.argmax(-1)[decided])


def _lstm_op(flatbuffer):
    it = tflite_utils.interpreter(flatbuffer, inspect=True)
    details = {d["index"]: d for d in it.get_tensor_details()}
    op = next(op for op in it._get_ops_details() if op["op_name"] == "UNIDIRECTIONAL_SEQUENCE_LSTM")
    return op, details


@pytest.fixture(scope="module")
def lstm_case():
    keras.utils.set_random_seed(1)
    x, y = _data()
    qat = _qat(_model(lambda i: L.LSTM(8)(i)), x, y)
    return qat, x, export_tflite(qat, x), export_tflite(qat, x, int8_io=True)


def test_lstm_fuses_is_integer_and_keeps_the_qat_weights_per_gate(lstm_case):
    qat, x, fb, _ = lstm_case
    ops = tflite_utils.op_names(fb)
    assert ops.count("UNIDIRECTIONAL_SEQUENCE_LSTM") == 1 and "WHILE" not in ops
    assert integer_violations(fb) == []
    (gates,) = tflite_utils.lstm_gate_weights(fb)
    _assert_gates_equal(gates, qat_weight(qat, "lstm_cell/kernel"), qat_weight(qat, "lstm_cell/recurrent_kernel"))
    for gate in gates.values():  # max-abs scale per gate matrix, as the QAT quantizer
        np.testing.assert_allclose(gate["scale"][0], np.abs(gate["value"]).max() / 127, rtol=1e-6)
    # Every int32 bias (the LSTM's four gate biases, the Dense's) at input_scale * weight_scale.
    assert bias_scale_mismatches(fb) == []
    _assert_same_predictions(tflite_utils.predict(fb, x), qat.predict(x, verbose=0), 0.05)


def test_the_lstm_output_hidden_state_and_cell_state_carry_the_qat_ranges(lstm_case):
    qat, _, fb, _ = lstm_case
    op, details = _lstm_op(fb)
    cell = next(layer for layer in qat.layers if hasattr(layer, "layer") and "lstm" in layer.layer.name).layer.cell
    lo, hi = min(float(cell.quant_output_min.numpy()), 0.0), float(cell.quant_output_max.numpy())
    output = details[int(op["outputs"][0])]["quantization"]
    hidden_state = details[int(op["inputs"][18])]["quantization"]
    assert output == hidden_state  # the kernel writes h with one and reads it back with the other
    scale, zero = output
    assert scale == pytest.approx((hi - lo) / 255, rel=1e-5)
    assert (-128 - zero) * scale == pytest.approx(lo, abs=scale)
    cell_scale = details[int(op["inputs"][19])]["quantization"][0]
    bound = max(float(power_of_two_bound(cell.quant_cell_max_abs)), 1.0)
    assert cell_scale == pytest.approx(bound / 32768)


def test_integer_io_has_no_quantize_ops(lstm_case):
    qat, x, fb_float_io, fb = lstm_case
    it = tflite_utils.interpreter(fb)
    assert it.get_input_details()[0]["dtype"] == np.int8 and it.get_output_details()[0]["dtype"] == np.int8
    assert integer_violations(fb, int8_io=True) == [] and "QUANTIZE" not in tflite_utils.op_names(fb)
    ops = tflite_utils.op_names(fb_float_io)
    assert ops[0] == "QUANTIZE" and ops[-1] == "DEQUANTIZE" and ops.count("QUANTIZE") + ops.count("DEQUANTIZE") == 2
    np.testing.assert_allclose(tflite_utils.predict(fb, x[:8]), tflite_utils.predict(fb_float_io, x[:8]), atol=0.02)


def test_predict_resets_the_lstm_state_before_each_sequence(lstm_case):
    _, x, fb, _ = lstm_case
    together = tflite_utils.predict(fb, x[:2])
    alone = tflite_utils.predict(fb, x[1:2])
    np.testing.assert_array_equal(together[1], alone[0])
    # Without the reset the second sequence would start from the first one's final state.
    it = tflite_utils.interpreter(fb)
    inp, out = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    for row in x[:2]:
        it.set_tensor(inp, row[None])
        it.invoke()
    assert not np.array_equal(it.get_tensor(out)[0], alone[0])


def test_export_converts_once(lstm_case, monkeypatch):
    export = importlib.import_module("lstm_transforms.export")
    qat, x, _, _ = lstm_case
    calls = []
    real = export.convert
    monkeypatch.setattr(export, "convert", lambda *a, **k: calls.append(1) or real(*a, **k))
    export.export_tflite(qat, x[:8])
    assert calls == [1]


def test_input_range_in_front_of_an_lstm_leaves_no_float_round_trip():
    # A fixed QAT input range straight into an LSTM once made the converter insert
    # QUANTIZE -> DEQUANTIZE -> QUANTIZE (a float tensor inside the model).
    keras.utils.set_random_seed(1)
    x = np.random.randn(48, 10, 4).astype(np.float32)
    qat = _qat(_model(lambda i: L.LSTM(8)(i), shape=(10, 4)), x, np.arange(48) % CLASSES)
    fb = export_tflite(qat, x)
    assert tflite_utils.op_names(fb)[:2] == ["QUANTIZE", "UNIDIRECTIONAL_SEQUENCE_LSTM"]
    assert integer_violations(fb) == []


def test_bidirectional_lstm_is_two_fused_ops_with_the_qat_weights():
    keras.utils.set_random_seed(2)
    x, y = _data()
    qat = lt.quantize_model(_model(lambda i: L.Bidirectional(L.LSTM(4))(i)))
    for _ in range(5):  # lt.calibrate does not walk Bidirectional yet
        qat(x, training=True)
    fb = export_tflite(qat, x)
    assert tflite_utils.op_names(fb).count("UNIDIRECTIONAL_SEQUENCE_LSTM") == 2
    assert integer_violations(fb) == []
    # Time reversed by one SPLIT into the 12 steps and CONCATENATIONs of at most 10 inputs (TFLM's limit),
    # each step's tensor named by itself (the converter gives each the names of all 12).
    it = tflite_utils.interpreter(fb, inspect=True)
    names = {d["index"]: d["name"] for d in it.get_tensor_details()}
    ops = it._get_ops_details()
    assert "REVERSE_V2" not in [op["op_name"] for op in ops]
    (split,) = [op for op in ops if op["op_name"] == "SPLIT"]
    assert len(split["outputs"]) == T and all(";" not in names[int(t)] for t in split["outputs"])
    assert max(len(op["inputs"]) for op in ops if op["op_name"] == "CONCATENATION") <= 10
    expected = [(qat_weight(qat, f"{d}_lstm/lstm_cell/kernel"), qat_weight(qat, f"{d}_lstm/lstm_cell/recurrent_kernel"))
                for d in ("forward", "backward")]
    for gates in tflite_utils.lstm_gate_weights(fb):  # each fused op matched to its direction by its weights
        k, rk = min(expected, key=lambda e: np.abs(np.split(e[0], 4, 1)[0] - gates["input_to_input"]["value"]).max())
        _assert_gates_equal(gates, k, rk)


def test_a_converter_crash_is_an_exception_naming_the_layer():
    # A GRU left as a WHILE loop crashes the TF 2.21 converter in full-int8 mode (segfault).
    x, _ = _data(8)
    i = keras.Input((T, F))
    model = keras.Model(i, L.Dense(2)(L.GRU(4, name="crashing_gru")(i)))
    with pytest.raises(ExportError, match=r"failed at layer\(s\) 'crashing_gru' \(GRU\): the TFLite converter "
                                          r"crashed \(SIG[A-Z]+\)"):
        convert(model, x)


def test_stock_tfmot_conv_and_dense_weights_are_exact():
    """Conv per channel and Dense per tensor, as tfmot quantizes them, land unchanged in the flatbuffer."""
    keras.utils.set_random_seed(4)
    x, y = _data(shape=(T, F, 1))
    i = keras.Input((T, F, 1))
    h = L.Conv2D(3, (3, 1), activation="relu", padding="same", name="conv")(i)
    o = L.Dense(CLASSES, activation="softmax", name="dense")(L.Dense(8, activation="relu", name="hidden")(L.Flatten()(h)))
    qat = tfmot.quantization.keras.quantize_model(keras.Model(i, o))
    qat.compile("adam", "sparse_categorical_crossentropy")
    qat.fit(x, y, batch_size=16, epochs=1, verbose=0)  # the weights move after the ranges were last read
    fb = export_tflite(qat, x)
    assert integer_violations(fb) == []
    weights = tflite_utils.weights(fb)
    conv = next(v for k, v in weights.items() if "conv" in k)
    np.testing.assert_allclose(np.transpose(conv[0], (1, 2, 3, 0)), qat_weight(qat, "conv/kernel"), atol=1e-6)
    assert conv[1]["quantization_parameters"]["scales"].size == 3  # per output channel
    for name in ("hidden", "dense"):
        value, detail = next(v for k, v in weights.items() if f"/{name}/" in k and "MatMul" in k)
        assert detail["quantization_parameters"]["scales"].size == 1  # per tensor, like tfmot
        np.testing.assert_allclose(value.T, qat_weight(qat, f"{name}/kernel"), atol=1e-6)
    assert bias_scale_mismatches(fb) == []
    _assert_same_predictions(tflite_utils.predict(fb, x), qat.predict(x, verbose=0), 0.1)


def test_question_architecture_small_layer_by_layer():
    """Conv2D+ReLU -> BatchNorm -> Lambda squeeze -> LSTM(seq) -> Flatten -> Dense, as in the question."""
    keras.utils.set_random_seed(5)
    x, y = _data(shape=(T, F, 1))
    K = keras.backend
    i = keras.Input((T, F, 1))
    h = L.Conv2D(1, (5, 1), activation="relu", padding="same", name="conv")(i)
    h = L.BatchNormalization(name="bn")(h)
    h = L.Lambda(lambda q: K.squeeze(q, -1), name="squeeze_last_dim")(h)
    h = L.LSTM(8, return_sequences=True, name="lstm")(h)
    h = L.Dense(8, activation="relu", name="hidden")(L.Flatten()(h))
    qat = _qat(keras.Model(i, L.Dense(CLASSES, activation="softmax", name="out")(h)), x, y)
    fb = export_tflite(qat, x)
    assert tflite_utils.op_names(fb).count("UNIDIRECTIONAL_SEQUENCE_LSTM") == 1
    assert integer_violations(fb) == [] and bias_scale_mismatches(fb) == []
    ops = tflite_utils.op_names(fb)
    assert "MUL" not in ops and ops.count("DEPTHWISE_CONV_2D") == 1, ops  # the BatchNorm, one rounding as in QAT
    errors = summary(lsb_errors(qat, fb, x, {"conv": ("CONV_2D", 0), "bn": ("DEPTHWISE_CONV_2D", 0), "lstm": (
        "UNIDIRECTIONAL_SEQUENCE_LSTM", 0), "hidden": ("FULLY_CONNECTED", 0)}))
    for name, (mean, p99, worst) in errors.items():  # (mean, p99, max) in steps of that tensor's scale
        # 'hidden' sums 96 LSTM outputs, each within a step of QAT's
        p99_bound, max_bound = (2.0, 3.0) if name == "hidden" else (1.0, 2.0)
        assert p99 <= p99_bound and worst <= max_bound, (name, errors)
    _assert_same_predictions(tflite_utils.predict(fb, x), qat.predict(x, verbose=0), 0.05)


def test_a_standalone_batch_norm_exports_as_one_depthwise_convolution_with_its_factors_exact():
    """TFLite runs a BatchNormalization as MUL then ADD: two int8 roundings where QAT rounds once. Export
    folds it into a 1x1 DEPTHWISE_CONV_2D: per channel one weight, stored as +-127 on its own scale
    (the factor gamma / sqrt(var + eps) exactly), the offset as its bias."""
    keras.utils.set_random_seed(7)
    x, y = _data(shape=(T, F, 2))
    i = keras.Input((T, F, 2))
    h = L.BatchNormalization(name="bn")(L.Conv2D(3, (3, 1), activation="relu", padding="same", name="conv")(i))
    h = L.LSTM(8, name="lstm")(L.Reshape((T, F * 3))(h))
    qat = _qat(keras.Model(i, L.Dense(CLASSES, activation="softmax", name="out")(h)), x, y)
    fb = export_tflite(qat, x)
    ops = tflite_utils.op_names(fb)
    assert "MUL" not in ops and ops.count("DEPTHWISE_CONV_2D") == 1, ops
    it = tflite_utils.interpreter(fb, inspect=True)
    depthwise = next(op for op in it._get_ops_details() if op["op_name"] == "DEPTHWISE_CONV_2D")
    weight = int(depthwise["inputs"][1])
    codes = it.get_tensor(weight).reshape(-1)
    scales = next(t for t in tflite_utils.tensors(fb) if t["index"] == weight)["scales"]
    bn = next(layer for layer in qat.layers if layer.name == "quant_bn").layer
    factor = bn.gamma.numpy() / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
    assert np.all(np.abs(codes) == 127), codes
    np.testing.assert_allclose(codes * scales, factor, rtol=1e-6)
    errors = summary(lsb_errors(qat, fb, x, {"bn": ("DEPTHWISE_CONV_2D", 0)}))
    assert errors["bn"][1] <= 1.0 and errors["bn"][2] <= 2.0, errors


def test_concatenation_with_a_side_input_shares_one_scale():
    """TFLite's int8 CONCATENATION has one scale: the LSTM output takes the union of its QAT range and the
    side input's, hidden state included (a scale on the output alone would desynchronise the kernel)."""
    keras.utils.set_random_seed(6)
    x, y = _data()
    side = 3 * np.random.default_rng(1).normal(size=(len(x), 3)).astype(np.float32)
    a, b = keras.Input((T, F)), keras.Input((3,))
    h = L.Concatenate()([L.LSTM(8)(a), b])
    qat = _qat(keras.Model([a, b], L.Dense(CLASSES, activation="softmax")(h)), [x, side], y)
    fb = export_tflite(qat, [x, side], int8_io=True)
    assert integer_violations(fb, int8_io=True) == [] and requantizations(fb) == []
    op, details = _lstm_op(fb)
    assert details[int(op["outputs"][0])]["quantization"] == details[int(op["inputs"][18])]["quantization"]
    assert details[int(op["outputs"][0])]["quantization"][0] > 5.0 / 255  # widened to the side input's range
    _assert_same_predictions(tflite_utils.predict(fb, [x, side]), qat.predict([x, side], verbose=0), 0.1)


# ------------------------------------------------------------------------------------------------
# Settings a flatbuffer cannot hold as such
# ------------------------------------------------------------------------------------------------


def test_low_bit_weights_are_stored_on_their_grid_and_the_cell_clip_is_written():
    keras.utils.set_random_seed(7)
    x, y = _data()
    model = _model(lambda i: L.LSTM(8, name="lstm")(i))
    qat = _qat(model, x, y, scheme=lt.RNNQuantizeScheme(weight_bits=4, cell_clip=5.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExportWarning)  # exact: nothing to warn about
        fb = export_tflite(qat, x)
    (gates,) = tflite_utils.lstm_gate_weights(fb)
    _assert_gates_equal(gates, qat_weight(qat, "lstm_cell/kernel"), qat_weight(qat, "lstm_cell/recurrent_kernel"))
    for name, gate in gates.items():
        assert len(np.unique(gate["int8"])) <= 2 ** 4, name
    dense = next(v for k, v in tflite_utils.weights(fb).items() if "dense" in k)
    codes = dense[0] / dense[1]["quantization_parameters"]["scales"][0]
    assert len(np.unique(np.round(codes))) <= 2 ** 4
    np.testing.assert_allclose(dense[0].T, qat_weight(qat, "dense/kernel"), atol=1e-6)
    assert bias_scale_mismatches(fb) == []
    from lstm_transforms.export import _flatbuffer

    model_object = _flatbuffer.read(fb)
    (lstm,) = [op for op in model_object.subgraphs[0].operators
               if _flatbuffer.op_name(model_object, op) == "UNIDIRECTIONAL_SEQUENCE_LSTM"]
    assert lstm.builtinOptions.cellClip == 5.0
    _assert_same_predictions(tflite_utils.predict(fb, x), qat.predict(x, verbose=0), 0.05)


def test_int16_activations_unroll_the_lstm():
    keras.utils.set_random_seed(8)
    x, y = _data()
    i = keras.Input((T, F))
    qat = _qat(keras.Model(i, L.Dense(CLASSES, activation="softmax")(L.GRU(6)(L.LSTM(6, return_sequences=True)(i)))),
               x, y)
    with pytest.warns(ExportWarning, match=r"activation_bits=8: QAT simulated 8-bit activations, the device computes "
                                           r"int16"):
        fb = export_tflite(qat, x, activations="int16", int8_io=True)
    ops = tflite_utils.op_names(fb)
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" not in ops and "WHILE" not in ops
    assert integer_violations(fb, int8_io=True) == []
    it = tflite_utils.interpreter(fb)
    assert it.get_input_details()[0]["dtype"] == np.int16
    activations = {t["dtype"] for t in tflite_utils.tensors(fb) if t["name"].endswith(("Tanh", "Sigmoid"))}
    assert activations == {"int16"}
    _assert_same_predictions(tflite_utils.predict(fb, x), qat.predict(x, verbose=0), 0.03)


# ------------------------------------------------------------------------------------------------
# Post-training quantization of float models (convert): what stock TFLite calibration gets wrong
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("change", ["small_inputs", "cell_gate_bias"])
def test_float_lstm_ptq_is_close_where_stock_calibration_is_not(change):
    """Stock full-int8 of these float LSTMs is off by ~0.2 (on outputs within +-1): the calibrator never
    resets the LSTM state between samples, and a cell-state scale below 2^-15 breaks the kernel's tanh."""
    keras.utils.set_random_seed(1)
    x = np.random.default_rng(0).normal(size=(32, 8, 8)).astype(np.float32)
    i = keras.Input((8, 8))
    model = keras.Model(i, L.LSTM(6, return_sequences=True)(i))
    if change == "small_inputs":
        x = 0.1 * x
    else:
        kernel, recurrent, bias = model.layers[1].get_weights()
        bias[12:18] += 0.6
        model.layers[1].set_weights([kernel, recurrent, bias])
    fb = convert(model, x)
    assert np.abs(tflite_utils.predict(fb, x) - model.predict(x, verbose=0)).max() < 0.02


def test_representative_dataset_forms():
    model = _model(lambda i: L.LSTM(2)(i))
    x, _ = _data(5)
    dataset = tf.data.Dataset.from_tensor_slices((x, np.zeros(len(x)))).batch(2)
    for form in (x, [x], lambda: ([row[None]] for row in x), lambda: (row for row in x), dataset):
        (arrays,) = [data_mod.arrays(form, model, None)]
        assert len(arrays) == 1 and arrays[0].shape == (5, T, F)
        np.testing.assert_array_equal(arrays[0], x)
    assert data_mod.arrays(x, model, 2)[0].shape == (2, T, F)
    with pytest.raises(ValueError, match="expects"):
        data_mod.arrays(x[:, :, :2], model, None)
    with pytest.raises(ValueError, match="inputs"):
        data_mod.arrays([x, x], model, None)
    with pytest.raises(ValueError, match="empty"):
        data_mod.arrays(x[:0], model, None)


def test_export_rejects_bad_input():
    with pytest.raises(ValueError, match="functional and Sequential"):
        export_tflite(None, np.zeros((1, 2)))
    model = _model(lambda i: L.LSTM(2)(i))
    with pytest.raises(ValueError, match="representative_dataset"):
        export_tflite(model, None)


def test_a_gru_that_is_zero_on_all_the_data_exports_with_a_warning_not_a_crash():
    """Inputs ~1e-7 leave every GRU sum ~0: QAT learns ranges far narrower than TANH's 1/128 grid, and
    TFLite's int8 ADD / SUB abort the process below an output scale of 2 * input scale / 2**20.
    Export widens those sums (and says so) instead of handing the converter a crashing model."""
    x = (_data(n=16)[0] * 1e-7).astype(np.float32)
    model = keras.Sequential([keras.Input((T, F)), L.GRU(4, reset_after=False), L.Dense(2)])
    qat = lt.quantize_model(model)
    lt.calibrate(qat, x)
    with pytest.warns(ExportWarning, match=r"sum\(s\) in layer\(s\) 'gru.*' have a range too narrow"):
        flatbuffer = export_tflite(qat, x, int8_io=True)
    assert integer_violations(flatbuffer, int8_io=True) == []
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    scale = interpreter.get_output_details()[0]["quantization"][0]
    got = tflite_utils.predict(flatbuffer, x)
    want = np.asarray(qat(x, training=False))
    assert np.max(np.abs(got - want)) <= 2 * scale


@pytest.mark.parametrize("bidirectional", [False, True], ids=["lstm", "bidirectional"])
def test_a_time_dimension_of_none_exports_and_runs_any_length(bidirectional):
    """Input((None, F)): calibration and the interpreter take each sample's length; a Bidirectional
    reverses time with REVERSE_V2 (SPLIT needs the length), as its plan says. `compare` says it needs a
    fixed shape."""
    x, y = _data(n=24)
    recurrent = L.LSTM(8)
    model = keras.Sequential([keras.Input((None, F)), L.Bidirectional(recurrent) if bidirectional else recurrent,
                              L.Dense(CLASSES)])
    qat = _qat(model, x, y, epochs=1)
    flatbuffer = export_tflite(qat, x, int8_io=True)
    ops = tflite_utils.op_names(flatbuffer)
    assert ("REVERSE_V2" in ops) == bidirectional, ops
    assert integer_violations(flatbuffer, int8_io=True) == []
    scale = tf.lite.Interpreter(model_content=flatbuffer).get_output_details()[0]["quantization"][0]
    for length in (T, 2 * T):
        xs = _data(n=6, shape=(length, F), seed=length)[0]
        got = tflite_utils.predict(flatbuffer, xs)
        want = np.asarray(qat(xs, training=False))
        # Calibrated on length T: at 2T the Bidirectional's outputs were up to 6 LSB from QAT on one machine.
        assert np.max(np.abs(got - want)) <= 8 * scale, length
    with pytest.raises(ValueError, match=r"compare\(\) needs fixed input shapes: .* has shape \(None, None, 6\)"):
        lt.compare(qat, flatbuffer, xs)
