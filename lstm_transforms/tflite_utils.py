"""Look inside TFLite flatbuffers and run them correctly.

Running: `predict`/`evaluate` call `interpreter.reset_all_variables()` before every sequence, because
`UNIDIRECTIONAL_SEQUENCE_LSTM` keeps its hidden and cell state in variable tensors across `invoke()`
calls (without the reset, sequence k starts from the final state of sequence k-1).

Inspecting: `op_names`, `tensors`, `lstm_gate_weights` and `weights` read op names, tensor dtypes,
quantization parameters and dequantized constant weights through `tf.lite.Interpreter` (with the
default delegates off, so every constant tensor is readable).
"""

from __future__ import annotations

import sys
import warnings

import numpy as np

from lstm_transforms._keras import tf

__all__ = [
    "interpreter",
    "op_names",
    "tensors",
    "float_islands",
    "weights",
    "lstm_gate_weights",
    "predict",
    "resize_inputs",
    "evaluate",
    "summary",
    "LSTM_GATE_INPUTS",
    "KERAS_GATE_ORDER",
]

# Input positions of UNIDIRECTIONAL_SEQUENCE_LSTM's weight tensors (TFLite lstm_shared.h).
LSTM_GATE_INPUTS = {
    "input_to_input": 1,
    "input_to_forget": 2,
    "input_to_cell": 3,
    "input_to_output": 4,
    "recurrent_to_input": 5,
    "recurrent_to_forget": 6,
    "recurrent_to_cell": 7,
    "recurrent_to_output": 8,
}
# Keras stores LSTM kernels as (in, 4 * units) in gate order i, f, c, o.
KERAS_GATE_ORDER = ("input", "forget", "cell", "output")


def interpreter(flatbuffer, *, inspect=False, num_threads=None):
    """A `tf.lite.Interpreter` with tensors allocated. `inspect=True`: no delegates (all tensors readable)."""
    kwargs = {"model_content": bytes(flatbuffer)}
    if inspect:
        kwargs["experimental_op_resolver_type"] = tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    if num_threads is not None:
        kwargs["num_threads"] = num_threads
    with warnings.catch_warnings():
        # tf.lite.Interpreter still works in TF 2.21 (ai-edge-litert runs the same flatbuffers with
        # bit-identical outputs); its deprecation notice would otherwise repeat on every call.
        warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated")
        it = tf.lite.Interpreter(**kwargs)
    it.allocate_tensors()
    return it


def op_names(flatbuffer):
    """Builtin op names in execution order, e.g. `['QUANTIZE', 'UNIDIRECTIONAL_SEQUENCE_LSTM', ...]`."""
    return [op["op_name"] for op in interpreter(flatbuffer, inspect=True)._get_ops_details()]


def tensors(flatbuffer):
    """One dict per tensor: index, name, dtype (numpy type name), shape, scales, zero_points, axis."""
    out = []
    for d in interpreter(flatbuffer, inspect=True).get_tensor_details():
        q = d["quantization_parameters"]
        out.append({
            "index": d["index"],
            "name": d["name"],
            "dtype": np.dtype(d["dtype"]).name,
            "shape": tuple(int(s) for s in d["shape"]),
            "scales": np.asarray(q["scales"], np.float64),
            "zero_points": np.asarray(q["zero_points"], np.int64),
            "axis": int(q["quantized_dimension"]),
        })
    return out


def _dequantize(it, index):
    detail = next(t for t in it.get_tensor_details() if t["index"] == index)
    value = it.get_tensor(index)
    q = detail["quantization_parameters"]
    scales, zeros = np.asarray(q["scales"]), np.asarray(q["zero_points"])
    if scales.size == 0:
        return value.astype(np.float64), detail
    shape = [1] * value.ndim
    if scales.size > 1:
        shape[q["quantized_dimension"]] = -1
    deq = (value.astype(np.float64) - zeros.reshape(shape)) * scales.reshape(shape)
    return deq, detail


def float_islands(flatbuffer):
    """Names of float tensors computed inside the model (a DEQUANTIZE not at a model output).

    A fully-integer model has none: float appears only at its own float inputs and outputs.
    """
    it = interpreter(flatbuffer, inspect=True)
    outputs = {d["index"] for d in it.get_output_details()}
    details = {d["index"]: d for d in it.get_tensor_details()}
    found = []
    for op in it._get_ops_details():
        if op["op_name"] == "DEQUANTIZE":
            found += [details[int(i)]["name"] for i in op["outputs"] if int(i) not in outputs]
    return found


def weights(flatbuffer, min_rank=2):
    """{tensor name: (dequantized float64 array, detail)} for every int8 constant of rank >= `min_rank`."""
    it = interpreter(flatbuffer, inspect=True)
    produced = {int(i) for op in it._get_ops_details() for i in op["outputs"]}
    produced |= {d["index"] for d in it.get_input_details()}
    out = {}
    for d in it.get_tensor_details():
        if d["index"] in produced or np.dtype(d["dtype"]) != np.int8 or len(d["shape"]) < min_rank:
            continue
        if d["name"] in ("",) or "intermediate" in d["name"]:
            continue
        try:
            out[d["name"]] = _dequantize(it, d["index"])
        except ValueError:  # no data: not a constant
            continue
    return out


