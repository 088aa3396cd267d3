"""What the export stages read off a Keras model: wrappers, recurrent directions and cells, tensor use.

Sublayers and cells come from the package's one walker (`lstm_transforms.walk`).
"""

from __future__ import annotations

from tensorflow_model_optimization.python.core.quantization.keras import quantize_layer as _tfmot_quantize_layer

from lstm_transforms._keras import keras, tf
from lstm_transforms.walk import cells_of
from lstm_transforms.wrappers import is_quantize_wrapper

__all__ = [
    "is_quantize_wrapper",
    "is_quantize_layer",
    "inner",
    "is_recurrent",
    "directions",
    "cells",
    "cell_kind",
    "time_steps",
    "consumed_tensors",
    "output_tensors",
    "input_tensors",
    "mask_source",
    "nodes",
]


def is_quantize_layer(layer):
    return isinstance(layer, _tfmot_quantize_layer.QuantizeLayer)


def inner(layer):
    """The layer a quantize wrapper holds, or the layer itself."""
    return layer.layer if is_quantize_wrapper(layer) else layer


def is_recurrent(layer):
    layer = inner(layer)
    return isinstance(layer, (keras.layers.RNN, keras.layers.Bidirectional))


def directions(layer):
    """The RNN layers of a recurrent layer: [layer], or [forward, backward] of a Bidirectional."""
    layer = inner(layer)
    if isinstance(layer, keras.layers.Bidirectional):
        return [layer.forward_layer, layer.backward_layer]
    return [layer]


def cells(rnn):
    """The cells an RNN layer runs, first to last (a StackedRNNCells flattened)."""
    return cells_of(rnn)


def cell_kind(cell):
    """'lstm', 'gru', 'simple_rnn' for the built-in cells (and their quantized versions), else 'custom'."""
    from lstm_transforms.cells import QuantizedGRUCell, QuantizedLSTMCell, QuantizedSimpleRNNCell

    kinds = {
        keras.layers.LSTMCell: "lstm", QuantizedLSTMCell: "lstm",
        keras.layers.GRUCell: "gru", QuantizedGRUCell: "gru",
        keras.layers.SimpleRNNCell: "simple_rnn", QuantizedSimpleRNNCell: "simple_rnn",
    }
    return kinds.get(type(cell), "custom")


def time_steps(layer):
    """The fixed number of time steps of the layer's (first) input, or None."""
    try:
        shape = layer.input_shape
    except (AttributeError, RuntimeError):  # a shared layer: take its first call
        shape = layer.get_input_shape_at(0)
    if isinstance(shape, list):
        shape = shape[0]
    return shape[1] if shape is not None and len(shape) > 1 else None


def nodes(model, layer):
    """The calls of `layer` that belong to `model` (a layer reused by another model has more)."""
    keys = getattr(model, "_network_nodes", None)
    if keys is None:
        return list(layer._inbound_nodes)
    return [node for k, node in enumerate(layer._inbound_nodes) if f"{layer.name}_ib-{k}" in keys]


def output_tensors(model, layer):
    """The flat output tensors of the layer's first call in `model`."""
    found = nodes(model, layer)
    return tf.nest.flatten(found[0].outputs) if found else []


def input_tensors(model, layer):
    """The flat input tensors of the layer's first call in `model` (more than one: initial states)."""
    found = nodes(model, layer)
    return tf.nest.flatten(found[0].input_tensors) if found else []


def consumed_tensors(model):
    """ids of the Keras tensors that some layer of `model` reads, or that are model outputs."""
    used = {id(t) for t in model.outputs}
    for layer in model.layers:
        for node in nodes(model, layer):
            used.update(id(t) for t in tf.nest.flatten(node.input_tensors))
    return used


def mask_source(model, layer):
    """The name of the layer that made the Keras mask this layer is called with in `model`, or None."""
    for node in nodes(model, layer):
        for tensor in tf.nest.flatten(node.input_tensors):
            if getattr(tensor, "_keras_mask", None) is not None:
                history = getattr(tensor, "_keras_history", None)
                return history.layer.name if history else "?"
    return None
