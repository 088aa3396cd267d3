"""QuantizeConfigs for non-recurrent layers that stock tfmot rejects, and the layers we add.

`extra_quantize_config(layer)` is meant to be asked *before* tfmot's
`Default8BitQuantizeRegistry` (through a registry's ``supports(layer)`` /
``get_quantize_config(layer)``, the contract `quantize_apply` really uses):

- `BatchNormalization` that tfmot did not fold into a convolution (after a Conv2D with its own
  activation, after a Conv1D, after a pooling layer, ...): TFLite emits it as an affine op
  (``MUL`` by gamma/sqrt(var+eps), ``ADD`` of beta-mean*scale) followed by a requantization of its
  output, so we fake-quantize the output (`BatchNormQuantizeConfig`). The folded constants are
  quantized by the converter and not simulated. tfmot's own Conv2D->BN(->ReLU) fold is untouched:
  its layout transform puts a config for the folded BN in the layer quantize map, and
  `quantize_apply` only asks the registry for layers whose map entry has no config.
- `Conv1D`: like tfmot's Conv2D (per-channel symmetric weights, activation quantized); the
  kernel is fake-quantized in the ``(1, width, in, out)`` layout TFLite's CONV_2D uses.
- `IndexSlice` (made by `lstm_transforms.transforms` from ``x[:, -1, :]``-style slices),
  `Masking` (zeroes padded steps and carries the mask to the recurrent layer) and `MaxPooling1D`
  (TFLite's MAX_POOL_2D keeps its input's scale): pass quantization through, like tfmot's `Reshape`.

The classes here are serializable through `lstm_transforms.quantize_scope` (the list lives in
``serialization.py``).
"""

from __future__ import annotations

from tensorflow_model_optimization.python.core.quantization.keras import quantize_config as _qc
from tensorflow_model_optimization.python.core.quantization.keras import quantizers as _quantizers
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
    default_8bit_quantize_registry as _registry,
)
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
    default_8bit_quantizers as _default_quantizers,
)

from lstm_transforms._keras import keras, tf

__all__ = [
    "IndexSlice",
    "BatchNormQuantizeConfig",
    "Conv1DQuantizeConfig",
    "Conv1DWeightsQuantizer",
    "extra_quantize_config",
]


@keras.utils.register_keras_serializable(package="lstm_transforms")
class IndexSlice(keras.layers.Layer):
    """``x[:, index]`` along one non-batch `axis` (``x[:, -1, :]``, ``x[..., 0]``), dropping that axis."""

    def __init__(self, axis, index, **kwargs):
        super().__init__(**kwargs)
        self.axis = int(axis)
        self.index = int(index)

    def _key(self, rank):
        axis = self.axis % rank
        if axis == 0:
            raise ValueError(f"{self.name}: IndexSlice cannot slice the batch axis.")
        return (slice(None),) * axis + (self.index,)

    def call(self, inputs):
        return inputs[self._key(inputs.shape.rank)]

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        del shape[self.axis % len(shape)]
        return tuple(shape)

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "index": self.index}


class BatchNormQuantizeConfig(_qc.QuantizeConfig):
    """A standalone BatchNormalization: no weight fake-quant, 8-bit output (TFLite's MUL+ADD)."""

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return [_quantizers.MovingAverageQuantizer(num_bits=8, per_axis=False, symmetric=False, narrow_range=False)]

    def get_config(self):
        return {}

    def __eq__(self, other):
        return type(other) is type(self)


class Conv1DWeightsQuantizer(_default_quantizers.Default8BitConvWeightsQuantizer):
    """Per-output-channel symmetric 8-bit weights for a ``(width, in, out)`` Conv1D kernel.

    tfmot's per-channel fake quant only handles rank-2 and rank-4 tensors; TFLite runs Conv1D as a
    CONV_2D on the kernel expanded to ``(1, width, in, out)``, so quantize exactly that.
    """

    def __call__(self, inputs, training, weights, **kwargs):
        quantized = super().__call__(tf.expand_dims(inputs, 0), training, weights, **kwargs)
        return tf.squeeze(quantized, 0)

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls()


class Conv1DQuantizeConfig(_registry.Default8BitConvQuantizeConfig):
    """Conv1D quantized like tfmot's Conv2D: per-channel weights, quantized activation."""

    def __init__(self, weight_attrs=("kernel",), activation_attrs=("activation",), quantize_output=False):
        super().__init__(list(weight_attrs), list(activation_attrs), quantize_output)
        self.weight_quantizer = Conv1DWeightsQuantizer()


def _pass_through():
    # The config tfmot itself gives Reshape/Flatten/Permute: nothing quantized inside the layer.
    return _registry.Default8BitQuantizeConfig([], [], False)


def extra_quantize_config(layer):
    """A QuantizeConfig for `layer` if this module supports it, else None (ask tfmot's registry)."""
    kind = type(layer)
    if kind in (keras.layers.BatchNormalization,):
        return BatchNormQuantizeConfig()
    if kind is keras.layers.Conv1D:
        return Conv1DQuantizeConfig()
    if kind in (IndexSlice, keras.layers.Masking, keras.layers.MaxPooling1D):
        return _pass_through()
    return None
