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