def lstm_gate_weights(flatbuffer):
    """For each `UNIDIRECTIONAL_SEQUENCE_LSTM` op, in order: {gate name: dict(value, int8, scale)}.

    `value` is the dequantized weight transposed to Keras layout `(in, units)`, so it compares
    directly with the matching gate block of a Keras LSTM kernel / recurrent kernel.
    """
    it = interpreter(flatbuffer, inspect=True)
    out = []
    for op in it._get_ops_details():
        if op["op_name"] != "UNIDIRECTIONAL_SEQUENCE_LSTM":
            continue
        gates = {}
        for gate, pos in LSTM_GATE_INPUTS.items():
            index = int(op["inputs"][pos])
            if index < 0:
                continue
            deq, detail = _dequantize(it, index)
            q = detail["quantization_parameters"]
            gates[gate] = {
                "value": deq.T,
                "int8": it.get_tensor(index).T,
                "scale": np.asarray(q["scales"]),
                "dtype": np.dtype(detail["dtype"]).name,
            }
        out.append(gates)
    return out


def _quantize_input(x, detail):
    dtype = np.dtype(detail["dtype"])
    if dtype in (np.int8, np.int16):
        scale, zero = detail["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)
    return x.astype(dtype)


def _dequantize_output(y, detail):
    if np.dtype(detail["dtype"]) in (np.int8, np.int16):
        scale, zero = detail["quantization"]
        return (y.astype(np.float32) - zero) * scale
    return y


def predict(flatbuffer, x, *, progress=False, desc="tflite", num_threads=None):
    """Run the model on each sample of `x` independently (batch 1, state reset before each).

    `x`: an array with samples on axis 0, or a list of such arrays for a multi-input model.
    Integer inputs/outputs are quantized/dequantized with the model's own parameters, so the result is
    always float32: one array of shape `(n, ...)` per model output (a single array for one output).
    """
    it = interpreter(flatbuffer, num_threads=num_threads)
    xs = x if isinstance(x, (list, tuple)) else [x]
    xs = [np.asarray(a, np.float32) for a in xs]
    ins, outs = it.get_input_details(), it.get_output_details()
    if len(xs) != len(ins):
        raise ValueError(f"the model has {len(ins)} inputs, got {len(xs)} arrays")
    n = len(xs[0])
    results = [[] for _ in outs]
    resize_inputs(it, [a.shape[1:] for a in xs])
    for i in _progress(range(n), progress, desc):
        it.reset_all_variables()
        for a, d in zip(xs, ins):
            it.set_tensor(d["index"], _quantize_input(a[i:i + 1], d))
        it.invoke()
        for r, d in zip(results, outs):
            r.append(_dequantize_output(it.get_tensor(d["index"]), d)[0])
    stacked = [np.stack(r) for r in results]
    return stacked[0] if len(stacked) == 1 else stacked


def resize_inputs(interpreter, sample_shapes):
    """Give each input the batch-1 shape of its samples (`sample_shapes`: one per input, without the batch)
    where they differ, as for a dimension of None (e.g. time), and reallocate once."""
    resized = False
    for detail, shape in zip(interpreter.get_input_details(), sample_shapes):
        if list(detail["shape"][1:]) != list(shape):
            interpreter.resize_tensor_input(detail["index"], [1] + list(shape))
            resized = True
    if resized:
        interpreter.allocate_tensors()


def evaluate(flatbuffer, x, y, *, progress=False, desc="tflite"):
    """Top-1 accuracy of a classifier flatbuffer on `(x, y)` (integer labels), state reset per sample."""
    probs = predict(flatbuffer, x, progress=progress, desc=desc)
    return float(np.mean(np.argmax(probs, -1) == np.asarray(y).reshape(-1)))


def summary(flatbuffer):
    """A printable table: ops, then every tensor with dtype, shape and quantization."""
    lines = [f"{len(bytes(flatbuffer))} bytes", "ops: " + ", ".join(op_names(flatbuffer)), ""]
    lines.append(f"{'#':>4}  {'dtype':8} {'shape':18} {'quantization':34} name")
    for t in tensors(flatbuffer):
        if t["scales"].size == 0:
            quant = "-"
        elif t["scales"].size == 1:
            quant = f"scale={t['scales'][0]:.3g} zp={t['zero_points'][0]}"
        else:
            quant = f"{t['scales'].size} scales (axis {t['axis']})"
        lines.append(f"{t['index']:>4}  {t['dtype']:8} {str(list(t['shape'])):18} {quant:34} {t['name'][:60]}")
    return "\n".join(lines)


def _progress(iterable, enabled, desc):
    if not enabled:
        return iterable
    return _Bar(iterable, desc)


class _Bar:
    """A dependency-free progress bar on stderr."""

    def __init__(self, iterable, desc, width=30):
        self.items = list(iterable)
        self.desc, self.width = desc, width

    def __iter__(self):
        n = len(self.items)
        for i, item in enumerate(self.items):
            yield item
            if (i + 1 == n) or (sys.stderr.isatty() and (i + 1) % max(1, n // 50) == 0):
                done = int(self.width * (i + 1) / max(n, 1))
                sys.stderr.write(f"\r{self.desc}: [{'#' * done}{'.' * (self.width - done)}] {i + 1}/{n}")
                sys.stderr.flush()
        sys.stderr.write("\n")
