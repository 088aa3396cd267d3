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
* other quantize wrappers become their stock float layers; BatchNorm, Add and the other tfmot
  outputs without a kernel keep their QAT range as a fixed `FakeQuant` (not into a Concatenate:
  the converter would push that range onto the other inputs and clip them); `QuantizeLayer`s
  become identities.

The other QAT ranges travel next to the model (`Baked`) and are written into the converter's
calibration statistics by the child process (`convert.py`): the model inputs' ranges; per fused
LSTM its output (= hidden state) range, cell-state bound and cell clip (a `FakeQuant` around a fused
LSTM makes the converter fail with "Failed to duplicate values for the stateful op", or give its
output, hidden state and hidden intermediate three different scales); the output range of Dense /
Conv layers, found by their kernels; the h range of unrolled steps, found by op name.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lstm_transforms._keras import check_model, keras, tf
from lstm_transforms.export import _graph
from lstm_transforms.export.deployed import CellSpec, DeployedRNN, DirectionSpec, FakeQuant, RecurrentSpec
from lstm_transforms.export.deployed import WithFakeQuant
from lstm_transforms.export.errors import ExportError
from lstm_transforms.export.plan import BLOCKED, FUSED, deployment_plan

__all__ = ["bake", "baked_float_model", "Baked", "LSTMRanges", "OpRange", "WeightGrid", "raise_if_blocked"]


@dataclasses.dataclass
class LSTMRanges:
    """QAT ranges of one fused LSTM, found in the converter's model by its input-to-forget weights."""

    input_to_forget: np.ndarray  # (units, features): TFLite's layout of the forget gate's kernel block
    output: tuple | None  # (lo, hi) of h; None: calibrated
    cell_bound: float | None  # power-of-two bound of c; None: calibrated
    cell_clip: float | None  # CellClip to write; None: the converter's (10)


@dataclasses.dataclass
class OpRange:
    """The QAT output range of a Dense / Conv layer, found in the converter's model by its weights.

    `weights`: the kernel's values, sorted (the converter transposes kernels). The range is the one
    QAT applies to the layer's output: after its activation (relu, linear) or before it (softmax,
    sigmoid, tanh: the op's output is then the pre-activation).
    """

    weights: np.ndarray
    output: tuple


@dataclasses.dataclass
class WeightGrid:
    """A QAT weight tensor whose grid is coarser than the converter's int8 grid (`_flatbuffer.regrid_weights`).

    `values`: the tensor's values, sorted (the converter transposes kernels); `kmax`: the largest
    |k| of its values k * step, per output channel (one entry: per tensor).
    """

    values: np.ndarray
    kmax: list


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
            source = _inbound_layers(model, layer)
            if qat_ranges and len(source) == 1 and id(source[0]) in input_layers:
                input_ranges[input_layers[id(source[0])]] = _quantizer_range(layer.quantizer, layer.quantizer_vars)
                return keras.layers.Activation("linear", name=layer.name)
            # In front of a recurrent layer the converter may calibrate the recurrent input anyway and
            # insert a DEQUANTIZE/QUANTIZE round trip: leave that input range to calibration.
            keep = qat_ranges and not _feeds_recurrent(model, layer)
            fq = _fake_quant(layer.quantizer, layer.quantizer_vars, layer.name) if keep else None
            return fq or keras.layers.Activation("linear", name=layer.name)
        if _graph.is_quantize_wrapper(layer):
            grids.extend(_weight_grids(layer))
        if _graph.is_recurrent(layer) and all(_graph.cell_kind(c) != "custom" for c in _all_cells(layer)):
            spec, ranges = _recurrent_spec(model, layer, model_plan.layer(_graph.inner(layer).name), qat_ranges)
            lstm_ranges.extend(ranges)
            for cell in (c for d in spec.directions for c in d.cells if c.deploy != FUSED and c.output_range):
                cell.tag = f"lt_h{len(named_ranges)}"
                named_ranges[cell.tag] = cell.output_range
            return DeployedRNN(spec, name=_graph.inner(layer).name)
        new = _float_layer(layer)
        pairs.append((layer, new))
        ranges = _op_range(layer) if qat_ranges else []
        op_ranges.extend(ranges)
        fq = _output_fake_quant(model, layer) if qat_ranges and not ranges else None
        return WithFakeQuant(new, fq) if fq is not None else new

    try:
        float_model = keras.models.clone_model(model, clone_function=clone)
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 - name the model-level cause in one line
        raise ExportError(f"Could not rebuild a float model from '{model.name}': {type(e).__name__}: {e}") from e
    for source, new in pairs:
        if new.weights:
            new.set_weights(_baked_weights(source, new))
    return Baked(float_model, input_ranges, lstm_ranges, op_ranges=op_ranges, named_ranges=named_ranges,
                 weight_grids=grids)


