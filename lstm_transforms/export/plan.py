"""Plan: per layer, what is quantized and how it will run on the device (the first export stage).

`plan(model)` is what `lstm-transforms inspect` prints and what `export_tflite` checks before it
bakes anything: a layer the plan calls not deployable stops the export with an `ExportError`
naming the layer, the setting and the fix, before the converter runs. The bake (`bake.py`) reads
each recurrent cell's `deploy` from the plan, so inspect and export cannot disagree.

How a recurrent cell deploys:

* `fused`: `UNIDIRECTIONAL_SEQUENCE_LSTM` (int8 weights, int16 gates and cell state). Every LSTM
  cell with tanh / sigmoid activations whose cell state `c` is not read outside the layer: inference
  settings are baked away (`recurrent_dropout`/`dropout` vanish, `use_bias=False` is a zero bias,
  `unroll=True`, `RNN(LSTMCell)` and each cell of a `StackedRNNCells` become plain fused LSTMs).
* `unrolled`: integer FULLY_CONNECTED / ADD / MUL / activation ops, step by step, computing the
  cell's own math: LSTM cells with another activation (TFLite's integer LSTM computes tanh and
  sigmoid only) or whose `c` is used (`return_state`), every LSTM under `activations="int16"` (no
  16x8 fused LSTM in the converter), GRU, SimpleRNN, registered user cells. Needs a fixed number of
  time steps.
* `not deployable`: a Keras mask, an `initial_state`, `time_major=True`, or an unrolled cell with a
  time dimension of None or `stateful=True`.

How a recurrent layer reverses time (`LayerPlan.time_reversal`: the backward direction of a
`Bidirectional`, `go_backwards`): with a fixed number of time steps T, one SPLIT into the T steps and
a CONCATENATION of them in reverse order (in order for the other direction of a `Bidirectional`, whose
input would otherwise feed both a fused LSTM and the SPLIT, which leaves that LSTM in float), and the
same again to put a backward output sequence back in time order: integer copies an Ethos-U NPU runs
(Vela has no reverse). `REVERSE_V2`, which Vela leaves on the CPU, where the time dimension is None,
or where another layer's LSTM reads the same input tensor directly (it would be left in float).
"""

from __future__ import annotations

import dataclasses
import json

from lstm_transforms._keras import check_model, keras
from lstm_transforms.export import _graph
from lstm_transforms.export._describe import cell_differences, describe_quantization, display_class
from lstm_transforms.export._describe import tfmot_differences
from lstm_transforms.export.deployed import REVERSE_V2, SPLIT_CONCATENATION

__all__ = ["plan", "deployment_plan", "ModelPlan", "LayerPlan", "CellPlan", "ACTIVATIONS",
           "FUSED", "UNROLLED", "INTEGER", "CALIBRATED", "NO_OP", "INPUT", "BLOCKED",
           "SPLIT_CONCATENATION", "REVERSE_V2", "time_reversal"]

ACTIVATIONS = ("int8", "int16")

FUSED = "fused"  # UNIDIRECTIONAL_SEQUENCE_LSTM
UNROLLED = "unrolled"  # integer ops per time step
INTEGER = "integer"  # an integer op with QAT weights / ranges (or one that shares its input's scale)
CALIBRATED = "calibrated"  # float in QAT: integer op with a range the converter calibrates
NO_OP = "no op"  # identity at inference (Dropout, ...)
INPUT = "input"  # a model input
BLOCKED = "not deployable"

_IDENTITY_AT_INFERENCE = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "GaussianNoise", "GaussianDropout",
                          "AlphaDropout", "ActivityRegularization")
_SCALE_SHARING = ("Reshape", "Flatten", "Permute", "MaxPooling1D", "MaxPooling2D", "GlobalMaxPooling1D",
                  "GlobalMaxPooling2D", "Cropping1D", "Cropping2D", "ZeroPadding1D", "ZeroPadding2D",
                  "RepeatVector", "Concatenate", "IndexSlice", "Masking")


