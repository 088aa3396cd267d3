"""Bake: a QAT model -> a plain float Keras model holding the QAT weights and ranges (second stage).

Why not convert the QAT model directly: fake-quant ops on recurrent weights stop the converter from
fusing an LSTM into `UNIDIRECTIONAL_SEQUENCE_LSTM` (it emits a `WHILE` loop, and full-int8
conversion then fails or crashes).

The baked model has the QAT model's layer graph and layer names:

* every weight is the QAT model's fake-quantized weight, exactly as the QAT model computes it at
  inference (`quantizer(weight, training=False)`): the converter's int8 weights then dequantize to
  the QAT weights (one max-abs scale per LSTM gate matrix, per output channel for Conv, per tensor
  for Dense);
* each quantized recurrent layer becomes one `deployed.DeployedRNN`, built from the plan's
  decision for each of its cells (fused / unrolled);
* other quantize wrappers become their stock float layers (a BatchNorm over the channels of a 4-D
  tensor: a 1x1 DepthwiseConv2D, one int8 rounding as in QAT); BatchNorm, Add and the other tfmot
  outputs without a kernel keep their QAT range as a fixed `FakeQuant` (not into a Concatenate:
  the converter would push that range onto the other inputs and clip them); `QuantizeLayer`s
  become identities.

The other QAT ranges travel next to the model (`Baked`) and are written into the converter's
calibration statistics by the child process (`convert.py`): the model inputs' ranges; per fused
LSTM its output (= hidden state) range, cell-state bound and cell clip (a `FakeQuant` around a fused
LSTM makes the converter fail with "Failed to duplicate values for the stateful op", or give its
output, hidden state and hidden intermediate three different scales); the output range of Dense /
Conv layers, found by their kernels; the h range of unrolled steps and, for GRU / SimpleRNN, the
range of every other quantization point of a step, found by op name.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lstm_transforms._keras import check_model, keras, tf
from lstm_transforms.export import _graph
from lstm_transforms.export._float_layers import baked_weights, float_layer, qat_weight_values
from lstm_transforms.export._ranges import LSTMRanges, OpRange, WeightGrid, fake_quant, feeds_recurrent
from lstm_transforms.export._ranges import inbound_layers, op_range, output_fake_quant, quantizer_range, weight_grids
from lstm_transforms.export.deployed import CellSpec, DeployedRNN, DirectionSpec, RecurrentSpec, WithFakeQuant
from lstm_transforms.export.errors import ExportError
from lstm_transforms.export.plan import BLOCKED, FUSED, deployment_plan

__all__ = ["bake", "baked_float_model", "Baked", "LSTMRanges", "OpRange", "WeightGrid", "raise_if_blocked"]


@dataclasses.dataclass
class Baked:
    model: object  # the float tf-keras model
    input_ranges: dict  # model input index -> (lo, hi) from the QAT QuantizeLayer
    lstm_ranges: list  # LSTMRanges, one per fused LSTM cell
    op_ranges: list = dataclasses.field(default_factory=list)  # OpRange of Dense / Conv layers
    named_ranges: dict = dataclasses.field(default_factory=dict)  # h of unrolled cells: op name tag -> (lo, hi)
    weight_grids: list = dataclasses.field(default_factory=list)  # WeightGrid of weights on a coarser grid


def raise_if_blocked(model_plan):
    """`ExportError` naming the first layer the plan cannot deploy, its setting and the fix."""
    for name, problem in model_plan.problems:
        raise ExportError(f"Cannot export '{model_plan.model}' at layer '{name}': {problem}")


def baked_float_model(qat_model, *, qat_ranges=True):
    """The float tf-keras model `export_tflite` converts (see `bake`)."""
    return bake(qat_model, deployment_plan(qat_model), qat_ranges=qat_ranges).model


def bake(model, model_plan, *, qat_ranges=True):
    """A `Baked` float model computing what `model` (QAT or float) computes at inference.

    `model_plan`: `deployment_plan(model)`; it decides how each recurrent cell is baked.
    `qat_ranges=False`: no QAT activation range is kept (every range is calibrated at conversion).
    """
    check_model(model, "qat_model")
    raise_if_blocked(model_plan)
    pairs, input_ranges, lstm_ranges, op_ranges, grids, named_ranges = [], {}, [], [], [], {}
    input_layers = {id(t._keras_history.layer): k for k, t in enumerate(model.inputs)}

    def clone(layer):
        if _graph.is_quantize_layer(layer):
            source = inbound_layers(model, layer)
            if qat_ranges and len(source) == 1 and id(source[0]) in input_layers:
                input_ranges[input_layers[id(source[0])]] = quantizer_range(layer.quantizer, layer.quantizer_vars)
                return keras.layers.Activation("linear", name=layer.name)
            # In front of a recurrent layer the converter may calibrate the recurrent input anyway and
            # insert a DEQUANTIZE/QUANTIZE round trip: leave that input range to calibration.
            keep = qat_ranges and not feeds_recurrent(model, layer)
            fq = fake_quant(layer.quantizer, layer.quantizer_vars, layer.name) if keep else None
            return fq or keras.layers.Activation("linear", name=layer.name)
        if _graph.is_quantize_wrapper(layer):
            grids.extend(weight_grids(layer))
        if _graph.is_recurrent(layer) and all(_graph.cell_kind(c) != "custom" for c in _all_cells(layer)):
            spec, ranges = _recurrent_spec(model, layer, model_plan.layer(_graph.inner(layer).name), qat_ranges)
            lstm_ranges.extend(ranges)
            for cell in (c for d in spec.directions for c in d.cells if c.deploy != FUSED and c.output_range):
                cell.tag = f"lt_h{len(named_ranges)}"
                named_ranges[cell.tag] = cell.output_range
                named_ranges.update({f"{cell.tag}_{point}": r for point, r in cell.ranges.items()})
                named_ranges[f"{cell.tag}_zero"] = cell.output_range  # the explicit zero state of a GRU / SimpleRNN
            return DeployedRNN(spec, name=_graph.inner(layer).name)
        new = float_layer(layer)
        pairs.append((layer, new))
        ranges = op_range(layer) if qat_ranges else []
        op_ranges.extend(ranges)
        fq = output_fake_quant(model, layer) if qat_ranges and not ranges else None
        return WithFakeQuant(new, fq) if fq is not None else new

    try:
        float_model = keras.models.clone_model(model, clone_function=clone)
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 - name the model-level cause in one line
        raise ExportError(f"Could not rebuild a float model from '{model.name}': {type(e).__name__}: {e}") from e
    for source, new in pairs:
        if new.weights:
            new.set_weights(baked_weights(source, new))
    return Baked(float_model, input_ranges, lstm_ranges, op_ranges=op_ranges, named_ranges=named_ranges,
                 weight_grids=grids)


def _all_cells(layer):
    return [cell for rnn in _graph.directions(layer) for cell in _graph.cells(rnn)]


# ------------------------------------------------------------------------------------------------
# Recurrent layers -> DeployedRNN
# ------------------------------------------------------------------------------------------------


def _recurrent_spec(model, layer, layer_plan, qat_ranges):
    """The `RecurrentSpec` of a (QAT or float) recurrent layer, and the `LSTMRanges` of its fused cells."""
    outer = _graph.inner(layer)
    rnns = _graph.directions(layer)
    weights = iter(_cell_weights(layer))
    plans = iter(layer_plan.cells)
    directions = []
    for rnn in rnns:
        cells = []
        for cell in _graph.cells(rnn):
            cell_plan = next(plans)
            assert cell_plan.deploy != BLOCKED
            kernel, recurrent_kernel = next(weights)
            cells.append(_cell_spec(cell, cell_plan.deploy, kernel, recurrent_kernel, qat_ranges))
        directions.append(DirectionSpec(cells, bool(rnn.go_backwards), bool(rnn.return_sequences)))
    bidirectional = isinstance(outer, keras.layers.Bidirectional)
    merge_mode = outer.merge_mode if bidirectional else None
    if bidirectional and merge_mode == "concat":
        _share_output_range([d.cells[-1] for d in directions])
    structure = tf.nest.map_structure(lambda _: 0, _plain(_graph.nodes(model, layer)[0].outputs))
    spec = RecurrentSpec(directions, bidirectional, merge_mode, bool(getattr(outer, "return_state", False)), structure,
                         time_reversal=layer_plan.time_reversal)
    ranges = [
        LSTMRanges(np.ascontiguousarray(np.split(c.kernel, 4, axis=1)[1].T), c.output_range, c.cell_bound, c.cell_clip)
        for d in directions for c in d.cells if c.deploy == FUSED and qat_ranges
    ]
    return spec, ranges


def _plain(structure):
    """Keras' ListWrapper / tuple nests as plain lists, for tf.nest."""
    if isinstance(structure, (list, tuple)) or type(structure).__name__ == "ListWrapper":
        return [_plain(s) for s in structure]
    return structure


