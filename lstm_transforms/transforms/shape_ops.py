"""Is a layer call a pure shape operation? Decided by tracing it, never by names or source text.

`analyze(layer, template, input_shape, dtype)` traces the call on a symbolic input with
`tf.function` and walks the ops that consume the input's data:

- data-moving ops (`Identity`, `Squeeze`, `ExpandDims`, `Reshape`, `Transpose`, `StridedSlice`)
  pass data on from their first input;
- shape-reading ops (`Shape`, `Size`, `Rank`) read only metadata;
- anything else (`Mul`, `AddV2`, `Relu`, a `Cast`, ...) touches values: the call is not a shape op.

A pure shape op only moves elements, so running the traced function once on an input whose
elements are all distinct (0, 1, 2, ...) tells exactly where each element went. That probe picks
the single native layer that does the same move: `Reshape`, `Permute`, or `IndexSlice` (one index
along one non-batch axis). A pure shape op that no single native layer reproduces (e.g. a
transpose followed by a reshape) is reported as such and left alone.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from lstm_transforms._keras import keras, tf

__all__ = ["ShapeOpAnalysis", "analyze"]

_MOVING_OPS = frozenset({"Identity", "Squeeze", "ExpandDims", "Reshape", "Transpose", "StridedSlice"})
_SHAPE_READING_OPS = frozenset({"Shape", "ShapeN", "Size", "Rank"})
_PROBE_SIZES = (3, 4)  # sizes given to unknown non-batch dimensions when probing


@dataclasses.dataclass(frozen=True)
class ShapeOpAnalysis:
    """What tracing found. ``make_layer(name)`` is set when a native layer reproduces the call."""

    pure: bool
    reason: str  # why it is not replaceable, or a description of the replacement
    layer_spec: tuple | None = None  # ("Reshape", target) | ("Permute", dims) | ("IndexSlice", axis, index)

    def make_layer(self, name):
        from lstm_transforms.layer_configs import IndexSlice

        kind, *params = self.layer_spec
        if kind == "Reshape":
            return keras.layers.Reshape(params[0], name=name)
        if kind == "Permute":
            return keras.layers.Permute(params[0], name=name)
        return IndexSlice(axis=params[0], index=params[1], name=name)


def _trace(fn, input_shape, dtype):
    spec = tf.TensorSpec(input_shape, dtype)
    return tf.function(fn, autograph=False).get_concrete_function(spec)


def _impure_ops(graph, placeholder, outputs):
    """Op types that touch the data, or a message when the output is not the moved input."""
    data = {placeholder.name}
    bad = []
    for op in graph.get_operations():
        data_inputs = [i for i, t in enumerate(op.inputs) if t.name in data]
        if not data_inputs:
            continue
        if op.type in _SHAPE_READING_OPS:
            continue
        if op.type in _MOVING_OPS and data_inputs == [0]:
            data.update(t.name for t in op.outputs)
            continue
        bad.append(op.type)
    if bad:
        return sorted(set(bad))
    if len(outputs) != 1 or outputs[0].name not in data:
        return ["output not derived from the input by data moves"]
    return []


def _probe(cf, dims, dtype):
    shape = (2,) + tuple(dims)
    x = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    y = cf(tf.constant(x, dtype=dtype))
    y = tf.nest.flatten(y)[0].numpy().astype(np.int64)
    return x, y


def _match_move(x, y):
    """The single native layer moving x's elements to y, as a layer spec without unknown dims."""
    if y.ndim >= 1 and y.shape[0] == 2 and y.size == x.size and np.array_equal(y.reshape(2, -1), x.reshape(2, -1)):
        return ("Reshape",)
    if y.ndim == x.ndim and x.ndim > 2:
        for perm in itertools.permutations(range(1, x.ndim)):
            if perm != tuple(range(1, x.ndim)) and np.array_equal(np.transpose(x, (0,) + perm), y):
                return ("Permute", perm)
    if y.ndim == x.ndim - 1:
        for axis in range(1, x.ndim):
            for index in range(x.shape[axis]):
                if np.array_equal(np.take(x, index, axis=axis), y):
                    return ("IndexSlice", axis, index)
    return None


def analyze(call_fn, input_shape, dtype) -> ShapeOpAnalysis:
    """Trace ``call_fn(x)`` for ``x`` of `input_shape` (batch first, may hold None) and classify it."""
    input_shape = tuple(input_shape)
    if not tf.as_dtype(dtype).is_floating and not tf.as_dtype(dtype).is_integer:
        return ShapeOpAnalysis(False, f"input dtype {dtype} is not numeric")
    try:
        cf = _trace(call_fn, input_shape, dtype)
    except Exception as err:  # noqa: BLE001  any tracing failure means "leave it alone"
        return ShapeOpAnalysis(False, f"could not be traced on a symbolic input ({type(err).__name__}: {err})")
    placeholder = cf.graph.inputs[0]
    bad = _impure_ops(cf.graph, placeholder, cf.outputs)
    if bad:
        return ShapeOpAnalysis(False, "computes with ops " + ", ".join(bad))
    out_shape = cf.outputs[0].shape
    if out_shape.rank is None:
        return ShapeOpAnalysis(True, "output rank unknown (e.g. tf.squeeze without an axis)")
    unknown = [i for i, d in enumerate(input_shape) if d is None and i > 0]
    specs = []
    for size in _PROBE_SIZES if unknown else _PROBE_SIZES[:1]:
        dims = [size if d is None else d for d in input_shape[1:]]
        try:
            x, y = _probe(cf, dims, dtype)
        except Exception as err:  # noqa: BLE001
            return ShapeOpAnalysis(True, f"probe failed ({type(err).__name__})")
        specs.append((_match_move(x, y), dims))
    spec, dims = specs[0]
    if spec is None or any(s is None or s[0] != spec[0] for s, _ in specs):
        return ShapeOpAnalysis(True, "a pure shape op that no single native layer reproduces")
    if spec[0] == "Reshape":
        target = [-1 if d is None else int(d) for d in out_shape.as_list()[1:]]
        if target.count(-1) > 1:
            return ShapeOpAnalysis(True, "reshape with several unknown dimensions")
        if out_shape.as_list()[0] is not None and input_shape[0] is None:
            return ShapeOpAnalysis(True, "reshape that fixes the batch size")
        return ShapeOpAnalysis(True, f"Reshape({tuple(target)})", ("Reshape", tuple(target)))
    if spec[0] == "Permute":
        if any(s[1] != spec[1] for s, _ in specs):
            return ShapeOpAnalysis(True, "permutation depends on the input size")
        return ShapeOpAnalysis(True, f"Permute({spec[1]})", ("Permute", spec[1]))
    axis, index = spec[1], spec[2]
    if any(s[1] != axis for s, _ in specs):
        return ShapeOpAnalysis(True, "slice axis depends on the input size")
    if input_shape[axis] is None:  # same index from the start, or from the end, at both probe sizes?
        starts = {s[2] for s, _ in specs}
        ends = {s[2] - d[axis - 1] for s, d in specs}
        if len(starts) == 1:
            index = starts.pop()
        elif len(ends) == 1:
            index = ends.pop()
        else:
            return ShapeOpAnalysis(True, "slice index depends on the input size")
    return ShapeOpAnalysis(True, f"IndexSlice(axis={axis}, index={index})", ("IndexSlice", axis, index))