@dataclasses.dataclass(frozen=True)
class CellPlan:
    """How one recurrent cell deploys. `reason`: why unrolled, or what blocks it and the fix."""

    direction: str  # "" for a one-directional layer, else "forward" / "backward"
    index: int  # position in a StackedRNNCells (0 otherwise)
    cell: str  # class name of the (float) cell
    kind: str  # "lstm", "gru", "simple_rnn", "custom"
    deploy: str  # FUSED, UNROLLED or BLOCKED
    reason: str = ""
    notes: tuple = ()  # inference-time settings baked away

    @property
    def where(self):
        parts = ([self.direction] if self.direction else []) + [f"cell {self.index}"]
        return " ".join(parts)

    def describe(self):
        if self.deploy == BLOCKED:
            return f"{self.where} ({self.cell}): not deployable (see below)"
        what = {FUSED: "fused UNIDIRECTIONAL_SEQUENCE_LSTM", UNROLLED: "unrolled integer ops"}[self.deploy]
        extra = ([self.reason] if self.reason else []) + list(self.notes)
        return f"{self.where} ({self.cell}): {what}" + (" - " + "; ".join(extra) if extra else "")


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    """One layer: whether/how QAT quantizes it, how it deploys, and what cannot be held exactly."""

    name: str
    class_name: str
    status: str  # "quantized", "skipped", "quantized (added by a rewrite)"
    quantized: tuple  # one line per quantized tensor / quantization point
    deploy: str  # FUSED, UNROLLED, FUSED + "+" + UNROLLED, INTEGER, CALIBRATED, NO_OP, INPUT or BLOCKED
    detail: str = ""
    cells: tuple = ()
    problem: str | None = None  # not deployable: why, and the fix
    device_differs: tuple = ()  # QAT settings the flatbuffer cannot hold (warned at export)
    weight_bits: int | None = None  # the narrowest weight quantizer of the layer
    time_reversal: str = ""  # recurrent layers: SPLIT_CONCATENATION, REVERSE_V2 or "" (no reversal)

    @property
    def deployable(self):
        return self.problem is None

    def to_dict(self):
        out = dataclasses.asdict(self)
        out["cells"] = [dataclasses.asdict(c) for c in self.cells]
        out["deployable"] = self.deployable
        return out


@dataclasses.dataclass(frozen=True)
class ModelPlan:
    """The plan of a whole model: `layers` in model order; `str(plan)` is the `inspect` table."""

    model: str
    activations: str
    layers: tuple

    @property
    def deployable(self):
        return all(layer.deployable for layer in self.layers)

    @property
    def problems(self):
        return [(layer.name, layer.problem) for layer in self.layers if layer.problem]

    def layer(self, name):
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    @property
    def weight_bits(self):
        """The narrowest weight quantizer in the model (8 without any)."""
        return min([layer.weight_bits for layer in self.layers if layer.weight_bits] or [8])

    def cells(self, deploy=None):
        return [c for layer in self.layers for c in layer.cells if deploy is None or c.deploy == deploy]

    def to_dict(self):
        return {"model": self.model, "activations": self.activations, "deployable": self.deployable,
                "layers": [layer.to_dict() for layer in self.layers]}

    def to_json(self, **kwargs):
        return json.dumps(self.to_dict(), **kwargs)

    def __str__(self):
        width = max([len(r.name) for r in self.layers] + [4])
        cwidth = max([len(r.class_name) for r in self.layers] + [5])
        lines = [f"{self.model}: {len(self.layers)} layers, activations {self.activations}, "
                 + ("deployable" if self.deployable else "NOT deployable")]
        for r in self.layers:
            lines.append(f"{r.name:{width}}  {r.class_name:{cwidth}}  {r.status}; deploys: {r.deploy}")
            pad = f"{'':{width}}  {'':{cwidth}}    "
            lines += [pad + "- " + q for q in r.quantized]
            if r.detail:
                lines.append(pad + "> " + r.detail)
            lines += [pad + "> " + c.describe() for c in r.cells]
            lines += [pad + "! device differs: " + d for d in r.device_differs]
            if r.problem:
                lines.append(pad + "X " + r.problem)
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Entry points
# ------------------------------------------------------------------------------------------------


