"""The words of a plan: what QAT quantizes in a layer, and the QAT settings its deployment cannot hold."""

from __future__ import annotations

from lstm_transforms._keras import keras
from lstm_transforms.export import _graph
from lstm_transforms.options import QuantOptions

__all__ = ["describe_quantization", "cell_differences", "tfmot_differences", "display_class"]

def display_class(layer):
    """The user-facing class name: the float class of a quantized layer, Bidirectional(inner)."""
    layer = _graph.inner(layer)
    if isinstance(layer, keras.layers.Bidirectional):
        return f"Bidirectional({display_class(layer.forward_layer)})"
    float_class = getattr(type(layer), "FLOAT_CLASS", None)
    if float_class is not None:
        return float_class if isinstance(float_class, str) else float_class.__name__
    return type(layer).__name__


def cell_differences(rnns, fused, activations):
    """Non-default QAT cell settings that the deployed ops compute differently (one line each).

    `fused`: per cell (forward then backward, stacks in order), whether it deploys as the fused op.
    """
    found = []
    cells = [cell for rnn in rnns for cell in _graph.cells(rnn)]
    for cell, is_fused in zip(cells, fused):
        options = getattr(cell, "options", None)
        if not isinstance(options, QuantOptions) or not options.full:
            continue
        bits = options.activation_bits
        if bits != (16 if activations == "int16" else 8):
            found.append(f"activation_bits={bits}: QAT simulated {bits}-bit activations, the device computes "
                         f"{activations}")
        if is_fused:
            if options.gate_bits != 16:
                found.append(f"gate_bits={options.gate_bits}: the integer LSTM's gates are int16")
            if options.state_bits != 16:
                found.append(f"state_bits={options.state_bits}: the integer LSTM's cell state is int16")
    return list(dict.fromkeys(found))


def tfmot_differences(wrapper, activations):
    """tfmot activation quantizers of another bit width than the deployed activations."""
    want = 16 if activations == "int16" else 8
    found = []
    quantizers = list(getattr(wrapper, "_output_quantizers", None) or [])
    act = getattr(wrapper.layer, "activation", None)
    if type(act).__name__ == "QuantizeAwareActivation":
        quantizers.append(act.quantizer)
    for q in quantizers:
        bits = getattr(q, "num_bits", 8)
        if bits != want:
            found.append(f"activation_bits={bits}: QAT simulated {bits}-bit activations, the device computes "
                         f"{activations}")
    return list(dict.fromkeys(found))


def _quantizer_text(quantizer):
    name = type(quantizer).__name__
    bits = getattr(quantizer, "num_bits", None)
    if name == "PerGateWeightQuantizer":
        how = f"per-gate ({quantizer.num_gates} blocks)"
    elif getattr(quantizer, "per_axis", False):
        how = "per-channel"
    else:
        how = "per-tensor"
    sym = ", symmetric" if getattr(quantizer, "symmetric", name == "PerGateWeightQuantizer") else ""
    low = " (stored on its grid in int8)" if bits is not None and bits < 8 else ""
    return f"int{bits or 8} {how}{sym}{low}"


def describe_quantization(wrapper):
    parts = []
    layer = wrapper.layer
    for var, quantizer, _ in getattr(wrapper, "_weight_vars", []):
        short = var.name.split(":")[0]
        short = short[len(layer.name) + 1:] if short.startswith(layer.name + "/") else short.split("/")[-1]
        parts.append(f"{short}: {_quantizer_text(quantizer)}")
    if any(v.name.split(":")[0].endswith("bias") for v in layer.weights):
        parts.append("bias: float in training, int32 in TFLite")
    act = getattr(layer, "activation", None)
    if type(act).__name__ == "QuantizeAwareActivation":
        if act._should_post_quantize():
            name = getattr(act.activation, "__name__", "act")
            parts.append(f"output ({name}): int8 per-tensor")
        elif act._should_pre_quantize():
            parts.append("pre-activation: int8 per-tensor")
    if getattr(wrapper, "_output_quantizers", None):
        parts.append(f"output: {_quantizer_text(wrapper._output_quantizers[0])}")
    if _graph.is_recurrent(wrapper):
        for rnn in _graph.directions(wrapper)[:1]:
            for cell in _graph.cells(rnn):
                parts.append(_describe_cell(cell))
    return parts or ["no tensors quantized here (pass-through)"]


def _describe_cell(cell):
    options = getattr(cell, "options", None)
    options = options if isinstance(options, QuantOptions) else QuantOptions()
    name = display_class(cell)
    if not options.full:
        return f"{name}: weights only (activations float in QAT, calibrated at export)"
    bits = options.activation_bits
    if _graph.cell_kind(cell) == "lstm":
        clip = options.cell_clip
        clip_text = f"clipped to +-{clip:g}" if clip else "not clipped"
        return (f"{name}: output and h(t-1) int{bits} (one range), gate activations int{options.gate_bits}, "
                f"cell state int{options.state_bits} with a power-of-two scale, {clip_text} "
                "(TFLite integer LSTM)")
    if _graph.cell_kind(cell) in ("gru", "simple_rnn"):
        return (f"{name}: every tensor of the deployed int{bits} step (projections, sums, products, h = h(t-1)) "
                "on its own learned range, tanh / sigmoid on TFLite's fixed grids")
    return f"{name}: output and h(t-1) int{bits} (one range)"
