"""export_tflite(mode="dynamic" / "weight_only"): int8 weights on the QAT grid, float activations
(real converter, real interpreter).

The int8 codes times their scale are the QAT (fake-quantized) weights, gate by gate for the fused
LSTM, per tensor for Dense, on low-bit grids too; the fused LSTM op is kept; GRU exports unrolled
with int8 FULLY_CONNECTED weights; the outputs stay near the QAT model's. mode="weight_only" reads
the same int8 weights through DEQUANTIZE ops and computes exactly what the float model with the QAT
weights computes.
"""

import numpy as np
import pytest
from tensorflow.lite.python import schema_py_generated as schema

import lstm_transforms as lt
from lstm_transforms import flatbuffer_size, tflite_utils
from lstm_transforms._keras import keras, tf
from lstm_transforms.export import ExportError, _flatbuffer, baked_float_model, convert, deployment_plan, export_tflite
from lstm_transforms.export._hybrid import HYBRID_WEIGHTS
from lstm_transforms.export.convert import _input_specs, _save
from lstm_transforms.export.verify import float_weights, verify_weights_only
from tests.export_helpers import qat_weight

L = keras.layers
T, F, CLASSES = 12, 6, 3


def _data(n=48, shape=(T, F), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n,) + shape).astype(np.float32)
    y = (x[:, -3:].sum(axis=(1, 2)) > 0).astype(np.int32) + (x[:, 0].sum(axis=-1) > 0).astype(np.int32)
    return x, y


def _qat(model, x, y, scheme=None):
    """quantize_model + calibrate + a short fine-tune (weights move off their initial values)."""
    qat = lt.quantize_model(model, scheme=scheme)
    lt.calibrate(qat, x)
    qat.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    qat.fit(x, y, batch_size=16, epochs=2, verbose=0)
    return qat


def _lstm_model(units=16):
    i = keras.Input((T, F))
    h = L.Dense(16, activation="relu", name="hidden")(L.LSTM(units, name="lstm")(i))
    return keras.Model(i, L.Dense(CLASSES, activation="softmax", name="dense")(h))


def _assert_on_grid(codes, scale, qat_values, name):
    """int8 codes with one scale whose product is the QAT weight (float32 rounding only)."""
    assert codes.dtype == np.int8 and np.asarray(scale).size == 1, name
    scale = float(np.asarray(scale).ravel()[0])
    np.testing.assert_array_equal(codes, np.round(qat_values / scale).astype(np.int8), err_msg=name)
    np.testing.assert_allclose(codes * scale, qat_values, rtol=0, atol=1e-6 * np.abs(qat_values).max(), err_msg=name)


def _dense_weight(flatbuffer, layer):
    """(int8 codes in Keras layout (in, out), scale) of the FULLY_CONNECTED weight of Dense `layer`."""
    it = tflite_utils.interpreter(flatbuffer, inspect=True)
    detail = next(d for d in it.get_tensor_details()
                  if f"/{layer}/" in d["name"] and "MatMul" in d["name"] and len(d["shape"]) == 2
                  and np.dtype(d["dtype"]) == np.int8)
    return it.get_tensor(detail["index"]).T, detail["quantization_parameters"]["scales"]


@pytest.fixture(scope="module")
def lstm_case():
    keras.utils.set_random_seed(3)
    x, y = _data()
    qat = _qat(_lstm_model(), x, y)
    return qat, x, export_tflite(qat, mode="dynamic")


def test_lstm_gate_weights_are_the_qat_codes(lstm_case):
    qat, _, fb = lstm_case
    (gates,) = tflite_utils.lstm_gate_weights(fb)
    kernel, recurrent = qat_weight(qat, "lstm_cell/kernel"), qat_weight(qat, "lstm_cell/recurrent_kernel")
    for k, gate in enumerate(tflite_utils.KERAS_GATE_ORDER):
        for prefix, full in (("input_to_", kernel), ("recurrent_to_", recurrent)):
            got = gates[prefix + gate]
            # Each gate matrix its own tensor and scale, also the 16x6 input matrices (under the
            # converter's 1024-element threshold for dynamic-range quantization).
            _assert_on_grid(got["int8"], got["scale"], np.split(full, 4, axis=1)[k], prefix + gate)


