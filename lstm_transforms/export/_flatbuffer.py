"""Edits of TFLite flatbuffers made by the conversion child process (through the schema's object API).

* `set_calibration_ranges`: in the converter's *calibrated* float model (between calibration and
  quantization), write the QAT ranges the converter cannot take from the graph: model inputs, and
  per fused LSTM its output, hidden state and hidden intermediate (one range: the integer kernel
  writes h with the intermediate's parameters and reads it back with the state's), its cell state
  bound and its CellClip. The range follows the LSTM output through ops that keep their input's
  scale (RESHAPE, STRIDED_SLICE, REVERSE_V2, ...); a CONCATENATION gets the union of its inputs.
  ADD / SUB outputs too narrow for the int8 kernels are widened (`widen_narrow_sums`).
* `regrid_weights`: int8 weights whose QAT grid is coarser than the converter's (2-7-bit weights,
  stale tfmot weight ranges) are re-expressed exactly on it (codes k*m, scale step/m), so they
  dequantize to the QAT weights.
* `requantize_biases`: every int32 bias at scale input_scale * weight_scale (what the integer
  kernels assume).
* `shorten_output_names`: each output of a SPLIT / SPLIT_V / UNPACK named after itself alone.
"""

from __future__ import annotations

import re

import numpy as np
from tensorflow.lite.python import schema_py_generated as schema
from tensorflow.lite.tools import flatbuffer_utils

__all__ = ["measure_ranges", "set_calibration_ranges", "regrid_weights", "requantize_biases", "shorten_output_names",
           "op_name", "read", "write"]

_OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}

# Ops whose int8 output must have its input's scale (input position of the data).
_SAME_SCALE = {"RESHAPE": 0, "SQUEEZE": 0, "EXPAND_DIMS": 0, "STRIDED_SLICE": 0, "SLICE": 0, "TRANSPOSE": 0,
               "REVERSE_V2": 0, "GATHER": 0, "UNPACK": 0, "SPLIT": 1, "SPLIT_V": 0, "MAX_POOL_2D": 0}
_UNION = ("CONCATENATION", "PACK")

# UNIDIRECTIONAL_SEQUENCE_LSTM tensor positions (TFLite lstm_shared.h).
_LSTM_INPUT_TO_FORGET, _LSTM_OUTPUT_STATE, _LSTM_CELL_STATE, _LSTM_HIDDEN_INTERMEDIATE = 2, 18, 19, 4

# op name -> [(bias input, data input, weight input)] whose int32 bias must be at scale in * w.
_BIAS_TRIPLES = {
    "FULLY_CONNECTED": [(2, 0, 1)],
    "CONV_2D": [(2, 0, 1)],
    "DEPTHWISE_CONV_2D": [(2, 0, 1)],
    "UNIDIRECTIONAL_SEQUENCE_LSTM": [(12, 0, 1), (13, 0, 2), (14, 0, 3), (15, 0, 4)],
}
# op name -> input positions of its int8 weights.
_WEIGHTS = {"FULLY_CONNECTED": (1,), "CONV_2D": (1,), "DEPTHWISE_CONV_2D": (1,),
            "UNIDIRECTIONAL_SEQUENCE_LSTM": tuple(range(1, 9))}


def read(flatbuffer):
    return flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))


def write(model):
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _builtin(code):
    """The builtin operator of an OperatorCode (codes >= 127 live only in `builtinCode`)."""
    return max(code.builtinCode, code.deprecatedBuiltinCode)


def op_name(model, op):
    return _OP_NAMES.get(_builtin(model.operatorCodes[op.opcodeIndex]), "CUSTOM")


def operator_code(model, builtin):
    """The index of `builtin`'s operator code in `model`, added (version 1) if missing."""
    for k, code in enumerate(model.operatorCodes):
        if _builtin(code) == builtin:
            return k
    code = schema.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), 1
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


_NUMPY_TYPES = {schema.TensorType.FLOAT32: np.float32, schema.TensorType.INT8: np.int8,
                schema.TensorType.INT32: np.int32}


def _constant(model, tensor, dtype):
    """The constant data of `tensor` as `dtype`, or None (no data, or another type)."""
    data = model.buffers[tensor.buffer].data
    if data is None or len(data) == 0 or _NUMPY_TYPES.get(tensor.type) is not np.dtype(dtype).type:
        return None
    return np.frombuffer(bytes(bytearray(data)), dtype).reshape(tensor.shape)