def plan(model, *, activations="int8"):
    """Per layer of `model` (float or QAT): what is quantized and how it will deploy; a `ModelPlan`.

    A float model is described as `lstm_transforms.quantize_model` would quantize it (its errors
    propagate); its layers' deployment is decided on the quantized model, as `export_tflite` would.
    `activations`: "int8" (default) or "int16" (16x8: int16 activations, int8 weights).
    """
    check_model(model)
    _check_activations(activations)
    if _is_qat(model):
        return deployment_plan(model, activations=activations)
    import lstm_transforms

    qat = lstm_transforms.quantize_model(model)
    qat_plan = deployment_plan(qat, activations=activations)
    float_names = {layer.name for layer in model.layers}
    rows = []
    for row in qat_plan.layers:  # in the quantized model's order
        if row.name not in float_names and row.status == "quantized":
            row = dataclasses.replace(row, status="quantized (added by quantize_model)")
        rows.append(row)
    qat_names = {row.name for row in rows} | {layer.name for layer in qat.layers}
    for layer in model.layers:  # layers a rewrite removed
        if layer.name not in qat_names:
            replaced = [row.name for row in rows if layer.name in row.name]
            why = (f"rewritten as {', '.join(replaced)} before quantization" if replaced else
                   "not in the quantized model: removed or replaced by a rewrite (e.g. a Lambda/TFOpLambda "
                   "squeeze turned into Reshape)")
            rows.append(LayerPlan(layer.name, type(layer).__name__, "skipped", (why,), NO_OP))
    return ModelPlan(model.name, activations, tuple(rows))


def deployment_plan(model, *, activations="int8"):
    """The plan of `model` as it is (a float model: post-training quantization); what export checks."""
    check_model(model)
    _check_activations(activations)
    consumed = _graph.consumed_tensors(model)
    rows = []
    for layer in model.layers:
        row = _layer_plan(model, layer, consumed, activations)
        bits = [getattr(q, "num_bits", 8) for _, q, _ in getattr(layer, "_weight_vars", [])]
        rows.append(dataclasses.replace(row, weight_bits=min(bits)) if bits else row)
    return ModelPlan(model.name, activations, tuple(rows))


def _check_activations(activations):
    if activations not in ACTIVATIONS:
        raise ValueError(f"activations must be one of {ACTIVATIONS}, got {activations!r}")


def _is_qat(model):
    return any(_graph.is_quantize_wrapper(layer) or _graph.is_quantize_layer(layer) for layer in model.layers)


# ------------------------------------------------------------------------------------------------
# One layer
# ------------------------------------------------------------------------------------------------


def _layer_plan(model, layer, consumed, activations):
    name, cls = _graph.inner(layer).name, display_class(layer)
    if isinstance(layer, keras.layers.InputLayer):
        return LayerPlan(name, cls, "skipped", ("model input (quantized by the QuantizeLayer after it)",), INPUT,
                         "float input, or int8 with int8_io=True")
    if _graph.is_quantize_layer(layer):
        return LayerPlan(name, cls, "quantized", ("input: int8 per-tensor (asymmetric)",), INTEGER,
                         "QUANTIZE at the QAT input range (nothing with int8_io=True)")
    quantized = tuple(describe_quantization(layer)) if _graph.is_quantize_wrapper(layer) else ()
    status = "quantized" if _graph.is_quantize_wrapper(layer) else "skipped"
    if _graph.is_recurrent(layer):
        return _recurrent_plan(model, layer, name, cls, status, quantized, consumed, activations)
    if cls in _IDENTITY_AT_INFERENCE:
        return LayerPlan(name, cls, status, quantized or ("identity at inference",), NO_OP)
    if cls in _SCALE_SHARING or (_graph.is_quantize_wrapper(layer) and not _has_own_quantization(layer)):
        return LayerPlan(name, cls, status, quantized or ("no arithmetic: keeps its input's quantization",), INTEGER,
                         "integer op sharing its input's scale")
    if _graph.is_quantize_wrapper(layer):
        return LayerPlan(name, cls, status, quantized, INTEGER, "integer op with the QAT weights and output range",
                         device_differs=tuple(tfmot_differences(layer, activations)))
    return LayerPlan(name, cls, status, (), CALIBRATED,
                     "integer op; weights and output range from post-training calibration at export")


def _has_own_quantization(wrapper):
    act = getattr(wrapper.layer, "activation", None)
    return bool(getattr(wrapper, "_weight_vars", None) or getattr(wrapper, "_output_quantizers", None)
                or type(act).__name__ == "QuantizeAwareActivation")