def _inbound_layers(model, layer):
    return [inbound for node in _graph.nodes(model, layer) for inbound in tf.nest.flatten(node.inbound_layers)]


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
    spec = RecurrentSpec(directions, bidirectional, merge_mode, bool(getattr(outer, "return_state", False)), structure)
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
    values = [value for _, value in _qat_weight_values(layer)]
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
        if kind == "lstm":
            spec.cell_bound = float(power_of_two_bound(cell.quant_cell_max_abs))
            spec.cell_clip = float(cell.quant_options["quant_cell_clip"])
    return spec


# ------------------------------------------------------------------------------------------------
# Other layers -> their stock float layers with QAT weights
# ------------------------------------------------------------------------------------------------


def _float_class_name(obj_or_cls):
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    fc = getattr(cls, "FLOAT_CLASS", None)
    if fc is None:
        return None
    return fc if isinstance(fc, str) else fc.__name__


def _float_class_map(layer):
    """{class_name: stock class name} for the layer and every nested layer/cell that has FLOAT_CLASS."""
    out, stack, seen = {}, [layer], set()
    while stack:
        obj = stack.pop()
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        name = _float_class_name(obj)
        if name is not None:
            out[type(obj).__name__] = name
        for attr in ("layer", "forward_layer", "backward_layer", "cell"):
            stack.append(getattr(obj, attr, None))
        stack.extend(getattr(obj, "cells", None) or [])
    return out


def _plain_activation(act):
    """The float activation behind tfmot's QuantizeAwareActivation (or the activation itself)."""
    inner = getattr(act, "activation", None)
    if inner is not None and type(act).__name__ in ("QuantizeAwareActivation", "NoOpActivation"):
        return inner
    return act


def _clean_config(config, class_map):
    """Recursively: stock class names for FLOAT_CLASS subclasses, drop `quant_*` keys, plain activations."""
    if isinstance(config, list):
        return [_clean_config(c, class_map) for c in config]
    if not isinstance(config, dict):
        return config
    if "class_name" in config and "config" in config:
        out = dict(config)
        cname = config["class_name"]
        if cname in class_map:
            out["class_name"] = class_map[cname]
            out.pop("module", None)
            out.pop("registered_name", None)
        if cname == "QuantizeAwareActivation":
            return _clean_config(config["config"]["activation"], class_map)
        out["config"] = _clean_config(config["config"], class_map)
        return out
    return {k: _clean_config(v, class_map) for k, v in config.items() if not str(k).startswith("quant_")}


def _qat_weight_values(wrapper):
    """[(variable, value as the QAT layer uses it at inference)] of one quantize wrapper, in order."""
    return [(var, np.asarray(wrapper._make_quantizer_fn(quantizer, var, False, quantizer_vars)()))
            for var, quantizer, quantizer_vars in getattr(wrapper, "_weight_vars", [])]


def _all_variables(layer):
    """Every variable of `layer`, including the ones a quantize wrapper untracked from its inner layer."""
    found = {}
    for var in list(layer.weights) + [v for v, _, _ in getattr(layer, "_weight_vars", [])]:
        found.setdefault(var.ref(), var)
    return list(found.values())


def _relative(name, layer_name):
    name = name.split(":")[0]
    prefix = layer_name + "/"
    if name.startswith(prefix):
        while name.startswith(prefix):  # a layer built inside a same-named wrapper: "dense/dense/kernel"
            name = name[len(prefix):]
        return name
    return name.split("/", 1)[-1]


def _baked_weights(source, new_layer):
    """Weights for `new_layer` (float) from `source` (QAT wrapper or plain layer), matched by name."""
    inner = _graph.inner(source)
    qvalues = {var.ref(): value for var, value in _qat_weight_values(source)} if source is not inner else {}
    candidates = {}
    for var in _all_variables(source):
        candidates.setdefault(_relative(var.name, inner.name), []).append(var)
    values = []
    for target in new_layer.weights:
        rel = _relative(target.name, new_layer.name)
        match = [v for v in candidates.get(rel, []) if tuple(v.shape) == tuple(target.shape)]
        if len(match) != 1:
            raise ExportError(
                f"Layer '{inner.name}': cannot find its weight '{rel}' {tuple(target.shape)} in the QAT "
                f"model (candidates: {sorted(candidates)})."
            )
        var = match[0]
        values.append(qvalues[var.ref()] if var.ref() in qvalues else var.numpy())
    return values


