"""The one list of lstm_transforms' serializable classes, and `quantize_scope` built on it."""

from tensorflow_model_optimization.python.core.quantization.keras import quantize as tfmot_quantize

from lstm_transforms import cells, configs, layout, quantizers, recurrent

__all__ = ["SERIALIZABLE_CLASSES", "custom_objects", "quantize_scope"]

# tfmot's own scope, captured before install() can replace the module attribute with ours.
_tfmot_quantize_scope = tfmot_quantize.quantize_scope

SERIALIZABLE_CLASSES = (
    cells.QuantizedLSTMCell,
    cells.QuantizedGRUCell,
    cells.QuantizedSimpleRNNCell,
    recurrent.QuantizedLSTM,
    recurrent.QuantizedGRU,
    recurrent.QuantizedSimpleRNN,
    recurrent.QuantizedRNN,
    configs.QuantizedCellConfig,
    configs.RNNQuantizeConfig,
    configs.TimeDistributedQuantizeConfig,
    quantizers.PerGateWeightQuantizer,
    layout.MaskingQuantizeWrapper,
)


def _extra_types():
    from lstm_transforms.layer_configs import extra_types_dict

    return extra_types_dict()


def custom_objects():
    """{name: class} for every class a saved lstm_transforms QAT model may reference."""
    objects = {cls.__name__: cls for cls in SERIALIZABLE_CLASSES}
    objects.update(_extra_types())
    return objects


def quantize_scope(*extra_objects):
    """Like tfmot's `quantize_scope`, with lstm_transforms' classes (and the registered cells' configs).

    `extra_objects` are dicts {name: class} or classes; use it for your own cells and configs.
    """
    from lstm_transforms.registry import registered_cells

    objects = custom_objects()
    for cell_class, config in registered_cells().items():
        objects[cell_class.__name__] = cell_class
        objects[type(config).__name__] = type(config)
    scopes = []
    for extra in extra_objects:
        scopes.append(extra if isinstance(extra, dict) else {extra.__name__: extra})
    return _tfmot_quantize_scope(objects, *scopes)