def test_dense_weights_are_the_qat_codes_per_tensor(lstm_case):
    qat, _, fb = lstm_case
    for name in ("hidden", "dense"):  # 16x16 and 16x3: both below the converter's threshold
        codes, scale = _dense_weight(fb, name)
        _assert_on_grid(codes, scale, qat_weight(qat, f"{name}/kernel"), name)


def test_activations_are_float_and_the_lstm_stays_fused(lstm_case):
    _, _, fb = lstm_case
    ops = tflite_utils.op_names(fb)
    assert ops.count("UNIDIRECTIONAL_SEQUENCE_LSTM") == 1
    assert not {"WHILE", "QUANTIZE", "DEQUANTIZE"} & set(ops)
    it = tflite_utils.interpreter(fb, inspect=True)
    assert [np.dtype(d["dtype"]) for d in it.get_input_details() + it.get_output_details()] == [np.float32] * 2
    assert float_weights(fb) == []


def test_hybrid_ops_quantize_their_inputs_asymmetrically(lstm_case):
    # The hybrid kernels' faster path on x86 (and the converter's own choice): see _hybrid's docstring.
    model = _flatbuffer.read(lstm_case[2])
    ops = [(_flatbuffer.op_name(model, op), op.builtinOptions) for op in model.subgraphs[0].operators]
    flags = {name: [o.asymmetricQuantizeInputs for n, o in ops if n == name]
             for name in ("UNIDIRECTIONAL_SEQUENCE_LSTM", "FULLY_CONNECTED")}
    assert flags == {"UNIDIRECTIONAL_SEQUENCE_LSTM": [True], "FULLY_CONNECTED": [True, True]}


def _weights_only(qat, x):
    """The QAT weights with float activations, in Keras: what mode="dynamic" computes, up to its kernels."""
    return baked_float_model(qat, qat_ranges=False).predict(x, verbose=0)


def test_outputs_are_the_qat_weights_with_float_activations(lstm_case):
    qat, x, fb = lstm_case
    got = tflite_utils.predict(fb, x)
    # Only the hybrid kernels' on-the-fly int8 quantization of each matmul input (asymmetric, per
    # row) separates the two; measured 0.0007-0.001 on softmax outputs over two seeds.
    assert np.abs(got - _weights_only(qat, x)).max() < 0.005
    # QAT also rounds every activation to its 8-bit range, which mode="dynamic" does not: its distance
    # to QAT is that rounding's (0.08-0.15 on this briefly trained toy model; mode="full": 0.0025).
    qat_out = qat.predict(x, verbose=0)
    assert np.abs(got - qat_out).max() <= np.abs(_weights_only(qat, x) - qat_out).max() + 0.005


def test_low_bit_weights_land_on_their_grid():
    keras.utils.set_random_seed(7)
    x, y = _data()
    qat = _qat(_lstm_model(8), x, y, scheme=lt.RNNQuantizeScheme(weight_bits=4))
    fb = export_tflite(qat, mode="dynamic")
    (gates,) = tflite_utils.lstm_gate_weights(fb)
    kernel = qat_weight(qat, "lstm_cell/kernel")
    for k, gate in enumerate(tflite_utils.KERAS_GATE_ORDER):
        got = gates["input_to_" + gate]
        block = np.split(kernel, 4, axis=1)[k]
        np.testing.assert_allclose(got["value"], block, rtol=0, atol=1e-6 * np.abs(block).max(), err_msg=gate)
        assert len(np.unique(got["int8"])) <= 2 ** 4, gate