def _set_unroll(config, time_dim):
    """unroll=True on an RNN config with a user cell: its own call is converted op by op."""
    if config.get("class_name") in ("RNN", "Bidirectional"):
        config = dict(config, config=dict(config["config"]))
        if config["class_name"] == "Bidirectional":
            config["config"]["layer"] = _set_unroll(config["config"]["layer"], time_dim)
            if config["config"].get("backward_layer"):
                config["config"]["backward_layer"] = _set_unroll(config["config"]["backward_layer"], time_dim)
        else:
            config["config"]["unroll"] = True
    return config


def _float_layer(layer):
    """A fresh stock float layer equivalent to `layer` (a QAT wrapper or a plain layer)."""
    inner = _graph.inner(layer)
    config = {"class_name": type(inner).__name__, "config": inner.get_config()}
    if getattr(inner, "activation", None) is not None and "activation" in config["config"]:
        config["config"]["activation"] = keras.activations.serialize(_plain_activation(inner.activation))
    config = _clean_config(config, _float_class_map(inner))
    if _graph.is_recurrent(inner):
        config = _set_unroll(config, _graph.time_steps(layer))
    try:
        if config["class_name"] == type(inner).__name__:
            return type(inner).from_config(config["config"])
        return keras.layers.deserialize(config)
    except Exception:
        if not inner.weights and inner is layer:
            return inner  # e.g. a Lambda of a Python lambda: weightless, safe to share
        raise


# ------------------------------------------------------------------------------------------------
# QAT activation ranges of non-recurrent layers -> FakeQuant
# ------------------------------------------------------------------------------------------------


def _quantizer_range(quantizer, quantizer_vars):
    """(lo, hi) of a per-tensor tfmot activation quantizer, or None."""
    if quantizer is None or not isinstance(quantizer_vars, dict):
        return None
    lo, hi = quantizer_vars.get("min_var"), quantizer_vars.get("max_var")
    if lo is None or hi is None or getattr(quantizer, "per_axis", False) or np.size(lo.numpy()) != 1:
        return None
    return float(lo.numpy()), float(hi.numpy())


def _fake_quant(quantizer, quantizer_vars, name):
    """A `FakeQuant` with a tfmot activation quantizer's range, or None if not per-tensor.

    Always 8 bits: the device's activations are int8 whatever width QAT simulated (the plan warns).
    """
    bounds = _quantizer_range(quantizer, quantizer_vars)
    if bounds is None:
        return None
    return FakeQuant(*bounds, 8, getattr(quantizer, "narrow_range", False), name=name)


def _weight_grids(wrapper):
    """[WeightGrid] for the wrapper's weights whose QAT grid has fewer steps than int8's 127 a side.

    Per-gate recurrent weights (one max-abs scale per gate block): each block, when below 8 bits.
    tfmot's symmetric weight quantizers (Dense per tensor, Conv per channel): when below 8 bits, or
    when the weights shrank after the range was last read (then their largest |k| is below 127).
    """
    from tensorflow_model_optimization.python.core.quantization.keras.quantizers import LastValueQuantizer

    from lstm_transforms.quantizers import PerGateWeightQuantizer

    grids = []
    for (var, quantizer, qvars), (_, value) in zip(wrapper._weight_vars, _qat_weight_values(wrapper)):
        bits = getattr(quantizer, "num_bits", 8)
        top = 2 ** (bits - 1) - 1
        if isinstance(quantizer, PerGateWeightQuantizer):
            if bits < 8:
                grids += [WeightGrid(np.sort(block.ravel()), [top])
                          for block in np.split(value, quantizer.num_gates, axis=-1)]
        elif (isinstance(quantizer, LastValueQuantizer) and quantizer.symmetric and quantizer.narrow_range
              and "max_var" in (qvars or {}) and value.ndim >= 2):
            bound = np.maximum(np.abs(qvars["min_var"].numpy()), np.abs(qvars["max_var"].numpy()))
            step = np.maximum(bound, 1e-12) / top
            channels = value.reshape(-1, value.shape[-1]) if quantizer.per_axis else value.reshape(-1, 1)
            kmax = np.round(np.abs(channels).max(axis=0) / step).astype(int)
            if bits < 8 or np.any((kmax < top) & (kmax > 0)):
                grids.append(WeightGrid(np.sort(value.ravel()), [int(k) for k in kmax]))
    return grids


