"""The one list of lstm_transforms' serializable classes, and `quantize_scope` built on it."""

import contextlib

from tensorflow_model_optimization.python.core.quantization.keras import quantize as tfmot_quantize

from lstm_transforms import cells, configs, layer_configs, quantizers, recurrent, wrappers
from lstm_transforms._keras import keras
from lstm_transforms.registry import registered_cells

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
    wrappers.MaskingQuantizeWrapper,
    wrappers.QuantizeWrapperV2,  # replaces tfmot's class of the same name when loading (see its docstring)
    wrappers.QuantizeLayer,  # likewise
    layer_configs.IndexSlice,
    layer_configs.BatchNormQuantizeConfig,
    layer_configs.Conv1DQuantizeConfig,
    layer_configs.Conv1DWeightsQuantizer,
)


def custom_objects():
    """{name: class} for every class a saved lstm_transforms QAT model may reference.

    Each class under its class name, and also under its Keras-registered name if it has one
    (``lstm_transforms>IndexSlice``).
    """
    objects = {}
    for cls in SERIALIZABLE_CLASSES:
        objects[cls.__name__] = cls
        objects[keras.utils.get_registered_name(cls)] = cls
    return objects


@contextlib.contextmanager
def _scope(objects, extra_scopes):
    # tfmot's scope puts its own classes last (they win), so ours go in an inner scope.
    with _tfmot_quantize_scope(*extra_scopes), keras.utils.custom_object_scope(objects, *extra_scopes):
        yield


def quantize_scope(*extra_objects):
    """Like tfmot's `quantize_scope`, with lstm_transforms' classes (and the registered cells' configs).

    `extra_objects` are dicts {name: class} or classes; use it for your own cells and configs.
    Use it to load `.h5`, SavedModel and `.keras` files of QAT models.
    """
    objects = custom_objects()
    for cell_class, config in registered_cells().items():
        objects[cell_class.__name__] = cell_class
        objects[type(config).__name__] = type(config)
    scopes = tuple(extra if isinstance(extra, dict) else {extra.__name__: extra} for extra in extra_objects)
    return _scope(objects, scopes)
