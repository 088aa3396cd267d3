"""QAT model -> fully-integer (or weights-only int8) TFLite flatbuffer, in four stages called in order by `export_tflite`.

1. **plan** (`plan.py`): per layer, how it deploys (fused LSTM op, unrolled integer ops, integer
   op, ...); anything not deployable stops here with an `ExportError` naming the layer, the setting
   and the fix. `lstm-transforms inspect` prints the same plan.
2. **bake** (`bake.py`): a float Keras model holding the QAT weights (fake-quantized, so the int8
   weights dequantize to them) and ranges; each recurrent layer as the plan deploys it
   (`deployed.py`).
3. **convert** (`convert.py`, child process `_worker.py`): batch-1 post-training full-integer
   conversion; the QAT ranges the graph cannot carry (model inputs, fused LSTM output / hidden state /
   cell state, CellClip) replace the converter's calibration statistics; low-bit weights are put
   back on their grid, biases at input_scale * weight_scale.
4. **verify** (`verify.py`): no WHILE, no float tensor inside, the plan's fused LSTM ops present,
   no QUANTIZE / DEQUANTIZE with integer I/O.

**Which ranges come from where (int8).** Weights: the QAT weights exactly (per LSTM/GRU gate
matrix, per Conv output channel, per Dense tensor; 2-7-bit weights and weights whose tfmot range
went stale are put back on their QAT grid). Written into the converter's calibration statistics:
the model inputs' QAT range, the output (or pre-activation, before softmax / sigmoid / tanh) range
of Dense and Conv layers (found by their kernels), every fused LSTM's h range (output, hidden state
and hidden intermediate) and cell-state bound (a power of two, at least 1), and the h range of every
unrolled step (found by op name); for GRU and SimpleRNN also the learned range of every other tensor
of the step (input projections, recurrent FULLY_CONNECTED outputs, pre-activation sums, reset
product, state delta, update, the zero state), one shared range per point written into every step,
since their QAT simulates exactly the deployed step (`deployed.py`). Other tfmot outputs (BatchNorm, Add, ...) keep their QAT range as
fixed `FakeQuant` ops, except into a Concatenate. Calibrated on `representative_dataset`, each
sample from a zero state: everything else (gates and cell state of unrolled LSTM steps, whose QAT
simulates the fused kernel instead; the internals of activations other than tanh / sigmoid / relu;
merges; layers float in QAT; weights-only QAT). Tensors TFLite gives one scale (CONCATENATION, PACK, reshapes)
share the union of their ranges: e.g. the two directions of a `Bidirectional(merge_mode="concat")`.
Inside the integer LSTM the gates are int16 on the fixed range [-1, 1), as QAT simulates them.
With `activations="int16"` every activation range is calibrated.

**mode="dynamic"** (for phone / server CPUs): the same plan and bake (no activation range kept), a
float conversion, then the weights of every FULLY_CONNECTED and fused LSTM op stored int8, one
max-abs scale per tensor (per LSTM gate matrix, per Dense kernel): the QAT weights exactly
(`_hybrid.py`). Activations stay float; TFLite's hybrid kernels quantize their inputs on the fly.
Verify: those weights int8, the plan's fused LSTMs present, no WHILE.

**mode="weight_only"** (CPUs where the float kernels are the fast ones): the dynamic file with each
int8 weight read through a DEQUANTIZE op, which TFLite runs once when the interpreter prepares; every
op then runs its float kernel. As small as the dynamic file; it computes exactly what the float model
with the QAT weights computes; the float weights are held in memory. Verified like mode="dynamic".
"""

from __future__ import annotations

import warnings

from lstm_transforms._keras import check_model
from lstm_transforms import data as data_mod
from lstm_transforms.export.bake import bake, baked_float_model, raise_if_blocked
from lstm_transforms.export.convert import convert, layer_names_in
from lstm_transforms.export.deployed import FakeQuant
from lstm_transforms.export.errors import ExportError, ExportWarning
from lstm_transforms.export.plan import deployment_plan, plan
from lstm_transforms.export.verify import verify, verify_weights_only

__all__ = ["export_tflite", "MODES", "plan", "convert", "baked_float_model", "ExportError", "ExportWarning", "FakeQuant"]

MODES = ("full", "dynamic", "weight_only")


