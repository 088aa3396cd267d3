"""QuantizeConfigs for recurrent layers: which weights of which cell get which quantizer.

``RNNQuantizeConfig`` is the config tfmot's QuantizeWrapper sees for a whole recurrent layer
(LSTM, GRU, SimpleRNN, RNN, Bidirectional). It composes one config per cell, in the order of
``walk.cells_of(layer)``, and hands each cell its own weights and activations, like tfmot's
``Default8BitQuantizeConfigRNN`` but for stacked, bidirectional and user cells too.
"""

from tensorflow_model_optimization.python.core.quantization.keras.quantize_config import QuantizeConfig

from lstm_transforms._keras import keras
from lstm_transforms.quantizers import PerGateWeightQuantizer
from lstm_transforms.walk import cells_of

__all__ = ["QuantizedCellConfig", "RNNQuantizeConfig", "TimeDistributedQuantizeConfig"]


def _serialize(obj):
    return keras.utils.serialize_keras_object(obj)


def _deserialize(config):
    """A config given as itself or as its serialized dict (what `from_config` receives)."""
    return keras.utils.deserialize_keras_object(config) if isinstance(config, dict) else config


class _ConfigByValue(QuantizeConfig):
    """Equal when of the same class with the same `get_config()` (tfmot's `from_config` rebuilds it)."""

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __ne__(self, other):
        return not self == other


class QuantizedCellConfig(_ConfigByValue):
    """Config for the built-in quantized cells: kernel and recurrent kernel, one scale per gate.

    The cell's activation quantization points live in the cell itself (``cells.py``): they sit
    inside the time loop, where tfmot's activation wrappers cannot reach.
    """

    def __init__(self, num_gates, weight_bits=8):
        self.num_gates = int(num_gates)
        self.weight_bits = int(weight_bits)

    def _quantizer(self):
        return PerGateWeightQuantizer(self.num_gates, self.weight_bits)

    def get_weights_and_quantizers(self, cell):
        return [(cell.kernel, self._quantizer()), (cell.recurrent_kernel, self._quantizer())]

    def set_quantize_weights(self, cell, quantize_weights):
        if len(quantize_weights) != 2:
            raise ValueError(f"{type(cell).__name__} expects 2 quantized weights, got {len(quantize_weights)}")
        cell.kernel, cell.recurrent_kernel = quantize_weights

    def get_activations_and_quantizers(self, cell):
        return []

    def set_quantize_activations(self, cell, quantize_activations):
        pass

    def get_output_quantizers(self, cell):
        return []

    def get_config(self):
        return {"num_gates": self.num_gates, "weight_bits": self.weight_bits}


class RNNQuantizeConfig(_ConfigByValue):
    """Quantizes every cell of a recurrent layer with that cell's config (one per cell, in order)."""

    def __init__(self, cell_configs):
        self.cell_configs = [_deserialize(c) for c in cell_configs]

    def _pairs(self, layer):
        cells = cells_of(layer)
        if len(cells) != len(self.cell_configs):
            raise ValueError(
                f"Layer '{layer.name}' has {len(cells)} cells but its RNNQuantizeConfig has "
                f"{len(self.cell_configs)} cell configs."
            )
        return list(zip(cells, self.cell_configs))

    def get_weights_and_quantizers(self, layer):
        return [pair for cell, config in self._pairs(layer) for pair in config.get_weights_and_quantizers(cell)]

    def get_activations_and_quantizers(self, layer):
        return [pair for cell, config in self._pairs(layer) for pair in config.get_activations_and_quantizers(cell)]

    def _share_out(self, layer, tensors, getter):
        """(cell, config, the cell's slice of `tensors`) in cell order; `config.<getter>(cell)` lists one cell's."""
        start = 0
        for cell, config in self._pairs(layer):
            count = len(getattr(config, getter)(cell))
            yield cell, config, tensors[start : start + count]
            start += count

    def set_quantize_weights(self, layer, quantize_weights):
        owned = self._share_out(layer, quantize_weights, "get_weights_and_quantizers")
        for cell, config, weights in owned:
            config.set_quantize_weights(cell, weights)

    def set_quantize_activations(self, layer, quantize_activations):
        owned = self._share_out(layer, quantize_activations, "get_activations_and_quantizers")
        for cell, config, activations in owned:
            config.set_quantize_activations(cell, activations)

    def get_output_quantizers(self, layer):
        # Built-in quantized cells quantize their output (= h(t-1) of the next step) themselves.
        return []

    def get_config(self):
        return {"cell_configs": [_serialize(c) for c in self.cell_configs]}


class TimeDistributedQuantizeConfig(_ConfigByValue):
    """Quantizes the layer inside `TimeDistributed(...)` with that layer's own config."""

    def __init__(self, inner_config):
        self.inner_config = _deserialize(inner_config)

    def get_weights_and_quantizers(self, layer):
        return self.inner_config.get_weights_and_quantizers(layer.layer)

    def get_activations_and_quantizers(self, layer):
        return self.inner_config.get_activations_and_quantizers(layer.layer)

    def set_quantize_weights(self, layer, quantize_weights):
        self.inner_config.set_quantize_weights(layer.layer, quantize_weights)

    def set_quantize_activations(self, layer, quantize_activations):
        self.inner_config.set_quantize_activations(layer.layer, quantize_activations)

    def get_output_quantizers(self, layer):
        return self.inner_config.get_output_quantizers(layer.layer)

    def get_config(self):
        return {"inner_config": _serialize(self.inner_config)}