def _share_output_range(cells):
    """One range for outputs that meet in a CONCATENATION (TFLite's int8 concat has one scale)."""
    ranges = [c.output_range for c in cells]
    if any(r is None for r in ranges):
        for c in cells:
            c.output_range = None
        return
    union = (min(r[0] for r in ranges), max(r[1] for r in ranges))
    for c in cells:
        c.output_range = union


def _cell_weights(layer):
    """[(kernel, recurrent_kernel)] of every cell (forward then backward, stacks in order), as QAT uses them."""
    cells = _all_cells(layer)
    if not _graph.is_quantize_wrapper(layer):
        return [(c.kernel.numpy(), c.recurrent_kernel.numpy()) for c in cells]
    values = [value for _, value in qat_weight_values(layer)]
    if len(values) != 2 * len(cells):
        raise ExportError(f"Layer '{layer.layer.name}': expected a quantized kernel and recurrent kernel per cell "
                          f"({2 * len(cells)} weights), found {len(values)}.")
    return list(zip(values[0::2], values[1::2]))


def _cell_spec(cell, deploy, kernel, recurrent_kernel, qat_ranges):
    from lstm_transforms.cells import _QuantizedCellMixin
    from lstm_transforms.quantizers import asymmetric_bounds, power_of_two_bound

    kind = _graph.cell_kind(cell)
    bias = np.asarray(cell.bias.numpy(), np.float32) if getattr(cell, "use_bias", True) else None
    spec = CellSpec(kind, deploy, int(cell.units), np.asarray(kernel, np.float32),
                    np.asarray(recurrent_kernel, np.float32), bias, cell.activation,
                    getattr(cell, "recurrent_activation", None), bool(getattr(cell, "reset_after", True)))
    if qat_ranges and isinstance(cell, _QuantizedCellMixin) and cell.full_quantization:
        lo, hi = asymmetric_bounds(cell.quant_output_min, cell.quant_output_max)
        spec.output_range = (float(lo), float(hi))
        if kind in ("gru", "simple_rnn"):
            spec.ranges = {point: tuple(float(v) for v in asymmetric_bounds(*cell.learned_range(point)))
                           for point in cell.learned_points if point != "output"}
        if kind == "lstm":
            spec.cell_bound = float(power_of_two_bound(cell.quant_cell_max_abs))
            spec.cell_clip = float(cell.options.cell_clip)
    return spec