def export_tflite(qat_model, representative_dataset=None, *, mode="full", int8_io=False, activations="int8",
                  max_samples=None, timeout=600, progress=False):
    """Export a QAT (or float) tf-keras model to a TFLite flatbuffer; returns `bytes`.

    `mode="full"` (default): fully integer, for MCUs and NPUs. `mode="dynamic"`: int8 weights (the
    QAT weights exactly, one scale per LSTM gate matrix and per Dense kernel), float activations,
    fused LSTM kept: TFLite's hybrid kernels, for phone and server CPUs; it needs no
    `representative_dataset` (ignored if given) and takes neither `int8_io` nor `activations`.
    `mode="weight_only"`: the same int8 weights, dequantized once when the interpreter prepares, and
    float kernels (float speed and float results from a file as small as the dynamic one); same
    arguments as mode="dynamic".

    `representative_dataset`: a numpy array (samples on axis 0), a list of arrays (one per model
    input), or a generator function in TFLite's convention; it calibrates the ranges QAT did not
    learn (see the module docs); `max_samples` caps how many samples are used.
    `activations`: "int8" (default) or "int16" (16x8: int16 activations, int8 weights; every LSTM
    unrolled, since the converter has no 16x8 fused LSTM). Float input/output by default, integer
    with `int8_io=True` (int16 under activations="int16"). `progress=True` draws a calibration
    progress bar; `timeout` (seconds) bounds the conversion.

    Raises `ExportError` before converting for any layer the plan (`lstm_transforms.plan`) cannot
    deploy, and after converting if the flatbuffer is not what the plan promised. Warns
    (`ExportWarning`) for each QAT setting the flatbuffer cannot hold exactly.
    """
    check_model(qat_model, "qat_model")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode in ("dynamic", "weight_only"):
        return _export_weights_only(qat_model, mode, int8_io=int8_io, activations=activations, timeout=timeout)
    if representative_dataset is None:
        raise ValueError("export_tflite needs a representative_dataset to calibrate activation ranges.")
    model_plan = deployment_plan(qat_model, activations=activations)  # 1. plan
    raise_if_blocked(model_plan)
    arrays = data_mod.arrays(representative_dataset, qat_model, max_samples)
    _warn_differences(model_plan)
    baked = bake(qat_model, model_plan, qat_ranges=activations == "int8")  # 2. bake
    report = {}
    flatbuffer = convert(  # 3. convert
        baked.model, arrays, int8_io=int8_io, timeout=timeout, progress=progress, activations=activations,
        input_ranges=baked.input_ranges, lstm_ranges=baked.lstm_ranges, op_ranges=baked.op_ranges,
        named_ranges=baked.named_ranges, weight_grids=baked.weight_grids, report=report)
    if report.get("unmatched_lstm_ranges"):
        raise ExportError(f"Export of '{qat_model.name}': the QAT ranges of {len(report['unmatched_lstm_ranges'])} "
                          "fused LSTM cell(s) found no LSTM op in the converted model. This is a bug in "
                          "lstm_transforms: please report it with the model.")
    if report.get("off_grid"):
        warnings.warn(f"'{qat_model.name}': weights {report['off_grid']} could not be stored on their QAT grid; "
                      "they are stored as the converter rounded them.", ExportWarning, stacklevel=2)
    if report.get("widened"):
        where = ", ".join(repr(n) for n in layer_names_in("\n".join(report["widened"]), baked.model)) or "?"
        warnings.warn(f"'{qat_model.name}': {len(report['widened'])} sum(s) in layer(s) {where} have a range too "
                      "narrow for TFLite's int8 ADD / SUB (the tensor is ~0 on all the data); widened to the "
                      "narrowest range the kernel accepts.", ExportWarning, stacklevel=2)
    verify(flatbuffer, model_plan, int8_io=int8_io)  # 4. verify
    return flatbuffer


def _export_weights_only(qat_model, mode, *, int8_io, activations, timeout):
    """mode="dynamic" / "weight_only": plan, bake (QAT weights, no activation ranges), float convert +
    int8 weights (read by hybrid kernels, or through DEQUANTIZE by float ones), verify."""
    if int8_io or activations != "int8":
        raise ValueError(f'mode="{mode}" keeps float activations and float input/output: '
                         'it takes neither int8_io=True nor activations="int16" (use mode="full").')
    model_plan = deployment_plan(qat_model)  # 1. plan
    raise_if_blocked(model_plan)
    baked = bake(qat_model, model_plan, qat_ranges=False)  # 2. bake
    report = {}
    weights_only = "hybrid" if mode == "dynamic" else "dequantized"
    flatbuffer = convert(baked.model, weights_only=weights_only, timeout=timeout,  # 3. convert
                         weight_grids=baked.weight_grids, report=report)
    if report.get("off_grid"):
        warnings.warn(f"'{qat_model.name}': weights {report['off_grid']} could not be stored on their QAT grid; "
                      "they are stored rounded to a max-abs / 127 scale.", ExportWarning, stacklevel=3)
    verify_weights_only(flatbuffer, model_plan)  # 4. verify
    return flatbuffer


def _warn_differences(model_plan):
    """One `ExportWarning` per QAT setting the flatbuffer cannot hold, naming the layers it concerns."""
    layers = {}
    for layer in model_plan.layers:
        for difference in layer.device_differs:
            layers.setdefault(difference, []).append(layer.name)
    for difference, names in layers.items():
        warnings.warn(f"'{model_plan.model}': {difference} (layer(s) {', '.join(repr(n) for n in names)}).",
                      ExportWarning, stacklevel=3)