def _recurrent_plan(model, layer, name, cls, status, quantized, consumed, activations):
    rnns = _graph.directions(layer)
    bidirectional = len(rnns) == 2
    problem = _layer_problem(model, layer, name, cls, rnns)
    used_cell_states = _used_cell_states(model, layer, rnns, consumed)
    steps = _graph.time_steps(layer)
    reverses = bidirectional or any(getattr(rnn, "go_backwards", False) for rnn in rnns)
    shared_with = _fused_lstm_reading_the_same_input(model, layer) if reverses and steps is not None else None
    reversal = time_reversal(reverses, None if shared_with else steps)
    cell_plans = []
    for d, rnn in enumerate(rnns):
        direction = ("forward", "backward")[d] if bidirectional else ""
        for k, cell in enumerate(_graph.cells(rnn)):
            cell_plans.append(_cell_plan(cell, rnn, direction, k, (d, k) in used_cell_states, reversal, steps,
                                         activations))
    blocked = [c for c in cell_plans if c.deploy == BLOCKED]
    if problem is None and blocked:
        problem = f"Layer '{name}' ({cls}){_where(blocked[0], len(cell_plans))} {blocked[0].reason}"
    kinds = sorted({c.deploy for c in cell_plans})
    deploy = BLOCKED if problem else "+".join(kinds)
    fused = sum(c.deploy == FUSED for c in cell_plans)
    detail = ""
    if not problem:
        parts = ([f"{fused} UNIDIRECTIONAL_SEQUENCE_LSTM op(s)"] if fused else []) + (
            ["unrolled integer ops"] if UNROLLED in kinds else [])
        if shared_with:
            parts.append(f"time reversal by REVERSE_V2 (its input also feeds the fused LSTM of '{shared_with}' "
                         "directly, which the converter leaves in float next to a SPLIT; Vela leaves REVERSE_V2 on "
                         "the CPU)")
        elif reversal:
            parts.append(f"time reversal by {_REVERSAL_DETAIL[reversal]}")
        if bidirectional:
            parts.append(f"merge '{_graph.inner(layer).merge_mode}'")
        detail = " + ".join(parts)
    differs = tuple(cell_differences(rnns, [c.deploy == FUSED for c in cell_plans], activations))
    return LayerPlan(name, cls, status, quantized, deploy, detail, tuple(cell_plans), problem, differs,
                     time_reversal=reversal)


_REVERSAL_DETAIL = {
    SPLIT_CONCATENATION: "SPLIT + CONCATENATION (on the NPU)",
    REVERSE_V2: "REVERSE_V2 (time dimension None; Vela leaves it on the CPU)",
}


def _fused_lstm_reading_the_same_input(model, layer):
    """The name of another recurrent layer that reads `layer`'s input without reversing it and starts with
    an LSTM cell (so, where fused, straight from that tensor), or None.

    The converter leaves a fused LSTM in float when the tensor it reads also feeds a SPLIT; such a
    layer's time reversal stays REVERSE_V2.
    """
    inputs = _graph.input_tensors(model, layer)
    if not inputs:
        return None
    source = id(inputs[0])
    for other in model.layers:
        if other is layer or not _graph.is_recurrent(other):
            continue
        rnns = _graph.directions(other)
        if len(rnns) == 2 or any(getattr(r, "go_backwards", False) for r in rnns):
            continue  # reads its input through SPLIT + CONCATENATION too
        cells = _graph.cells(rnns[0])
        if cells and _graph.cell_kind(cells[0]) == "lstm":
            if any(id(t[0] if isinstance(t, (list, tuple)) else t) == source
                   for t in (node.input_tensors for node in _graph.nodes(model, other))):
                return _graph.inner(other).name
    return None


def time_reversal(reverses, steps):
    """How a recurrent layer that `reverses` time does it: SPLIT_CONCATENATION with a fixed number of
    `steps`, REVERSE_V2 with None; "" when nothing is reversed."""
    if not reverses:
        return ""
    return REVERSE_V2 if steps is None else SPLIT_CONCATENATION


def _where(cell_plan, count):
    return f", {cell_plan.where} ({cell_plan.cell})" if count > 1 else ""


def _layer_problem(model, layer, name, cls, rnns):
    """What blocks the whole layer (mask, initial state, time_major), or None."""
    source = _graph.mask_source(model, layer)
    if source is not None:
        return (f"it is called with a Keras mask (made by '{source}'), and TFLite's recurrent kernels have no mask "
                "input (the converter cannot lower a masked recurrence to integer ops). Export a copy built without "
                "the mask (no Masking layer, Embedding(mask_zero=False)) with the same weights, and feed it unpadded "
                "or pre-padded sequences.")
    if len(_graph.input_tensors(model, layer)) > 1:
        return (f"Layer '{name}' ({cls}) is called with initial_state (or constants): the deployed recurrence starts "
                "from a zero state. Export a model whose recurrent layers start from zeros (e.g. feed the encoder "
                "state as an extra input feature instead).")
    if any(getattr(rnn, "time_major", False) for rnn in rnns):
        return (f"Layer '{name}' ({cls}) has time_major=True; the deployed ops take (batch, time, features). "
                "Build it with time_major=False (the default) and transpose the input instead.")
    return None


