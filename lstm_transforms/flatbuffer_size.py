"""Make TFLite flatbuffers smaller, and say where their bytes go.

`strip_strings` removes the model description, subgraph names and tensor names with TensorFlow's own
`tensorflow.lite.tools.flatbuffer_utils.strip_strings`, and (unlike that function) keeps the
signature defs by default, so `interpreter.get_signature_runner()` still works. It also removes what
no runtime reads and writes every repeated table once:

* the converter's `CONVERSION_METADATA` (how the file was converted; `min_runtime_version` and any other
  metadata stay);
* the empty buffer of each tensor without constant data (all of them point at buffer 0, which TFLite
  keeps empty for that);
* quantization parameters with nothing in them (float tensors);
* repeated vectors (shapes, scales, zero points, operator inputs, equal constant data), quantization
  parameter tables, tensor tables (tensors are told apart by their index, e.g. the 29 outputs of a
  SPLIT into time steps are one table) and operator options tables are written once and shared by
  every tensor / operator that has them (a flatbuffer table or vector may be referenced from several
  places; the schema's own writer copies each).

Operator codes, custom op names and the other metadata stay. The math is untouched: TFLite and TFLite
Micro give identical outputs before and after, and Vela places the same operators (tests check all).

What is lost: tensor names, which is how `compare()` and `tflite_utils.summary` tell tensors apart, and
how Vela's report names CPU operators. Keep the unstripped file for diagnostics.
"""

from __future__ import annotations

import flatbuffers
import numpy as np

__all__ = ["strip_strings", "size_breakdown"]

# Metadata written by the converter that neither TFLite nor TFLite Micro reads.
_UNREAD_METADATA = ("CONVERSION_METADATA",)


def _flatbuffer_utils():
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils


def strip_strings(flatbuffer, *, keep_signatures=True):
    """`flatbuffer` (bytes) without tensor/subgraph names, description, unread metadata, empty buffers and
    repeated tables (see the module docstring); returns `bytes`.

    `keep_signatures=True` (default) keeps the signature defs (their input/output names point at
    tensors by index, not by tensor name), so the signature runner stays usable.
    """
    fbu = _flatbuffer_utils()
    model = fbu.convert_bytearray_to_object(bytearray(bytes(flatbuffer)))
    signatures = model.signatureDefs
    fbu.strip_strings(model)
    if keep_signatures:
        model.signatureDefs = signatures
    _drop_unread_metadata(model)
    _drop_empty_quantization(model)
    _share_empty_buffer(model)
    return _write_shared(model)


def _drop_unread_metadata(model):
    kept = [m for m in (model.metadata or []) if bytes(m.name or b"").decode() not in _UNREAD_METADATA]
    model.metadata = kept or None


def _drop_empty_quantization(model):
    for graph in model.subgraphs:
        for tensor in graph.tensors or []:
            q = tensor.quantization
            if q is not None and q.details is None and all(
                    v is None or len(v) == 0 for v in (q.min, q.max, q.scale, q.zeroPoint)):
                tensor.quantization = None


def _is_empty(buffer):
    return (buffer.data is None or len(buffer.data) == 0) and not getattr(buffer, "offset", 0)


def _share_empty_buffer(model):
    """Every tensor without constant data on buffer 0; the buffers nothing references any more removed."""
    buffers = model.buffers or []
    if not buffers or not _is_empty(buffers[0]):
        return
    for graph in model.subgraphs:
        for tensor in graph.tensors or []:
            if _is_empty(buffers[tensor.buffer]):
                tensor.buffer = 0
    referenced = {int(t.buffer) for g in model.subgraphs for t in (g.tensors or [])}
    referenced |= {int(m.buffer) for m in (model.metadata or [])}
    kept = [0] + sorted(referenced - {0})
    index = {old: new for new, old in enumerate(kept)}
    model.buffers = [buffers[i] for i in kept]
    for graph in model.subgraphs:
        for tensor in graph.tensors or []:
            tensor.buffer = index[int(tensor.buffer)]
    for m in model.metadata or []:
        m.buffer = index[int(m.buffer)]


class _SharingBuilder(flatbuffers.Builder):
    """A flatbuffers builder that writes each distinct numeric vector once (`CreateNumpyVector`) and keeps
    the tables packed through `_SharedTable` in `written`."""

    def __init__(self):
        super().__init__(1024)
        self.written = {}

    def CreateNumpyVector(self, x):  # noqa: N802 - the flatbuffers method it overrides
        key = ("vector", x.dtype.str, x.tobytes())
        if key not in self.written:
            self.written[key] = super().CreateNumpyVector(x)
        return self.written[key]


class _SharedTable:
    """An object-API table packed once per `_SharingBuilder`: every later `Pack` returns the same offset."""

    def __init__(self, table, key):
        self.table, self.key = table, key

    def Pack(self, builder):  # noqa: N802 - the object API's method name
        if self.key not in builder.written:
            builder.written[self.key] = self.table.Pack(builder)
        return builder.written[self.key]


def _array(values, dtype):
    return None if values is None else np.asarray(values, dtype)


def _bytes(values):
    return None if values is None else values.tobytes()


def _share_quantization(tensor):
    q = tensor.quantization
    if q is None or q.details is not None:
        return
    q.min, q.max, q.scale = _array(q.min, np.float32), _array(q.max, np.float32), _array(q.scale, np.float32)
    q.zeroPoint = _array(q.zeroPoint, np.int64)
    key = ("quantization", int(q.quantizedDimension)) + tuple(map(_bytes, (q.min, q.max, q.scale, q.zeroPoint)))
    tensor.quantization = _SharedTable(q, key)


def _shared_tensor(tensor):
    """`tensor` as a table shared with every tensor of equal content (tensors are told apart by their
    index, not by their table), or itself when it has a name, sparsity, variant tensors or unshared
    quantization details."""
    q = tensor.quantization
    if tensor.name is not None or tensor.sparsity is not None or tensor.variantTensors is not None or not (
            q is None or isinstance(q, _SharedTable)):
        return tensor
    tensor.shapeSignature = _array(tensor.shapeSignature, np.int32)
    key = ("tensor", _bytes(tensor.shape), int(tensor.type), int(tensor.buffer), None if q is None else q.key,
           bool(tensor.isVariable), bool(tensor.hasRank), _bytes(tensor.shapeSignature), int(tensor.externalBuffer))
    return _SharedTable(tensor, key)


def _share_options(op):
    options = op.builtinOptions
    fields = sorted(vars(options).items()) if options is not None else ()
    if options is not None and all(isinstance(v, (bool, int, float, type(None))) for _, v in fields):
        op.builtinOptions = _SharedTable(options, ("options", type(options).__name__) + tuple(fields))


def _write_shared(model):
    """The model's bytes, each distinct numeric vector, quantization table, tensor table and operator
    options table written once and shared."""
    for graph in model.subgraphs:
        for k, tensor in enumerate(graph.tensors or []):
            tensor.shape = _array(tensor.shape, np.int32)
            _share_quantization(tensor)
            graph.tensors[k] = _shared_tensor(tensor)
        for op in graph.operators or []:
            _share_options(op)
    builder = _SharingBuilder()
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


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
