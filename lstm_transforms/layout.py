"""Layout transform: swap recurrent layers for their quantized subclasses, then wrap them.

Runs after tfmot's own layout transform (Conv/BN folding etc.). Recurrent layers annotated without
a QuantizeConfig, or with an `RNNQuantizeConfig`, are swapped; a layer with any other config of the
user's is kept as it is. Recurrent and mask-carrying layers are wrapped here in
``MaskingQuantizeWrapper`` (a ``QuantizeWrapperV2``); tfmot's ``quantize_apply`` keeps wrappers it
finds and wraps the rest.
"""

from tensorflow_model_optimization.python.core.quantization.keras.quantize_layout_transform import (
    QuantizeLayoutTransform,
)

from lstm_transforms._keras import keras
from lstm_transforms.cells import QUANTIZED_CELLS
from lstm_transforms.configs import RNNQuantizeConfig
from lstm_transforms.options import QuantOptions
from lstm_transforms.recurrent import QUANTIZED_LAYERS, QuantizedRNN
from lstm_transforms.registry import check_layer, is_recurrent
from lstm_transforms.serialization import custom_objects
from lstm_transforms.wrappers import MaskingQuantizeWrapper

__all__ = ["RNNLayoutTransform"]

_LAYERS = {float_class.__name__: cls for float_class, cls in QUANTIZED_LAYERS.items()}
_CELLS = {float_class.__name__: cls for float_class, cls in QUANTIZED_CELLS.items()}


def _swap(serialized, table, options):
    cls = table[serialized["class_name"]]
    config = dict(serialized["config"])
    if cls is not QuantizedRNN:  # the quantized cells and the layers that build one take the options
        config.update(options.to_config())
    else:
        config["cell"] = _swap_cell(config["cell"], options)
    return {"class_name": cls.__name__, "config": config, "module": cls.__module__, "registered_name": cls.__name__}


def _swap_cell(serialized, options):
    name = serialized["class_name"]
    if name in _CELLS:
        return _swap(serialized, _CELLS, options)
    if name == "StackedRNNCells":
        config = dict(serialized["config"])
        config["cells"] = [_swap_cell(c, options) for c in config["cells"]]
        return {**serialized, "config": config}
    return serialized  # a registered user cell: quantized by its own QuantizeConfig


def quantized_layer_config(serialized, options: QuantOptions):
    """The serialized quantized version of a serialized stock recurrent layer."""
    name = serialized["class_name"]
    if name == "Bidirectional":
        config = dict(serialized["config"])
        config["layer"] = quantized_layer_config(config["layer"], options)
        if config.get("backward_layer"):
            config["backward_layer"] = quantized_layer_config(config["backward_layer"], options)
        return {**serialized, "config": config}
    if name in _LAYERS:
        return _swap(serialized, _LAYERS, options)
    return serialized


def _float_weights(layer):
    return [w for w in layer.weights if "quant_" not in w.name.split("/")[-1]]


def swap_recurrent_layers(model, layer_names, options):
    """Clone `model`, replacing the named recurrent layers by quantized ones with the same weights."""
    swapped = {}

    def clone(layer):
        if layer.name not in layer_names:
            return layer
        config = quantized_layer_config(keras.layers.serialize(layer), options)
        with keras.utils.custom_object_scope(custom_objects()):
            new = keras.layers.deserialize(config)
        swapped[layer.name] = (layer, new)
        return new

    new_model = keras.models.clone_model(model, clone_function=clone)
    for old, new in swapped.values():
        targets = _float_weights(new)
        values = old.get_weights()
        if len(targets) != len(values):
            raise RuntimeError(f"Layer '{old.name}': weight layout changed while quantizing ({len(values)} -> {len(targets)})")
        keras.backend.batch_set_value(list(zip(targets, values)))
    return new_model


def _carries_mask(layer):
    try:
        return getattr(layer.output, "_keras_mask", None) is not None
    except AttributeError:  # shared layer: several outputs
        return any(getattr(node.outputs, "_keras_mask", None) is not None for node in layer._inbound_nodes)


def wrap_layers(model, layer_quantize_map, registry):
    """Wrap annotated recurrent layers, and layers that produce or pass on a mask, right now."""
    names = {
        layer.name
        for layer in model.layers
        if layer.name in layer_quantize_map
        and not isinstance(layer, keras.layers.InputLayer)
        and (is_recurrent(layer) or _carries_mask(layer))
    }
    if not names:
        return model

    def clone(layer):
        if layer.name not in names:
            return layer
        config = layer_quantize_map[layer.name].get("quantize_config") or registry.get_quantize_config(layer)
        return MaskingQuantizeWrapper(layer, config)

    return keras.models.clone_model(model, clone_function=clone)


class RNNLayoutTransform(QuantizeLayoutTransform):
    """tfmot's layout transform, then the recurrent-layer swap and mask-preserving wrappers."""

    def __init__(self, base_transform, quant_options: QuantOptions, registry):
        self.base_transform = base_transform
        self.quant_options = quant_options
        self.registry = registry

    def apply(self, model, layer_quantize_map):
        # tfmot would put a float fake-quant after every input, integer token ids included.
        for layer in model.layers:
            if isinstance(layer, keras.layers.InputLayer) and not keras.backend.dtype(layer.output).startswith("float"):
                layer_quantize_map.pop(layer.name, None)
        model, layer_quantize_map = self.base_transform.apply(model, layer_quantize_map)
        names = set()
        for layer in model.layers:
            entry = layer_quantize_map.get(layer.name)
            if entry is None:
                continue
            config = entry.get("quantize_config")
            if config is not None and not isinstance(config, RNNQuantizeConfig):
                continue  # the user's own config: the layer stays as it is
            check_layer(layer)
            if is_recurrent(layer):
                names.add(layer.name)
        if names:
            model = swap_recurrent_layers(model, names, self.quant_options)
        return wrap_layers(model, layer_quantize_map, self.registry), layer_quantize_map