def test_bidirectional_lstm_keeps_two_fused_ops_with_the_qat_codes():
    keras.utils.set_random_seed(2)
    x, y = _data()
    i = keras.Input((T, F))
    qat = _qat(keras.Model(i, L.Dense(CLASSES, activation="softmax")(L.Bidirectional(L.LSTM(8))(i))), x, y)
    fb = export_tflite(qat, mode="dynamic")
    assert tflite_utils.op_names(fb).count("UNIDIRECTIONAL_SEQUENCE_LSTM") == 2 and float_weights(fb) == []
    expected = {d: np.split(qat_weight(qat, f"{d}_lstm/lstm_cell/recurrent_kernel"), 4, axis=1)
                for d in ("forward", "backward")}
    for gates in tflite_utils.lstm_gate_weights(fb):  # each fused op matched to its direction by its weights
        blocks = min(expected.values(), key=lambda b: np.abs(b[0] - gates["recurrent_to_input"]["value"]).max())
        for k, gate in enumerate(tflite_utils.KERAS_GATE_ORDER):
            got = gates["recurrent_to_" + gate]
            _assert_on_grid(got["int8"], got["scale"], blocks[k], gate)
    assert np.abs(tflite_utils.predict(fb, x) - _weights_only(qat, x)).max() < 0.005


@pytest.fixture(scope="module")
def gru_case():
    keras.utils.set_random_seed(5)
    x, y = _data()
    i = keras.Input((T, F))
    return _qat(keras.Model(i, L.Dense(CLASSES, activation="softmax")(L.GRU(16, name="gru")(i))), x, y), x


def test_gru_exports_unrolled_with_int8_weights_and_runs(gru_case):
    qat, x = gru_case
    fb = export_tflite(qat, mode="dynamic")
    ops = tflite_utils.op_names(fb)
    assert "WHILE" not in ops and ops.count("FULLY_CONNECTED") > T
    assert float_weights(fb) == []
    stored = [v for v, _ in tflite_utils.weights(fb).values()]
    for name in ("gru_cell/kernel", "gru_cell/recurrent_kernel"):  # one int8 tensor per gate, shared by all steps
        for block in np.split(qat_weight(qat, name), 3, axis=1):
            assert any(v.shape == block.T.shape and np.allclose(v.T, block, rtol=0, atol=1e-6) for v in stored), name
    assert np.abs(tflite_utils.predict(fb, x) - _weights_only(qat, x)).max() < 0.01  # 12 steps of hybrid matmuls


def test_question_model_keeps_the_fused_lstm():
    from tests.test_original_question import _squeeze_variants, question_model

    keras.utils.set_random_seed(0)
    qat = lt.quantize_model(question_model(_squeeze_variants()["Reshape"]))
    x = np.random.default_rng(0).normal(size=(16, 32, 32, 1)).astype(np.float32)
    lt.calibrate(qat, x)
    fb = export_tflite(qat, mode="dynamic")
    assert tflite_utils.op_names(fb).count("UNIDIRECTIONAL_SEQUENCE_LSTM") == 1
    assert float_weights(fb) == []
    assert np.abs(tflite_utils.predict(fb, x) - _weights_only(qat, x)).max() < 0.01


def test_stock_dynamic_range_leaves_small_lstm_weights_float():
    """Why the weights are quantized by lstm_transforms, not by the converter's dynamic-range mode."""
    import tempfile

    model = _lstm_model()
    with tempfile.TemporaryDirectory() as d:
        _save(model, _input_specs(model), d)
        converter = tf.lite.TFLiteConverter.from_saved_model(d)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        fb = converter.convert()
    (gates,) = tflite_utils.lstm_gate_weights(fb)
    assert {g["dtype"] for g in gates.values()} == {"float32"}  # all under 1024 elements
    assert float_weights(fb)


