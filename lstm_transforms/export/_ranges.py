"""The QAT ranges and weight grids of a model, as `bake` hands them to the converter.

`FakeQuant` ops for tfmot outputs without a kernel; `OpRange` (Dense / Conv outputs, found by
kernel), `LSTMRanges` (fused LSTMs, found by weights) and `WeightGrid` (weights on a coarser grid
than int8's) for the child process, which writes them into the converter's statistics.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lstm_transforms._keras import tf
from lstm_transforms.export import _graph
from lstm_transforms.export._float_layers import qat_weight_values
from lstm_transforms.export.deployed import FakeQuant

__all__ = ["LSTMRanges", "OpRange", "WeightGrid", "quantizer_range", "fake_quant", "weight_grids", "op_range",
           "output_fake_quant", "feeds_recurrent", "inbound_layers"]


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


# ------------------------------------------------------------------------------------------------


def quantizer_range(quantizer, quantizer_vars):
    """(lo, hi) of a per-tensor tfmot activation quantizer, or None."""
    if quantizer is None or not isinstance(quantizer_vars, dict):
        return None
    lo, hi = quantizer_vars.get("min_var"), quantizer_vars.get("max_var")
    if lo is None or hi is None or getattr(quantizer, "per_axis", False) or np.size(lo.numpy()) != 1:
        return None
    return float(lo.numpy()), float(hi.numpy())


def fake_quant(quantizer, quantizer_vars, name):
    """A `FakeQuant` with a tfmot activation quantizer's range, or None if not per-tensor.

    Always 8 bits: the device's activations are int8 whatever width QAT simulated (the plan warns).
    """
    bounds = quantizer_range(quantizer, quantizer_vars)
    if bounds is None:
        return None
    return FakeQuant(*bounds, 8, getattr(quantizer, "narrow_range", False), name=name)


def weight_grids(wrapper):
    """[WeightGrid] for the wrapper's weights whose QAT grid has fewer steps than int8's 127 a side.

    Per-gate recurrent weights (one max-abs scale per gate block): each block, when below 8 bits.
    tfmot's symmetric weight quantizers (Dense per tensor, Conv per channel): when below 8 bits, or
    when the weights shrank after the range was last read (then their largest |k| is below 127).
    """
    from tensorflow_model_optimization.python.core.quantization.keras.quantizers import LastValueQuantizer

    from lstm_transforms.quantizers import PerGateWeightQuantizer

    grids = []
    for (var, quantizer, qvars), (_, value) in zip(wrapper._weight_vars, qat_weight_values(wrapper)):
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


def op_range(layer):
    """[OpRange] of a quantize wrapper with a kernel and a per-tensor QAT output / pre-activation range."""
    if not _graph.is_quantize_wrapper(layer) or _graph.is_recurrent(layer):
        return []
    kernels = [value for var, value in qat_weight_values(layer) if var.name.split(":")[0].endswith("kernel")]
    if len(kernels) != 1:
        return []
    bounds = None
    if getattr(layer, "_output_quantizers", None):
        bounds = quantizer_range(layer._output_quantizers[0], layer._output_quantizer_vars)
    act = getattr(layer.layer, "activation", None)
    if bounds is None and type(act).__name__ == "QuantizeAwareActivation":
        if act._should_post_quantize():
            bounds = quantizer_range(act.quantizer, act._post_activation_vars)
        elif act._should_pre_quantize():
            bounds = quantizer_range(act.quantizer, act._pre_activation_vars)
    if bounds is None:
        return []
    return [OpRange(np.sort(np.asarray(kernels[0], np.float32).ravel()), bounds)]


def output_fake_quant(model, layer):
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
        return fake_quant(layer._output_quantizers[0], layer._output_quantizer_vars, name)
    act = getattr(layer.layer, "activation", None)
    if type(act).__name__ == "QuantizeAwareActivation" and act._should_post_quantize():
        return fake_quant(act.quantizer, act._post_activation_vars, name)
    return None


# Layers whose TFLite op keeps (or forces) its input's quantization scale on its output.
_SCALE_SHARING = ("Concatenate", "Reshape", "Flatten", "Permute", "Dropout", "MaxPooling1D", "MaxPooling2D",
                  "GlobalMaxPooling1D", "GlobalMaxPooling2D", "Cropping1D", "Cropping2D", "ZeroPadding1D",
                  "ZeroPadding2D", "RepeatVector", "Activation", "Lambda", "TFOpLambda", "SlicingOpLambda",
                  "QuantizeLayer", "SpatialDropout1D")


def inbound_layers(model, layer):
    return [inbound for node in _graph.nodes(model, layer) for inbound in tf.nest.flatten(node.inbound_layers)]


def _shares_scale_with_recurrent(model, layer, depth=0):
    """Whether `layer`'s output scale is tied (through scale-sharing ops) to a recurrent layer's output."""
    if depth > 50:
        return False
    for inbound in inbound_layers(model, layer):
        if _graph.is_recurrent(inbound):
            return True
        if (type(_graph.inner(inbound)).__name__ in _SCALE_SHARING
                and _shares_scale_with_recurrent(model, inbound, depth + 1)):
            return True
    return False


def _reaches(model, layer, is_target, depth=0):
    """Whether `layer`'s output reaches a layer for which `is_target(layer)` holds, directly or
    through scale-sharing layers (only calls that belong to `model` count)."""
    if depth > 50:
        return False
    members = {id(node) for other in model.layers for node in _graph.nodes(model, other)}
    for node in layer._outbound_nodes:
        if id(node) not in members:
            continue
        out = node.outbound_layer
        if is_target(out):
            return True
        if type(_graph.inner(out)).__name__ in _SCALE_SHARING and _reaches(model, out, is_target, depth + 1):
            return True
    return False


def _feeds_concatenation(model, layer):
    """Whether `layer`'s output reaches a Concatenate directly or through scale-sharing layers."""
    return _reaches(model, layer, lambda out: type(_graph.inner(out)).__name__ == "Concatenate")


def feeds_recurrent(model, layer):
    """Whether `layer`'s output reaches a recurrent layer directly or through scale-sharing layers."""
    return _reaches(model, layer, _graph.is_recurrent)
