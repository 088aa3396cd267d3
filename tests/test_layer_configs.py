"""Each extra QuantizeConfig through tfmot's real `quantize_apply`, with a scheme whose registry
asks `extra_quantize_config` first and then tfmot's default registry."""

import numpy as np
import pytest
import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
    default_8bit_quantize_configs,
    default_8bit_quantize_registry,
    default_8bit_quantize_scheme,
)

from lstm_transforms._keras import keras
from lstm_transforms.layer_configs import (
    BatchNormQuantizeConfig,
    Conv1DQuantizeConfig,
    IndexSlice,
    extra_quantize_config,
)
from lstm_transforms.serialization import custom_objects

L = keras.layers
tfq = tfmot.quantization.keras


class _Registry(default_8bit_quantize_registry.Default8BitQuantizeRegistry):
    def supports(self, layer):
        return extra_quantize_config(layer) is not None or super().supports(layer)

    def get_quantize_config(self, layer):
        return extra_quantize_config(layer) or super().get_quantize_config(layer)


class _Scheme(default_8bit_quantize_scheme.Default8BitQuantizeScheme):
    def get_quantize_registry(self):
        return _Registry()


def _quantize(model):
    return tfq.quantize_apply(tfq.quantize_annotate_model(model), scheme=_Scheme())


def _configs(quantized):
    return {layer.layer.name: layer.quantize_config for layer in quantized.layers if isinstance(layer, tfq.QuantizeWrapperV2)}


def _fit(model, x, y):
    model.compile("adam", "mse")
    model.fit(x, y, epochs=1, batch_size=len(x), verbose=0)


def test_batchnorm_after_conv_with_activation_gets_its_output_quantized():
    i = keras.Input((8, 8, 2))
    x = L.Conv2D(3, 3, activation="relu", name="conv")(i)
    x = L.BatchNormalization(name="bn")(x)
    model = keras.Model(i, L.Flatten()(x))
    with pytest.raises(RuntimeError, match="not supported"):
        tfq.quantize_model(model)  # stock tfmot
    quantized = _quantize(model)
    config = _configs(quantized)["bn"]
    assert isinstance(config, BatchNormQuantizeConfig)
    assert len(config.get_output_quantizers(model.get_layer("bn"))) == 1
    assert any("bn" in v.name and "max" in v.name for v in quantized.non_trainable_variables)
    _fit(quantized, np.random.rand(4, 8, 8, 2), np.random.rand(4, 108))


def test_conv2d_bn_relu_keeps_tfmots_fold():
    i = keras.Input((8, 8, 2))
    x = L.Conv2D(3, 3, use_bias=False, name="conv")(i)
    x = L.BatchNormalization(name="bn")(x)
    x = L.ReLU(name="relu")(x)
    configs = _configs(_quantize(keras.Model(i, x)))
    # tfmot's layout transform put NoOp on the folded BN; the registry was never asked for it.
    assert isinstance(configs["bn"], default_8bit_quantize_configs.NoOpQuantizeConfig)


def test_conv2d_bn_keeps_tfmots_fold():
    i = keras.Input((8, 8, 2))
    x = L.Conv2D(3, 3, use_bias=False, name="conv")(i)
    configs = _configs(_quantize(keras.Model(i, L.BatchNormalization(name="bn")(x))))
    assert isinstance(configs["bn"], default_8bit_quantize_configs.Default8BitOutputQuantizeConfig)


def test_conv1d_is_quantized_per_channel_like_conv2d():
    i = keras.Input((10, 3))
    x = L.Conv1D(5, 3, activation="relu", name="conv1d")(i)
    model = keras.Model(i, L.GlobalAveragePooling1D()(x))
    with pytest.raises(RuntimeError, match="not supported"):
        tfq.quantize_model(model)
    quantized = _quantize(model)
    assert isinstance(_configs(quantized)["conv1d"], Conv1DQuantizeConfig)
    kernel_min = [v for v in quantized.non_trainable_variables if "conv1d" in v.name and "kernel_min" in v.name]
    assert [tuple(v.shape) for v in kernel_min] == [(5,)]  # one range per output channel
    x, y = np.random.rand(4, 10, 3), np.random.rand(4, 5)
    _fit(quantized, x, y)
    # Eval mode: the kernel used is the fake-quantized one (at most 255 levels per channel).
    wrapper = quantized.get_layer("quant_conv1d")
    assert wrapper(x.astype("float32"), training=False).shape == (4, 8, 5)


def test_index_slice_passes_quantization_through():
    i = keras.Input((6, 4))
    x = L.Dense(4, name="pre")(i)
    x = IndexSlice(axis=1, index=-1, name="last")(x)
    quantized = _quantize(keras.Model(i, L.Dense(2)(x)))
    config = _configs(quantized)["last"]
    layer = quantized.get_layer("quant_last").layer
    assert config.get_weights_and_quantizers(layer) == [] and config.get_output_quantizers(layer) == []
    _fit(quantized, np.random.rand(4, 6, 4), np.random.rand(4, 2))


def test_unknown_layers_are_left_to_tfmot():
    assert extra_quantize_config(L.Dense(3)) is None
    assert extra_quantize_config(L.SeparableConv1D(3, 3)) is None


def test_quantized_layers_round_trip_through_their_configs():
    i = keras.Input((10, 3))
    x = L.Conv1D(4, 3, activation="relu")(i)
    x = L.BatchNormalization()(x)
    x = IndexSlice(axis=1, index=-1)(x)
    quantized = _quantize(keras.Model(i, L.Dense(2)(x)))
    wrappers = [layer for layer in quantized.layers if isinstance(layer, tfq.QuantizeWrapperV2)]
    with tfq.quantize_scope(custom_objects()):
        again = [keras.layers.deserialize(keras.layers.serialize(w)) for w in wrappers]
    for original, copy in zip(wrappers, again):
        assert type(copy.quantize_config) is type(original.quantize_config)
        assert type(copy.layer) is type(original.layer)
