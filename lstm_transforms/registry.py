"""What is quantized: recurrent layers and their cells, user cells, and delegation to tfmot.

tfmot's ``quantize_apply`` relies on two registry methods, ``supports(layer)`` and
``get_quantize_config(layer)``; the base class only declares the second. Both are explicit here.
"""

import copy

from tensorflow_model_optimization.python.core.quantization.keras.quantize_config import QuantizeConfig
from tensorflow_model_optimization.python.core.quantization.keras.quantize_registry import QuantizeRegistry

from tensorflow_model_optimization.python.core.quantization.keras.default_8bit.default_8bit_quantize_registry import (
    Default8BitQuantizeConfig,
)

from lstm_transforms._keras import keras
from lstm_transforms.cells import _QuantizedCellMixin
from lstm_transforms.configs import QuantizedCellConfig, RNNQuantizeConfig, TimeDistributedQuantizeConfig
from lstm_transforms.walk import cells_of

__all__ = [
    "RNNQuantizeRegistry",
    "UnsupportedLayerError",
    "register_cell",
    "unregister_cell",
    "registered_cells",
    "is_recurrent",
    "check_layer",
]

BUILTIN_CELLS = (keras.layers.LSTMCell, keras.layers.GRUCell, keras.layers.SimpleRNNCell)

_USER_CELLS = {}


class UnsupportedLayerError(ValueError):
    """A layer lstm_transforms cannot quantize; the message names the layer and the fix."""


def register_cell(cell_class, quantize_config):
    """Make `cell_class` quantizable inside `RNN(...)`, `StackedRNNCells` and `Bidirectional`.

    `quantize_config` is a tfmot `QuantizeConfig` written against the *cell* (its weights and
    activation attributes); it is copied for every cell instance it quantizes.
    """
    if not (isinstance(cell_class, type) and issubclass(cell_class, keras.layers.Layer)):
        raise TypeError(f"register_cell expects a tf-keras Layer subclass (an RNN cell), got {cell_class!r}")
    if not isinstance(quantize_config, QuantizeConfig):
        raise TypeError(
            f"register_cell({cell_class.__name__}, ...) expects a tfmot QuantizeConfig instance, "
            f"got {type(quantize_config).__name__}"
        )
    _USER_CELLS[cell_class] = quantize_config


def unregister_cell(cell_class):
    """Undo `register_cell(cell_class, ...)`; unknown classes are ignored."""
    _USER_CELLS.pop(cell_class, None)


def registered_cells():
    """A copy of the user cell table: {cell class: QuantizeConfig}."""
    return dict(_USER_CELLS)


def is_recurrent(layer):
    return isinstance(layer, (keras.layers.RNN, keras.layers.Bidirectional))


def _user_config(cell):
    for klass in type(cell).__mro__:
        if klass in _USER_CELLS:
            return copy.deepcopy(_USER_CELLS[klass])
    return None


def check_cells(layer):
    """Raise UnsupportedLayerError unless every cell of `layer` is built-in or registered."""
    for cell in cells_of(layer):
        if type(cell) in BUILTIN_CELLS or isinstance(cell, _QuantizedCellMixin) or _user_config(cell):
            continue
        name = type(cell).__name__
        raise UnsupportedLayerError(
            f"Layer '{layer.name}' ({type(layer).__name__}) uses cell {name}, which lstm_transforms "
            f"cannot quantize. Register it first: lstm_transforms.register_cell({name}, "
            f"YourQuantizeConfig()), where YourQuantizeConfig is a tfmot QuantizeConfig for the cell."
        )


def check_layer(layer):
    """Raise UnsupportedLayerError for a recurrent layer lstm_transforms cannot quantize."""
    if isinstance(layer, keras.layers.TimeDistributed) and is_recurrent(layer.layer):
        raise UnsupportedLayerError(
            f"Layer '{layer.name}' is TimeDistributed({type(layer.layer).__name__}), which lstm_transforms "
            "cannot quantize (TFLite has no integer kernel for a recurrent layer mapped over an extra axis). "
            "Fold the outer axis into the batch instead: Reshape to (batch * outer, time, features), call the "
            "recurrent layer directly, and Reshape back."
        )
    if is_recurrent(layer):
        check_cells(layer)


def cell_quantize_config(cell, layer, weight_bits):
    if isinstance(cell, _QuantizedCellMixin):
        return QuantizedCellConfig(cell.NUM_GATES, weight_bits)
    config = _user_config(cell)
    if config is not None:
        return config
    if type(cell) in BUILTIN_CELLS:
        raise UnsupportedLayerError(
            f"Layer '{layer.name}' still holds a float {type(cell).__name__}: quantize it through "
            "lstm_transforms.RNNQuantizeScheme (its layout transform swaps in the quantized cells)."
        )
    check_cells(layer)
    raise AssertionError("unreachable")


class RNNQuantizeRegistry(QuantizeRegistry):
    """Recurrent layers and lstm_transforms' extra layers first; everything else to tfmot's registry."""

    def __init__(self, base_registry, weight_bits=8, extra_config=None):
        self.base_registry = base_registry
        self.weight_bits = weight_bits
        self._extra_config = extra_config or (lambda layer: None)

    def supports(self, layer):
        if is_recurrent(layer):
            return True  # unsupported cells get a precise error from get_quantize_config
        if isinstance(layer, keras.layers.TimeDistributed):
            return not is_recurrent(layer.layer) and self.supports(layer.layer)
        if type(layer) is keras.layers.Embedding:
            return True
        if self._extra_config(layer) is not None:
            return True
        return self.base_registry.supports(layer)

    def get_quantize_config(self, layer):
        if is_recurrent(layer):
            check_cells(layer)
            return RNNQuantizeConfig([cell_quantize_config(c, layer, self.weight_bits) for c in cells_of(layer)])
        if isinstance(layer, keras.layers.TimeDistributed):
            check_layer(layer)
            return TimeDistributedQuantizeConfig(self.get_quantize_config(layer.layer))
        if type(layer) is keras.layers.Embedding:
            # TFLite GATHER: int8 table, the output keeps the table's scale (no output quantizer).
            return Default8BitQuantizeConfig(["embeddings"], [], False)
        config = self._extra_config(layer)
        if config is not None:
            return config
        return self.base_registry.get_quantize_config(layer)
