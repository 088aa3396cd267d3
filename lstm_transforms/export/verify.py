"""Verify: the flatbuffer is what the plan promised (last stage).

Checks, each an `ExportError` naming what went wrong: no `WHILE` loop, one
`UNIDIRECTIONAL_SEQUENCE_LSTM` per fused cell of the plan, no float tensor computed inside the
model (a DEQUANTIZE not at an output), and with integer I/O no float at all (no QUANTIZE from or
DEQUANTIZE to float). An integer-to-integer QUANTIZE (a requantization, where TFLite needs one scale
for tensors of different ranges, e.g. a TANH output concatenated with wider tensors) is integer and
allowed; `requantizations` lists them. The child process has already loaded and run the flatbuffer
once in the TFLite interpreter.

`verify_weights_only` checks a `mode="dynamic"` or `"weight_only"` flatbuffer instead: no `WHILE`,
the plan's fused LSTM ops, and no weight of a FULLY_CONNECTED / UNIDIRECTIONAL_SEQUENCE_LSTM op a
float constant (`float_weights` lists those that are; a DEQUANTIZE output is not a constant).
"""

from __future__ import annotations

import numpy as np

from lstm_transforms.export.errors import ExportError
from lstm_transforms.export.plan import FUSED

__all__ = ["verify", "verify_weights_only", "integer_violations", "float_weights", "requantizations"]


def integer_violations(flatbuffer, *, int8_io=False):
    """What keeps `flatbuffer` from being fully integer: a list of short descriptions (empty: none)."""
    from lstm_transforms import tflite_utils

    found = [f"WHILE loop ({n})" for n in [tflite_utils.op_names(flatbuffer).count("WHILE")] if n]
    found += [f"float tensor '{name}' computed inside (DEQUANTIZE)" for name in tflite_utils.float_islands(flatbuffer)]
    it = tflite_utils.interpreter(flatbuffer, inspect=True)
    io = {d["index"] for d in it.get_input_details() + it.get_output_details()}
    for t in tflite_utils.tensors(flatbuffer):
        if t["dtype"].startswith("float") and t["index"] not in io and t["shape"] and 0 not in t["shape"]:
            found.append(f"float tensor '{t['name']}'")
    if int8_io:
        details = {d["index"]: d for d in it.get_tensor_details()}
        for op in it._get_ops_details():
            if op["op_name"] in ("QUANTIZE", "DEQUANTIZE") and _touches_float(op, details):
                found.append(f"{op['op_name']} op at a float tensor (integer I/O asks for none)")
    return list(dict.fromkeys(found))


def _touches_float(op, details):
    return any(np.dtype(details[int(i)]["dtype"]).kind == "f" for i in list(op["inputs"]) + list(op["outputs"]))


def requantizations(flatbuffer):
    """Names of the tensors an integer-to-integer QUANTIZE op produces (scale changes inside the model)."""
    from lstm_transforms import tflite_utils

    it = tflite_utils.interpreter(flatbuffer, inspect=True)
    details = {d["index"]: d for d in it.get_tensor_details()}
    return [details[int(op["outputs"][0])]["name"] for op in it._get_ops_details()
            if op["op_name"] == "QUANTIZE" and not _touches_float(op, details)]


def float_weights(flatbuffer):
    """Names of the constant weights of FULLY_CONNECTED / UNIDIRECTIONAL_SEQUENCE_LSTM ops that are not int8."""
    from lstm_transforms import tflite_utils
    from lstm_transforms.export._hybrid import HYBRID_WEIGHTS

    it = tflite_utils.interpreter(flatbuffer, inspect=True)
    details = {d["index"]: d for d in it.get_tensor_details()}
    ops = it._get_ops_details()
    computed = {int(i) for op in ops for i in op["outputs"]} | {d["index"] for d in it.get_input_details()}
    found = []
    for op in ops:
        for position in HYBRID_WEIGHTS.get(op["op_name"], ()):
            if position < len(op["inputs"]) and op["inputs"][position] >= 0:
                detail = details[int(op["inputs"][position])]
                if detail["index"] not in computed and np.dtype(detail["dtype"]) != np.int8:
                    found.append(detail["name"])
    return list(dict.fromkeys(found))


def verify_weights_only(flatbuffer, model_plan):
    """Raise `ExportError` unless the hybrid ops' weights are int8, with the plan's fused LSTMs and no WHILE."""
    from lstm_transforms import tflite_utils

    problems = [f"WHILE loop ({n})" for n in [tflite_utils.op_names(flatbuffer).count("WHILE")] if n]
    problems += [f"float weight tensor '{name}'" for name in float_weights(flatbuffer)]
    _raise_unless_fused(flatbuffer, model_plan, problems)


def verify(flatbuffer, model_plan, *, int8_io=False):
    """Raise `ExportError` unless `flatbuffer` is fully integer and has the plan's fused LSTMs."""
    _raise_unless_fused(flatbuffer, model_plan, integer_violations(flatbuffer, int8_io=int8_io))


def _raise_unless_fused(flatbuffer, model_plan, problems):
    from lstm_transforms import tflite_utils

    fused_cells = len(model_plan.cells(FUSED))
    fused_ops = tflite_utils.op_names(flatbuffer).count("UNIDIRECTIONAL_SEQUENCE_LSTM")
    if fused_ops < fused_cells:
        problems.append(f"{fused_ops} UNIDIRECTIONAL_SEQUENCE_LSTM op(s) for {fused_cells} fused LSTM cell(s)")
    if problems:
        raise ExportError(f"Export of '{model_plan.model}' is not what its plan promised: {'; '.join(problems)}. "
                          "This is a bug in lstm_transforms: please report it with the model.")