def _op_range(layer):
    """[OpRange] of a quantize wrapper with a kernel and a per-tensor QAT output / pre-activation range."""
    if not _graph.is_quantize_wrapper(layer) or _graph.is_recurrent(layer):
        return []
    kernels = [value for var, value in _qat_weight_values(layer) if var.name.split(":")[0].endswith("kernel")]
    if len(kernels) != 1:
        return []
    bounds = None
    if getattr(layer, "_output_quantizers", None):
        bounds = _quantizer_range(layer._output_quantizers[0], layer._output_quantizer_vars)
    act = getattr(layer.layer, "activation", None)
    if bounds is None and type(act).__name__ == "QuantizeAwareActivation":
        if act._should_post_quantize():
            bounds = _quantizer_range(act.quantizer, act._post_activation_vars)
        elif act._should_pre_quantize():
            bounds = _quantizer_range(act.quantizer, act._pre_activation_vars)
    if bounds is None:
        return []
    return [OpRange(np.sort(np.asarray(kernels[0], np.float32).ravel()), bounds)]


def _output_fake_quant(model, layer):
    """The QAT range a wrapper applies to its output (output quantizer or post-activation), if any.

    None (the range is calibrated) where the output shares its scale with other tensors: after a
    recurrent output (Concatenate, pooling, ...), or into a Concatenate. The converter pushes a fixed
    range onto every tensor of such a group, where it can clip them.
    """
    if (not _graph.is_quantize_wrapper(layer) or _graph.is_recurrent(layer)
            or _shares_scale_with_recurrent(model, layer) or _feeds_concatenation(model, layer)):
        return None
    name = layer.layer.name + "_fake_quant"
    if getattr(layer, "_output_quantizers", None):
        return _fake_quant(layer._output_quantizers[0], layer._output_quantizer_vars, name)
    act = getattr(layer.layer, "activation", None)
    if type(act).__name__ == "QuantizeAwareActivation" and act._should_post_quantize():
        return _fake_quant(act.quantizer, act._post_activation_vars, name)
    return None


# Layers whose TFLite op keeps (or forces) its input's quantization scale on its output.
_SCALE_SHARING = ("Concatenate", "Reshape", "Flatten", "Permute", "Dropout", "MaxPooling1D", "MaxPooling2D",
                  "GlobalMaxPooling1D", "GlobalMaxPooling2D", "Cropping1D", "Cropping2D", "ZeroPadding1D",
                  "ZeroPadding2D", "RepeatVector", "Activation", "Lambda", "TFOpLambda", "SlicingOpLambda",
                  "QuantizeLayer", "SpatialDropout1D")


def _shares_scale_with_recurrent(model, layer, depth=0):
    """Whether `layer`'s output scale is tied (through scale-sharing ops) to a recurrent layer's output."""
    if depth > 50:
        return False
    for inbound in _inbound_layers(model, layer):
        if _graph.is_recurrent(inbound):
            return True
        if (type(_graph.inner(inbound)).__name__ in _SCALE_SHARING
                and _shares_scale_with_recurrent(model, inbound, depth + 1)):
            return True
    return False


def _feeds_concatenation(model, layer, depth=0):
    """Whether `layer`'s output reaches a Concatenate directly or through single-input scale-sharing layers."""
    if depth > 50:
        return False
    members = {id(node) for other in model.layers for node in _graph.nodes(model, other)}
    for node in layer._outbound_nodes:
        if id(node) not in members:
            continue
        out = node.outbound_layer
        name = type(_graph.inner(out)).__name__
        if name == "Concatenate":
            return True
        if name in _SCALE_SHARING and _feeds_concatenation(model, out, depth + 1):
            return True
    return False


def _feeds_recurrent(model, layer, depth=0):
    """Whether `layer`'s output reaches a recurrent layer directly or through scale-sharing layers."""
    if depth > 50:
        return False
    members = {id(node) for other in model.layers for node in _graph.nodes(model, other)}
    for node in layer._outbound_nodes:
        if id(node) not in members:
            continue
        out = node.outbound_layer
        if _graph.is_recurrent(out):
            return True
        if type(_graph.inner(out)).__name__ in _SCALE_SHARING and _feeds_recurrent(model, out, depth + 1):
            return True
    return False
