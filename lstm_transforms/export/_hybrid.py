"""Weight-only int8 for TFLite's hybrid (dynamic-range) kernels: an edit of a float flatbuffer.

`quantize_weights` stores the weights of every `FULLY_CONNECTED` and `UNIDIRECTIONAL_SEQUENCE_LSTM`
op as int8 with one symmetric per-tensor scale (max|w| / 127, zero point 0) and sets the op's
`asymmetricQuantizeInputs`, as the converter's dynamic-range mode does. The kernels then quantize
their float input on the fly (per batch row) and compute int8 x int8 -> int32, scaled back to float;
activations stay float. Asymmetric input quantization is also the faster choice measured on x86
(TF 2.21, `ai-edge-litert` 2.3.0, LSTM(64), batch 1): turned off, the dynamic model was 5-24% slower
in `tf.lite` in each of four interleaved runs, and -0.2% to +8% in LiteRT.

Why not the converter's own dynamic-range mode (`optimizations=[DEFAULT]`, no representative
data), measured in TF 2.21: it quantizes each LSTM gate matrix as its own tensor with its own
max-abs scale, as here, but leaves every weight tensor under 1024 elements in float (LSTM(64) with
12 features: its 64x12 input matrices, and with them the whole LSTM; small Dense kernels), and it
quantizes Dense kernels per output channel (tfmot: per tensor). Here every such weight is int8, so
the QAT weights (fake-quantized, max-abs scale per gate / per Dense tensor, 8 bits) land exactly on
their codes; coarser grids (low-bit, stale tfmot ranges) are put on their QAT grid afterwards by
`_flatbuffer.regrid_weights`.

Left in float32 (there is no hybrid kernel for them here, or they are not weights of a matmul):
biases, CONV_2D / DEPTHWISE_CONV_2D filters, and any constant of another op.

`dequantize_weights` turns such a file into a weight-only one (`mode="weight_only"`): each int8
weight is read through a DEQUANTIZE op, and every op runs its float kernel. TFLite's DEQUANTIZE of a
constant runs once, when the interpreter prepares, and keeps its float output
(`float_dequantized_weights_initialized` in `kernels/dequantize.cc`): the file is as small as the
hybrid one, runs at float speed, and computes exactly what the float model with the QAT weights
computes (the weights are on their int8 grid), at the cost of the float weights in memory.
"""

from __future__ import annotations

import numpy as np
from tensorflow.lite.python import schema_py_generated as schema

from lstm_transforms.export._flatbuffer import _constant, op_name, operator_code, read, write

__all__ = ["quantize_weights", "dequantize_weights", "HYBRID_WEIGHTS"]

# op name -> input positions of the weights stored int8 (TFLite lstm_shared.h for the LSTM).
HYBRID_WEIGHTS = {"FULLY_CONNECTED": (1,), "UNIDIRECTIONAL_SEQUENCE_LSTM": tuple(range(1, 9))}


def quantize_weights(flatbuffer):
    """Return (flatbuffer, names of the tensors stored int8): the hybrid ops' float weights as int8."""
    model = read(flatbuffer)
    names = []
    for graph in model.subgraphs:
        targets = {}  # tensor index -> tensor
        for op in graph.operators:
            positions = HYBRID_WEIGHTS.get(op_name(model, op), ())
            if not positions:
                continue
            found = [int(op.inputs[p]) for p in positions if p < len(op.inputs) and op.inputs[p] >= 0]
            found = [i for i in found if _constant(model, graph.tensors[i], np.float32) is not None]
            if not found:
                continue
            targets.update({i: graph.tensors[i] for i in found})
            options = op.builtinOptions
            if options is not None and hasattr(options, "asymmetricQuantizeInputs"):
                options.asymmetricQuantizeInputs = True
        users = {}  # buffer -> tensor indices reading it, in this graph
        for k, tensor in enumerate(graph.tensors):
            users.setdefault(tensor.buffer, []).append(k)
        new_buffers = {}  # float buffer -> int8 buffer (tensors sharing weights keep sharing them)
        for k, tensor in targets.items():
            values = _constant(model, tensor, np.float32).astype(np.float64)
            scale = float(np.abs(values).max()) / 127.0 or 1.0
            codes = np.clip(np.round(values / scale), -127, 127).astype(np.int8)
            if tensor.buffer not in new_buffers:
                if all(u in targets for u in users[tensor.buffer]):
                    new_buffers[tensor.buffer] = tensor.buffer  # only weights read it: overwrite
                else:
                    model.buffers.append(schema.BufferT())
                    new_buffers[tensor.buffer] = len(model.buffers) - 1
                model.buffers[new_buffers[tensor.buffer]].data = np.frombuffer(codes.tobytes(), np.uint8)
            tensor.buffer = new_buffers[tensor.buffer]
            tensor.type = schema.TensorType.INT8
            tensor.quantization = schema.QuantizationParametersT()
            tensor.quantization.scale = [float(np.float32(scale))]
            tensor.quantization.zeroPoint = [0]
            tensor.quantization.quantizedDimension = 0
            names.append(bytes(tensor.name).decode())
    return write(model), names


def dequantize_weights(flatbuffer):
    """Return (flatbuffer, names of the weights read through DEQUANTIZE): `quantize_weights`' output
    with each int8 weight of a hybrid op replaced by the float output of a DEQUANTIZE of it."""
    model = read(flatbuffer)
    code = operator_code(model, schema.BuiltinOperator.DEQUANTIZE)
    names = []
    for graph in model.subgraphs:
        floats = {}  # int8 weight tensor -> its float (dequantized) tensor
        for op in graph.operators:
            positions = HYBRID_WEIGHTS.get(op_name(model, op), ())
            for p in positions:
                if p >= len(op.inputs) or op.inputs[p] < 0:
                    continue
                index = int(op.inputs[p])
                if _constant(model, graph.tensors[index], np.int8) is None:
                    continue
                if index not in floats:
                    weight = graph.tensors[index]
                    dequantized = schema.TensorT()  # no data (buffer 0); no name: its int8 input has it
                    dequantized.shape, dequantized.type = list(weight.shape), schema.TensorType.FLOAT32
                    dequantized.buffer = 0
                    dequantized.name = b""
                    graph.tensors.append(dequantized)
                    floats[index] = len(graph.tensors) - 1
                    names.append(bytes(weight.name or b"").decode())
                op.inputs[p] = floats[index]
            options = op.builtinOptions
            if positions and options is not None and hasattr(options, "asymmetricQuantizeInputs"):
                options.asymmetricQuantizeInputs = False
        dequantize_ops = []
        for weight, dequantized in floats.items():
            op = schema.OperatorT()
            op.opcodeIndex, op.inputs, op.outputs = code, [weight], [dequantized]
            dequantize_ops.append(op)
        graph.operators = dequantize_ops + list(graph.operators)
    return write(model), names

