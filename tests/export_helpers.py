"""Shared by the export tests: QAT training on tiny data, and per-tensor errors in LSBs of the flatbuffer.

`lsb_errors` compares, per named QAT layer, the layer's output in the QAT Keras model with a tensor
of the flatbuffer (found by op name and occurrence, read through `experimental_preserve_all_tensors`),
in units of that tensor's int8 scale. The interpreter state is reset before every sequence.
"""

from __future__ import annotations

import numpy as np

import lstm_transforms as lt
from lstm_transforms._keras import keras, tf
from lstm_transforms.export import _graph

L = keras.layers


def qat_trained(model, x, y, *, epochs=2, calibrate=True):
    """quantize_model + calibrate (ranges from the data) + a short fine-tune."""
    qat = lt.quantize_model(model)
    if calibrate:
        lt.calibrate(qat, x)
    else:  # lt.calibrate does not walk Bidirectional yet: training-mode passes set the ranges instead
        for _ in range(20):
            qat(x, training=True)
    qat.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qat.fit(x, y, batch_size=16, epochs=epochs, verbose=0)
    return qat


def qat_outputs(qat_model, names, x):
    """{layer name: output of that (inner) layer in the QAT model} on `x`."""
    layers = {}
    for layer in qat_model.layers:
        layers[_graph.inner(layer).name] = layer
    tensors = [tf.nest.flatten(_graph.nodes(qat_model, layers[n])[0].outputs)[0] for n in names]
    values = keras.Model(qat_model.inputs, tensors).predict(x, verbose=0)
    return dict(zip(names, values if len(names) > 1 else [values]))


def _interpreter(flatbuffer):
    it = tf.lite.Interpreter(
        model_content=bytes(flatbuffer), experimental_preserve_all_tensors=True,
        experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    return it


def op_output(flatbuffer, op_name, occurrence=0, position=0):
    """Index of output `position` of the `occurrence`-th op named `op_name` (execution order)."""
    ops = [op for op in _interpreter(flatbuffer)._get_ops_details() if op["op_name"] == op_name]
    return int(ops[occurrence]["outputs"][position])


def lsb_errors(qat_model, flatbuffer, x, targets):
    """{layer name: |flatbuffer - QAT| in LSBs, flat over samples} for `targets` {layer: (op, occurrence)}.

    A QAT output of one step (return_sequences=False) is compared with the last step of the tensor.
    """
    names = list(targets)
    expected = qat_outputs(qat_model, names, x)
    it = _interpreter(flatbuffer)
    indices = {n: op_output(flatbuffer, *targets[n]) for n in names}
    details = {d["index"]: d for d in it.get_tensor_details()}
    inputs = it.get_input_details()
    xs = x if isinstance(x, (list, tuple)) else [x]
    errors = {n: [] for n in names}
    for i in range(len(xs[0])):
        it.reset_all_variables()
        for a, d in zip(xs, inputs):
            value = a[i:i + 1]
            if np.dtype(d["dtype"]) == np.int8:
                scale, zero = d["quantization"]
                value = np.clip(np.round(value / scale + zero), -128, 127)
            it.set_tensor(d["index"], value.astype(d["dtype"]))
        it.invoke()
        for n in names:
            scale, zero = details[indices[n]]["quantization"]
            got = (it.get_tensor(indices[n]).astype(np.float64) - zero) * scale
            want = expected[n][i:i + 1]
            got = got.reshape(got.shape[:1] + (-1,) + want.shape[2:])[:, -1] if got.size != want.size else got
            errors[n].append(np.abs(got.reshape(want.shape) - want).ravel() / scale)
    return {n: np.concatenate(e) for n, e in errors.items()}


def summary(errors):
    """{name: (mean, p99, max)} rounded, for messages."""
    return {n: tuple(round(float(v), 3) for v in (e.mean(), np.percentile(e, 99), e.max())) for n, e in errors.items()}


def matched_outputs(flatbuffer, expected, x):
    """The flatbuffer's outputs on `x`, in the order of `expected` (the QAT model's outputs), and their LSBs.

    TFLite may order a multi-output model's outputs differently; each QAT output is paired with the
    flatbuffer output closest to it. Returns [(values, lsb)] (lsb 0.0 for a float output).
    """
    from lstm_transforms import tflite_utils

    got = tflite_utils.predict(flatbuffer, x)
    got = got if isinstance(got, list) else [got]
    details = tflite_utils.interpreter(flatbuffer).get_output_details()
    free = list(range(len(got)))
    out = []
    for want in expected:
        k = min((j for j in free if got[j].shape == want.shape), key=lambda j: np.abs(got[j] - want).mean())
        free.remove(k)
        out.append((got[k], float(details[k]["quantization"][0])))
    return out


def bias_scale_mismatches(flatbuffer):
    """(op, bias name, bias scale, input scale * weight scale) for every int32 bias whose scale is off."""
    from lstm_transforms import tflite_utils

    it = tflite_utils.interpreter(flatbuffer, inspect=True)
    details = {d["index"]: d for d in it.get_tensor_details()}
    triples = {"FULLY_CONNECTED": [(2, 0, 1)], "CONV_2D": [(2, 0, 1)], "DEPTHWISE_CONV_2D": [(2, 0, 1)],
               "UNIDIRECTIONAL_SEQUENCE_LSTM": [(12, 0, 1), (13, 0, 2), (14, 0, 3), (15, 0, 4)]}
    found = []
    for op in it._get_ops_details():
        for b, i, w in triples.get(op["op_name"], []):
            if b >= len(op["inputs"]) or op["inputs"][b] < 0:
                continue
            scale = lambda k: np.asarray(details[int(op["inputs"][k])]["quantization_parameters"]["scales"])  # noqa: E731
            want = scale(i)[0] * scale(w)
            if not np.allclose(scale(b), want, rtol=1e-5, atol=0):
                found.append((op["op_name"], details[int(op["inputs"][b])]["name"], scale(b), want))
    return found


def qat_weight(qat_model, endswith):
    """The fake-quantized value (as the QAT model uses it at inference) of the weight named `...endswith`."""
    for w in qat_model.layers:
        for var, quantizer, qvars in getattr(w, "_weight_vars", []):
            if var.name.split(":")[0].endswith(endswith):
                return w._make_quantizer_fn(quantizer, var, False, qvars)().numpy()
    raise KeyError(endswith)