def _state_counts(cell):
    kind = _graph.cell_kind(cell)
    if kind == "lstm":
        return 2
    if kind in ("gru", "simple_rnn"):
        return 1
    size = getattr(cell, "state_size", 1)
    return len(size) if isinstance(size, (list, tuple)) else 1


def _used_cell_states(model, layer, rnns, consumed):
    """{(direction, cell index)} of LSTM cells whose final cell state c is read (via return_state)."""
    outer = _graph.inner(layer)
    if not getattr(outer, "return_state", False) and not all(getattr(r, "return_state", False) for r in rnns):
        return set()
    outputs = _graph.output_tensors(model, layer)
    merge_mode = getattr(outer, "merge_mode", "concat")
    position = 2 if isinstance(outer, keras.layers.Bidirectional) and merge_mode is None else 1
    used = set()
    for d, rnn in enumerate(rnns):
        for k, cell in enumerate(_graph.cells(rnn)):
            count = _state_counts(cell)
            if _graph.cell_kind(cell) == "lstm" and position + 1 < len(outputs) and id(outputs[position + 1]) in consumed:
                used.add((d, k))
            position += count
    return used


def _activation_name(fn):
    try:
        return keras.activations.serialize(fn) if fn is not None else "linear"
    except ValueError:
        return getattr(fn, "__name__", repr(fn))


def _cell_plan(cell, rnn, direction, index, c_used, reversal, steps, activations):
    kind = _graph.cell_kind(cell)
    cell_class = display_class(cell)
    notes = []
    reasons = []  # (why the cell is unrolled, the alternative that would fuse it)
    if kind == "lstm":
        act, rec = _activation_name(cell.activation), _activation_name(cell.recurrent_activation)
        if act != "tanh":
            reasons.append((f"activation={act!r}: TFLite's integer LSTM kernel computes tanh only", "activation='tanh'"))
        if rec != "sigmoid":
            reasons.append((f"recurrent_activation={rec!r}: TFLite's integer LSTM kernel computes sigmoid gates only",
                            "recurrent_activation='sigmoid'"))
        if c_used:
            reasons.append(("return_state: its cell state c is used, and the fused op does not output c",
                            "no use of the returned c"))
        if activations == "int16":
            reasons.append(("activations='int16': the converter has no 16x8 UNIDIRECTIONAL_SEQUENCE_LSTM",
                            "activations='int8'"))
        notes = _baked_away(cell, rnn, reversal)
        if not reasons:
            return CellPlan(direction, index, cell_class, kind, FUSED, "", tuple(notes))
    elif kind in ("gru", "simple_rnn"):
        reasons.append((f"TFLite has no fused integer {cell_class[:-4]} kernel", None))
    else:
        reasons.append((f"{cell_class} is a user cell: its own call is unrolled and converted op by op", None))
    reason = "; ".join(why for why, _ in reasons)
    if steps is None:
        fixes = [fix for _, fix in reasons if fix]
        alternative = f", or fuse it instead ({', '.join(fixes)})" if fixes else ""
        return CellPlan(direction, index, cell_class, kind, BLOCKED,
                        f"has a time dimension of None. It is exported unrolled ({reason}), which needs a fixed number "
                        f"of steps: build the model with keras.Input(shape=(T, features)){alternative}.", tuple(notes))
    if getattr(rnn, "stateful", False):
        return CellPlan(direction, index, cell_class, kind, BLOCKED,
                        f"has stateful=True. It is exported unrolled ({reason}), and the unrolled graph starts from a "
                        "zero state on every call: build it with stateful=False.", tuple(notes))
    return CellPlan(direction, index, cell_class, kind, UNROLLED, reason, tuple(notes))


def _baked_away(cell, rnn, reversal):
    """Inference-time settings of an LSTM cell that deployment ignores or turns into plain weights."""
    notes = []
    if not cell.use_bias:
        notes.append("use_bias=False: zero bias")
    if cell.dropout or cell.recurrent_dropout:
        notes.append("dropout / recurrent_dropout: off at inference")
    if getattr(rnn, "unroll", False):
        notes.append("unroll=True: a training-time loop choice")
    if getattr(rnn, "go_backwards", False):
        notes.append(f"go_backwards: input reversed in time by {reversal}")
    if getattr(rnn, "stateful", False):
        notes.append("stateful=True: the fused op keeps h and c between invoke() calls (reset_all_variables() "
                     "resets them)")
    return notes
