"""The quantize wrapper lstm_transforms puts around recurrent and mask-carrying layers."""

from __future__ import annotations

import contextlib

from tensorflow_model_optimization.python.core.quantization.keras import quantize_layer as tfmot_quantize_layer
from tensorflow_model_optimization.python.core.quantization.keras import quantize_wrapper as tfmot_wrapper

from lstm_transforms._keras import keras, tf
from lstm_transforms.recurrent import deferred_range_updates

__all__ = [
    "MaskingQuantizeWrapper",
    "QuantizeWrapperV2",
    "QuantizeLayer",
    "QuantizeConfigError",
    "is_quantize_wrapper",
]


class QuantizeConfigError(ValueError):
    """A user QuantizeConfig failed on a recurrent layer; the message names both and the fix."""


def is_quantize_wrapper(layer) -> bool:
    """tfmot's QuantizeWrapper / QuantizeWrapperV2, or a subclass such as `MaskingQuantizeWrapper`."""
    return isinstance(layer, tfmot_wrapper.QuantizeWrapper)


@contextlib.contextmanager
def _inner_name_scope(wrapper_config):
    """The name scope of the layer inside a serialized wrapper, so that whatever deserializing it
    builds gets the variable names it had when it was first built (``lstm/lstm_cell/kernel:0``)."""
    inner = wrapper_config.get("layer", {})
    name = inner.get("config", {}).get("name") if isinstance(inner, dict) else None
    if not name:
        yield
        return
    with tf.name_scope(name + "/"):
        yield


def _is_own_config(config) -> bool:
    return type(config).__module__.startswith("lstm_transforms.")


@contextlib.contextmanager
def _user_config_errors(wrapper):
    """Turn an exception raised while a user's QuantizeConfig runs on a recurrent layer into a
    `QuantizeConfigError` that names the config, the layer, the exception and the fix."""
    config = wrapper.quantize_config
    if _is_own_config(config):
        yield
        return
    try:
        yield
    except Exception as e:  # noqa: BLE001 - re-raised with the layer and the fix, chained
        layer = wrapper.layer
        raise QuantizeConfigError(
            f"Layer '{layer.name}' ({type(layer).__name__}) is annotated with the QuantizeConfig "
            f"{type(config).__name__}, which failed inside tfmot's quantize wrapper: {type(e).__name__}: {e}. "
            "lstm_transforms quantizes recurrent layers itself: drop the quantize_config "
            "(quantize_annotate_layer(layer) without one), or pass lstm_transforms.RNNQuantizeConfig "
            "(one QuantizedCellConfig per cell) to choose the weight bits."
        ) from e


class QuantizeWrapperV2(tfmot_wrapper.QuantizeWrapperV2):
    """tfmot's QuantizeWrapperV2, building the wrapped layer first, in the layer's own name scope.

    tfmot's wrapper lists its variables differently depending on whether the wrapped layer was
    built before it (always, when `quantize_model` creates it) or not (when a file is loaded), so
    `.keras` loading refuses the file ("expected 6 variables, but received 8") and `.h5` loading of
    multi-cell layers mixes up weights. Built first, the wrapped layer gets the same variables,
    order and names as when the model was created. `quantize_scope` loads every saved
    `QuantizeWrapperV2` as this class.
    """

    def build(self, input_shape):
        if not self.layer.built:
            with tf.name_scope(self.layer.name + "/"):  # variable names as when the layer is called
                self.layer.build(input_shape)
        super().build(input_shape)

    def build_from_config(self, config):
        with tf.name_scope(self.name + "/"):  # `.keras` loading builds outside the layer's name scope
            super().build_from_config(config)

    @classmethod
    def from_config(cls, config):
        with _inner_name_scope(config):
            return super().from_config(config)


class MaskingQuantizeWrapper(QuantizeWrapperV2):
    """A `QuantizeWrapperV2` made safe for recurrent and masking layers.

    * keeps the wrapped layer's Keras mask (tfmot's wrapper drops it, so an LSTM after a
      quantized ``Embedding(mask_zero=True)`` would run over the padding);
    * builds the wrapped layer before collecting its weights (see `QuantizeWrapperV2`);
    * applies the recurrent range updates after the wrapped layer's call, not between its
      directions (see `lstm_transforms.recurrent.deferred_range_updates`: MirroredStrategy);
    * reports a user QuantizeConfig that fails on the layer as a `QuantizeConfigError`;
    * around a `Masking` layer, first sets every value within float round-off of its
      ``mask_value`` to ``mask_value`` (`snap_to_mask_value`): under XLA (``jit_compile=True``) the
      fake quant before it maps 0 to about 1e-8, where TensorFlow's kernel gives exactly 0.
    """

    def __init__(self, layer, quantize_config, name_prefix="quant_", **kwargs):
        super().__init__(layer, quantize_config, name_prefix=name_prefix, **kwargs)
        self.supports_masking = True

    def build(self, input_shape):
        with _user_config_errors(self):
            super().build(input_shape)

    def call(self, inputs, training=None, **kwargs):
        inputs = self._masking_input(inputs)
        with deferred_range_updates(), _user_config_errors(self):
            return super().call(inputs, training=training, **kwargs)

    def compute_mask(self, inputs, mask=None):
        return self.layer.compute_mask(self._masking_input(inputs), mask)

    def _masking_input(self, inputs):
        if isinstance(self.layer, keras.layers.Masking):
            return snap_to_mask_value(inputs, self.layer.mask_value)
        return inputs


def snap_to_mask_value(x, mask_value):
    """`x` with every value within 2^-20 of the largest |x| (about 1e-6 of it) from `mask_value` set to
    `mask_value`.

    A fake-quantized tensor's values are one quantization step (its range / 255) apart, so this
    moves only `mask_value`'s own grid point computed with round-off (XLA's fake quant: 0 -> 1e-8).
    """

    @tf.custom_gradient
    def snap(x):
        tolerance = tf.reduce_max(tf.abs(x)) * 2.0**-20
        snapped = tf.where(tf.abs(x - mask_value) <= tolerance, tf.cast(mask_value, x.dtype), x)
        return snapped, lambda dy: dy  # straight through

    x = tf.convert_to_tensor(x)
    return snap(x) if x.dtype.is_floating else x  # integer inputs hold the mask value exactly


class QuantizeLayer(tfmot_quantize_layer.QuantizeLayer):
    """tfmot's QuantizeLayer, built once when a `.keras` file is loaded.

    tfmot's `build` never marks the layer built, so `.keras` loading (which builds every layer
    from its saved input shape, then calls it) creates its range variables twice and then
    refuses the file ("expected 5 variables, but received 3"). `quantize_scope` loads every
    saved `QuantizeLayer` as this class.
    """

    def build(self, input_shape):
        super().build(input_shape)
        self.built = True

    def build_from_config(self, config):
        with tf.name_scope(self.name + "/"):  # `.keras` loading builds outside the layer's name scope
            super().build_from_config(config)
