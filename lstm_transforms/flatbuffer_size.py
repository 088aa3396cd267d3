"""Make TFLite flatbuffers smaller, and say where their bytes go.

`strip_strings` removes the model description, subgraph names and tensor names with TensorFlow's own
`tensorflow.lite.tools.flatbuffer_utils.strip_strings`, and (unlike that function) keeps the
signature defs by default, so `interpreter.get_signature_runner()` still works. Operator codes,
custom op names and metadata stay. The math is untouched: TFLite and TFLite Micro give identical
outputs before and after (tests check both).

What is lost: tensor names, which is how `compare()` and `tflite_utils.summary` tell tensors apart, and
how Vela's report names CPU operators. Keep the unstripped file for diagnostics.
"""

from __future__ import annotations

__all__ = ["strip_strings", "size_breakdown"]


def _flatbuffer_utils():
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils


def strip_strings(flatbuffer, *, keep_signatures=True):
    """`flatbuffer` (bytes) without tensor/subgraph names and description; returns `bytes`.

    `keep_signatures=True` (default) keeps the signature defs (their input/output names point at
    tensors by index, not by tensor name), so the signature runner stays usable.
    """
    fbu = _flatbuffer_utils()
    model = fbu.convert_bytearray_to_object(bytearray(bytes(flatbuffer)))
    signatures = model.signatureDefs
    fbu.strip_strings(model)
    if keep_signatures:
        model.signatureDefs = signatures
    return bytes(fbu.convert_object_to_bytearray(model))


def size_breakdown(flatbuffer):
    """Where the bytes of `flatbuffer` go: a dict with `total`, `buffers` (constant data: weights,
    biases, shapes), `other` (tables: tensors, operators, quantization parameters, strings),
    `tensors`, `operators` (counts over all subgraphs) and `name_bytes` (tensor names)."""
    fbu = _flatbuffer_utils()
    data = bytes(flatbuffer)
    model = fbu.convert_bytearray_to_object(bytearray(data))
    buffers = sum(len(b.data) for b in (model.buffers or []) if b.data is not None)
    buffers += sum(int(b.size) for b in (model.buffers or []) if getattr(b, "offset", 0))
    tensors = [t for g in model.subgraphs for t in (g.tensors or [])]
    names = sum(len(t.name) for t in tensors if t.name)
    operators = sum(len(g.operators or []) for g in model.subgraphs)
    return {"total": len(data), "buffers": buffers, "other": len(data) - buffers, "tensors": len(tensors),
            "operators": operators, "name_bytes": names}