def _int8_constants(flatbuffer):
    """Sorted (codes, scale) of every int8 constant of `flatbuffer`."""
    model = _flatbuffer.read(flatbuffer)
    found = []
    for tensor in model.subgraphs[0].tensors:
        codes = _flatbuffer._constant(model, tensor, np.int8)
        if codes is not None:
            found.append((codes.tobytes(), tuple(tensor.quantization.scale)))
    return sorted(found)


@pytest.fixture(scope="module")
def weight_only_case(lstm_case):
    qat, x, dynamic = lstm_case
    return qat, x, dynamic, export_tflite(qat, mode="weight_only")


def test_weight_only_reads_the_dynamic_int8_weights_through_dequantize(weight_only_case):
    _, _, dynamic, fb = weight_only_case
    model = _flatbuffer.read(fb)
    graph = model.subgraphs[0]
    ops = [(_flatbuffer.op_name(model, op), op) for op in graph.operators]
    dequantized = {int(op.outputs[0]): int(op.inputs[0]) for name, op in ops if name == "DEQUANTIZE"}
    weights = [int(op.inputs[p]) for name, op in ops for p in HYBRID_WEIGHTS.get(name, ()) if op.inputs[p] >= 0]
    assert len(weights) == 8 + 2 and set(weights) == set(dequantized)  # LSTM gate matrices, two Dense kernels
    assert {graph.tensors[i].type for i in dequantized.values()} == {schema.TensorType.INT8}
    assert _int8_constants(fb) == _int8_constants(dynamic)  # the QAT codes and scales of mode="dynamic"
    names = [name for name, _ in ops]
    assert names.count("UNIDIRECTIONAL_SEQUENCE_LSTM") == 1 and not {"WHILE", "QUANTIZE"} & set(names)
    assert not any(getattr(op.builtinOptions, "asymmetricQuantizeInputs", False) for _, op in ops)
    assert float_weights(fb) == []
    extra = len(flatbuffer_size.strip_strings(fb)) - len(flatbuffer_size.strip_strings(dynamic))
    print(f"weight_only - dynamic, stripped: {extra} bytes for {len(dequantized)} DEQUANTIZE ops")
    assert 0 < extra <= 64 * len(dequantized)  # an operator and a float tensor (shape shared) per weight


def test_weight_only_computes_what_the_float_model_with_the_qat_weights_computes(weight_only_case):
    qat, x, _, fb = weight_only_case
    float_fb = convert(baked_float_model(qat, qat_ranges=False))
    np.testing.assert_array_equal(tflite_utils.predict(fb, x), tflite_utils.predict(float_fb, x))


def test_weight_only_gru_runs_its_unrolled_steps_on_float_kernels(gru_case):
    qat, x = gru_case
    fb = export_tflite(qat, mode="weight_only")
    assert tflite_utils.op_names(fb).count("DEQUANTIZE") == 3 + 3 + 1  # per gate block: input, recurrent; Dense
    float_fb = convert(baked_float_model(qat, qat_ranges=False))
    np.testing.assert_array_equal(tflite_utils.predict(fb, x), tflite_utils.predict(float_fb, x))


def test_verify_rejects_float_weights():
    model = _lstm_model()
    fb = convert(baked_float_model(model))  # a plain float conversion
    with pytest.raises(ExportError, match="float weight tensor"):
        verify_weights_only(fb, deployment_plan(model))


def test_mode_is_validated():
    model = _lstm_model()
    with pytest.raises(ValueError, match=r"mode must be one of \('full', 'dynamic', 'weight_only'\), got 'hybrid'"):
        export_tflite(model, mode="hybrid")
    for mode in ("dynamic", "weight_only"):
        with pytest.raises(ValueError, match=f'mode="{mode}" keeps float activations.*neither int8_io=True'):
            export_tflite(model, mode=mode, int8_io=True)
    with pytest.raises(ValueError, match="needs a representative_dataset"):
        export_tflite(model)  # mode="full" still calibrates