def _scales(tensor):
    q = tensor.quantization
    return np.asarray(q.scale if q is not None and q.scale is not None else [], np.float32)


def _set_range(tensor, lo, hi):
    if tensor.quantization is None:
        tensor.quantization = schema.QuantizationParametersT()
    tensor.quantization.min = [float(lo)]
    tensor.quantization.max = [float(hi)]


def _get_range(tensor):
    q = tensor.quantization
    if q is None or q.min is None or q.max is None or len(q.min) != 1:
        return None
    return float(q.min[0]), float(q.max[0])


def measure_ranges(calibrated, arrays):
    """The calibrated model with its activation statistics re-measured, the LSTM state reset per sample.

    TFLite's calibrator runs the samples one after another without resetting the fused LSTM's
    state variables, so every sample after the first starts from the previous one's final state,
    and the recorded ranges of the LSTM outputs and of everything computed from them are those of
    other sequences. Here every op output that has statistics is measured again (min / max over
    all samples, each from a zero state). Kept as they are: ranges fixed by FakeQuant ops
    (DEQUANTIZE outputs), variables and the LSTM intermediates (the kernel's internals).
    """
    import tensorflow as tf

    from lstm_transforms.tflite_utils import resize_inputs

    model = read(calibrated)
    graph = model.subgraphs[0]
    fixed = {int(i) for op in graph.operators if op.intermediates is not None for i in op.intermediates}
    measured = set()
    for op in graph.operators:
        if op_name(model, op) == "DEQUANTIZE":
            continue
        for out in op.outputs:
            t = graph.tensors[out]
            if int(out) not in fixed and not t.isVariable and _get_range(t) is not None:
                measured.add(int(out))
    measured |= {int(i) for i in graph.inputs if _get_range(graph.tensors[i]) is not None}
    if not measured:
        return calibrated
    it = tf.lite.Interpreter(
        model_content=bytes(calibrated), experimental_preserve_all_tensors=True,
        experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    inputs = it.get_input_details()
    lo = {i: np.inf for i in measured}
    hi = {i: -np.inf for i in measured}
    resize_inputs(it, [a.shape[1:] for a in arrays])
    for n in range(len(arrays[0])):
        it.reset_all_variables()
        for a, d in zip(arrays, inputs):
            it.set_tensor(d["index"], a[n:n + 1].astype(d["dtype"]))
        it.invoke()
        for i in measured:
            value = it.get_tensor(i)
            if value.size:
                lo[i], hi[i] = min(lo[i], float(value.min())), max(hi[i], float(value.max()))
    for i in measured:
        if np.isfinite(lo[i]):
            _set_range(graph.tensors[i], lo[i], hi[i])
    return write(model)


# int8 TANH / LOGISTIC outputs have a fixed scale (1/128, 1/256): their statistics say so, so that the
# tensors sharing their scale (a PACK of steps) agree with it.
_FIXED_INT8_RANGES = {"TANH": (-1.0, 1.0 - 1.0 / 128), "LOGISTIC": (0.0, 1.0 - 1.0 / 256)}


def set_calibration_ranges(calibrated, input_ranges, lstm_ranges, op_ranges=(), named_ranges=None,
                           int16=False):
    """Write QAT ranges into a calibrated (not yet quantized) flatbuffer.

    `input_ranges`: {input tensor name: (lo, hi)}. `lstm_ranges`: dicts with `input_to_forget`
    (units, features) float32, `output` (lo, hi) or None, `cell_bound` or None, `cell_clip` or None.
    `op_ranges`: dicts with `weights` (a kernel's values, sorted) and `output` (lo, hi) for the
    FULLY_CONNECTED / CONV_2D / DEPTHWISE_CONV_2D op with that kernel. `named_ranges`: {tag: (lo, hi)}
    for the tensors named `.../{tag}_t<step>` (the h of unrolled cells; also `{tag}_<point>_t<step>`, the other
    tensors of a GRU / SimpleRNN step, `{tag}_zero_tinit`, its zero state, and `{tag}_<point>_tall`,
    an input projection of all steps). Int8 activations (`int16=False`): TANH /
    LOGISTIC outputs get their int8 kernels' fixed ranges. Then every group of tensors
    TFLite gives one scale (`_scale_groups`) gets one range, and sums too narrow for their kernel are
    widened. Returns (bytes, indices of `lstm_ranges` and of `op_ranges` that matched no op, names
    of the widened tensors).
    """
    model = read(calibrated)
    graph = model.subgraphs[0]
    names = {bytes(t.name).decode(): k for k, t in enumerate(graph.tensors)}
    for name, (lo, hi) in input_ranges.items():
        index = names.get(f"serving_default_{name}:0", names.get(name))
        if index is None and len(graph.inputs) == 1:
            index = int(graph.inputs[0])
        if index is not None:
            _set_range(graph.tensors[index], lo, hi)
    matched = set()
    for op in graph.operators:
        if op_name(model, op) != "UNIDIRECTIONAL_SEQUENCE_LSTM":
            continue
        _floor_cell_range(graph.tensors[op.inputs[_LSTM_CELL_STATE]])
        weight = _constant(model, graph.tensors[op.inputs[_LSTM_INPUT_TO_FORGET]], np.float32)
        for k, ranges in enumerate(lstm_ranges):
            key = ranges["input_to_forget"]
            if weight is not None and weight.shape == key.shape and np.array_equal(weight, key):
                matched.add(k)
                _edit_lstm(graph, op, ranges)
                break
    matched_ops = set()
    for op in graph.operators:
        if op_name(model, op) not in ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D") or len(op.inputs) < 2:
            continue
        tensor = graph.tensors[op.inputs[1]]
        weight = _constant(model, tensor, np.float32)
        if weight is not None:
            tolerance = 1e-6 * max(1.0, float(np.abs(weight).max()))
        elif _dequantized(model, tensor) is not None:  # already int8 in the calibrated model
            codes, scales = _dequantized(model, tensor)
            weight, tolerance = codes * scales, 0.51 * float(scales.max())
        else:
            continue
        values = np.sort(weight.ravel())
        for k, ranges in enumerate(op_ranges):
            if ranges["weights"].shape == values.shape and np.allclose(
                    ranges["weights"], values, rtol=0, atol=tolerance):
                matched_ops.add(k)
                _set_range(graph.tensors[op.outputs[0]], *ranges["output"])
                break
    tags = re.compile(r"(?:^|/)(lt_h\d+(?:_[a-z]+)*)_t(?:\d+|all|init)$")
    for tensor in graph.tensors:
        for part in bytes(tensor.name).decode().split(";"):
            found = tags.search(part)
            if found and found.group(1) in (named_ranges or {}):
                _set_range(tensor, *named_ranges[found.group(1)])
    if not int16:
        for op in graph.operators:
            if op_name(model, op) in _FIXED_INT8_RANGES:
                _set_range(graph.tensors[op.outputs[0]], *_FIXED_INT8_RANGES[op_name(model, op)])
    _share_group_ranges(model, graph)
    widened = widen_narrow_sums(model, graph, _SUM_LEFT_SHIFT[16 if int16 else 8])
    return (write(model), [k for k in range(len(lstm_ranges)) if k not in matched],
            [k for k in range(len(op_ranges)) if k not in matched_ops], widened)


# An integer ADD / SUB brings both inputs to 2 * max(input scale), shifted left by 20 bits (int8; 15 for
# int16), and then to the output scale with a multiplier that TFLite and TFLM require to be below 1
# (QuantizeMultiplierSmallerThanOneExp aborts the process otherwise): the output scale must exceed
# 2 * max(input scale) / 2**shift. Scales in proportion to range widths, so widths are compared.
_SUM_LEFT_SHIFT = {8: 20, 16: 15}
_SUM_MARGIN = 1.01


def _range_scale(model, tensor):
    """The int8 scale of a tensor's statistics (0 included), or of a constant's values; None if neither."""
    bounds = _get_range(tensor)
    if bounds is None:
        values = _constant(model, tensor, np.float32)
        if values is None or not values.size:
            return None
        bounds = float(values.min()), float(values.max())
    return _int8_scale(*bounds)


def _int8_scale(lo, hi):
    """The asymmetric int8 scale of [lo, hi] with 0 included (0 for an empty range)."""
    return (max(hi, 0.0) - min(lo, 0.0)) / 255.0


def widen_narrow_sums(model, graph, left_shift):
    """Widen every ADD / SUB output range too narrow for the int8 kernels' output multiplier (see above).

    Happens only where a learned or calibrated range is orders of magnitude narrower than an input's
    (a tensor that is ~0 on all the data next to a fixed-grid TANH): the range is scaled about 0 (the
    zero point stays) to the smallest width the kernel accepts, with every tensor sharing its scale.
    Ops are visited in execution order, so later sums see the widened inputs. Returns the names of the
    widened tensors.
    """
    groups, _ = _scale_groups(model, graph)
    group_of = {t: members for members in groups.values() for t in members}
    widened = []
    for op in graph.operators:
        if op_name(model, op) not in ("ADD", "SUB"):
            continue
        scales = [_range_scale(model, graph.tensors[i]) for i in op.inputs if i >= 0]
        out = graph.tensors[op.outputs[0]]
        bounds = _get_range(out)
        if bounds is None or not scales or any(s is None for s in scales):
            continue
        needed = _SUM_MARGIN * 2.0 * max(scales) / 2 ** left_shift
        scale = _range_scale(model, out)
        if scale >= needed:
            continue
        lo, hi = min(bounds[0], 0.0), max(bounds[1], 0.0)
        new = (lo * needed / scale, hi * needed / scale) if scale > 0 else (0.0, 255.0 * needed)
        for t in group_of.get(int(op.outputs[0]), [int(op.outputs[0])]):
            _set_range(graph.tensors[t], *new)
        widened.append(bytes(out.name).decode())
    return widened


def _floor_cell_range(tensor):
    """The integer LSTM kernel's tanh(c) assumes a cell-state scale >= 2^-15 (a bound >= 1): widen smaller."""
    current = _get_range(tensor)
    bound = max(abs(current[0]), abs(current[1])) if current else 0.0
    if bound < 1.0:
        _set_range(tensor, -1.0, 1.0)


def _edit_lstm(graph, op, ranges):
    if ranges.get("output") is not None:
        _set_range(graph.tensors[op.outputs[0]], *ranges["output"])
    if ranges.get("cell_bound") is not None:
        bound = max(ranges["cell_bound"], 1.0)
        _set_range(graph.tensors[op.inputs[_LSTM_CELL_STATE]], -bound, bound)
    if ranges.get("cell_clip") is not None:
        op.builtinOptions.cellClip = float(ranges["cell_clip"])


def _scale_groups(model, graph):
    """Groups of tensors that TFLite's int8 kernels give one scale, and the tensors that merely copy others.

    Tied: input and outputs of ops that move values without arithmetic (RESHAPE, STRIDED_SLICE,
    REVERSE_V2, ...), all inputs and the output of CONCATENATION / PACK, and a fused LSTM's output,
    hidden state and hidden intermediate (the kernel writes h with the intermediate's parameters and
    reads it back with the state's). Returns ({root: [tensors]}, copies).
    """
    parent = {}

    def find(t):
        parent.setdefault(t, t)
        while parent[t] != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    def tie(a, b):
        parent[find(int(a))] = find(int(b))

    copies = set()
    for op in graph.operators:
        name = op_name(model, op)
        if name in _SAME_SCALE:
            for out in op.outputs:
                tie(out, op.inputs[_SAME_SCALE[name]])
                copies.add(int(out))
        elif name in _UNION:
            for i in op.inputs:
                if i >= 0:
                    tie(i, op.outputs[0])
            copies.add(int(op.outputs[0]))
        elif name == "UNIDIRECTIONAL_SEQUENCE_LSTM":
            tied = [op.inputs[_LSTM_OUTPUT_STATE]]
            if op.intermediates is not None and len(op.intermediates) > _LSTM_HIDDEN_INTERMEDIATE:
                tied.append(op.intermediates[_LSTM_HIDDEN_INTERMEDIATE])
            for t in tied:
                tie(t, op.outputs[0])
                copies.add(int(t))
    groups = {}
    for t in list(parent):
        groups.setdefault(find(t), []).append(t)
    return groups, copies


def _share_group_ranges(model, graph):
    """One range per scale group: the union of the ranges of its members that compute new values.

    Members that only copy others (reshapes, slices, concatenations, the LSTM state) do not widen it,
    so a QAT range in the group is kept unless a computed tensor in the same group (e.g. a calibrated
    input of the same CONCATENATION) needs more. A FakeQuant range in the group is widened with it.
    """
    groups, copies = _scale_groups(model, graph)
    fake_quant = {}  # DEQUANTIZE output -> the QUANTIZE output holding the FakeQuant parameters
    producers = {int(out): op for op in graph.operators for out in op.outputs}
    for op in graph.operators:
        if op_name(model, op) == "DEQUANTIZE":
            source = producers.get(int(op.inputs[0]))
            if source is not None and op_name(model, source) == "QUANTIZE":
                fake_quant[int(op.outputs[0])] = int(source.outputs[0])
    for members in groups.values():
        if len(members) < 2:
            continue
        ranges = [_get_range(graph.tensors[t]) for t in members if t not in copies]
        ranges = [r for r in ranges if r is not None] or [
            r for r in (_get_range(graph.tensors[t]) for t in members) if r is not None]
        if not ranges:
            continue
        lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
        for t in members:
            _set_range(graph.tensors[t], lo, hi)
            if t in fake_quant:
                _set_int8_params(graph.tensors[fake_quant[t]], lo, hi)


def _set_int8_params(tensor, lo, hi):
    """Asymmetric int8 scale / zero point of [lo, hi] (0 included), as the converter derives them."""
    scale = _int8_scale(lo, hi) or 1.0
    zero = int(np.clip(np.round(-128 - min(lo, 0.0) / scale), -128, 127))
    tensor.quantization.scale = [float(scale)]
    tensor.quantization.zeroPoint = [zero]


def _weight_tensors(model, graph):
    seen = set()
    for op in graph.operators:
        for position in _WEIGHTS.get(op_name(model, op), ()):
            if position < len(op.inputs) and op.inputs[position] >= 0 and int(op.inputs[position]) not in seen:
                seen.add(int(op.inputs[position]))
                yield graph.tensors[op.inputs[position]]


def _dequantized(model, tensor):
    """(int codes, per-element scales) of an int8 constant, or None."""
    q = tensor.quantization
    if tensor.type != schema.TensorType.INT8 or q is None or q.scale is None or len(q.scale) == 0:
        return None
    codes = _constant(model, tensor, np.int8)
    if codes is None:
        return None
    scales = np.asarray(q.scale, np.float64)
    shape = [1] * codes.ndim
    if scales.size > 1:
        shape[q.quantizedDimension] = -1
    return codes.astype(np.int64), np.broadcast_to(scales.reshape(shape), codes.shape)


def regrid_weights(flatbuffer, grids):
    """Re-express int8 weights exactly on their QAT grid: codes k*m with m = 127 // kmax.

    The converter maps max|w| to code 127, but QAT weights are k * step with |k| <= kmax, kmax
    being 2^(bits-1) - 1 for low-bit weights, or less when a tfmot weight range went stale (the
    weights moved after the last training step). Their codes round(k * 127 / kmax) give back k
    exactly. `grids`: dicts with `values` (the QAT weight tensor's values, sorted: the converter
    transposes kernels) and `kmax` (one per output channel, or one). A weight tensor is matched to a
    grid by its dequantized values. Returns (flatbuffer, changed tensor names, names of matched
    weights whose codes are not on their grid). Biases must be requantized afterwards.
    """
    model = read(flatbuffer)
    changed, off_grid = [], []
    for graph in model.subgraphs:
        for tensor in _weight_tensors(model, graph):
            found = _dequantized(model, tensor)
            if found is None:
                continue
            codes, scales = found
            values = np.sort((codes * scales).ravel())
            tolerance = 0.51 * float(scales.max())
            grid = next((g for g in grids if g["values"].shape == values.shape
                         and np.allclose(g["values"], values, rtol=0, atol=tolerance)), None)
            if grid is None:
                continue
            q = tensor.quantization
            per_channel = len(q.scale) > 1
            axis = q.quantizedDimension if per_channel else 0
            blocks = np.moveaxis(codes, axis, 0) if per_channel else codes[None]
            kmaxes = list(grid["kmax"]) if per_channel else [grid["kmax"][0]]
            if len(kmaxes) != len(blocks):
                continue
            new_codes, new_scales = blocks.copy(), np.asarray(q.scale, np.float64).copy()
            name = bytes(tensor.name).decode()
            for c, (block, kmax) in enumerate(zip(blocks, kmaxes)):
                top = int(np.abs(block).max())
                if top == 0 or kmax < 1:
                    continue
                k = np.round(block * kmax / top)
                if not np.array_equal(np.round(k * top / kmax), block):
                    off_grid.append(name)
                    break
                m = 127 // kmax
                new_codes[c] = k.astype(np.int64) * m
                new_scales[c] = new_scales[c] * top / (kmax * m)
            else:
                out = np.moveaxis(new_codes, 0, axis) if per_channel else new_codes[0]
                if not np.array_equal(out, codes):
                    model.buffers[tensor.buffer].data = np.frombuffer(out.astype(np.int8).tobytes(), np.uint8)
                    q.scale = [float(v) for v in new_scales.astype(np.float32)]
                    changed.append(name)
    return write(model), changed, off_grid


def requantize_biases(flatbuffer):
    """Return (flatbuffer, fixes): every int32 bias re-expressed at scale input_scale * weight_scale.

    The integer kernels add the bias in the accumulator domain and assume exactly that scale. The
    converter can quantize a bias with a stale scale (a weight re-gridded afterwards, or mixed fixed
    and calibrated ranges), so such biases are rewritten. `fixes` lists the tensors changed.
    """
    model = read(flatbuffer)
    fixes = []
    for graph in model.subgraphs:
        for op in graph.operators:
            inputs = list(op.inputs)
            for bias_i, in_i, w_i in _BIAS_TRIPLES.get(op_name(model, op), []):
                if max(bias_i, in_i, w_i) >= len(inputs) or min(inputs[bias_i], inputs[in_i], inputs[w_i]) < 0:
                    continue
                bias, x, w = (graph.tensors[inputs[i]] for i in (bias_i, in_i, w_i))
                if bias.type != schema.TensorType.INT32 or x.quantization is None or w.quantization is None:
                    continue
                b_scale, x_scale, w_scale = _scales(bias), _scales(x), _scales(w)
                if not (b_scale.size and x_scale.size and w_scale.size):
                    continue
                want = (x_scale[0] * w_scale).astype(np.float32)
                if want.size != b_scale.size or np.allclose(b_scale, want, rtol=1e-6, atol=0):
                    continue
                values = _constant(model, bias, np.int32)
                if values is None:
                    continue
                real = values.astype(np.float64) * b_scale.astype(np.float64)
                fixed = np.clip(np.round(real / want), -(2**31), 2**31 - 1).astype(np.int32)
                model.buffers[bias.buffer].data = np.frombuffer(fixed.tobytes(), np.uint8)
                bias.quantization.scale = [float(s) for s in want]
                fixes.append(bytes(bias.name).decode())
    return write(model), fixes


_SPLITTING = ("SPLIT", "SPLIT_V", "UNPACK")


def shorten_output_names(flatbuffer):
    """Return `flatbuffer` with output k of every SPLIT / SPLIT_V / UNPACK named by the k-th TF name.

    The converter names every output of such an op with the op's whole fused location: the names of
    all its outputs joined by ';' (then the output's index), so a split into T time steps carries T
    names T times (29 steps: about 30 KB of names in a Bidirectional LSTM's flatbuffer). Output k
    keeps the k-th of those names. Other tensors, and ops whose names do not have that form, are left
    as they are.
    """
    model = read(flatbuffer)
    changed = False
    for graph in model.subgraphs:
        for op in graph.operators:
            outputs = list(op.outputs) if op.outputs is not None else []
            if len(outputs) < 2 or op_name(model, op) not in _SPLITTING:
                continue
            first = graph.tensors[outputs[0]]
            names = bytes(first.name).decode().split(";") if first.name is not None else []
            if len(names) != len(outputs):
                continue
            for tensor_index, name in zip(outputs, names):
                graph.tensors[tensor_index].name = name.encode()
            changed = True
    return write(model) if changed else flatbuffer
