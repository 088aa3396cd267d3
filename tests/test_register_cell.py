"""User cells: an unregistered cell gets a precise error; a registered one quantizes everywhere."""

import numpy as np
import pytest
from tensorflow_model_optimization.python.core.quantization.keras import quantizers
from tensorflow_model_optimization.python.core.quantization.keras.quantize_config import QuantizeConfig

import lstm_transforms as lt
from lstm_transforms._keras import keras, tf
from lstm_transforms.walk import cells_of

L = keras.layers


class MinimalCell(L.Layer):
    """A user's own cell: h = tanh(x W + h U)."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.state_size = units

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", shape=(input_shape[-1], self.units))
        self.recurrent_kernel = self.add_weight(name="recurrent_kernel", shape=(self.units, self.units))

    def call(self, inputs, states):
        h = tf.tanh(tf.matmul(inputs, self.kernel) + tf.matmul(states[0], self.recurrent_kernel))
        return h, [h]

    def get_config(self):
        return {**super().get_config(), "units": self.units}


class MinimalCellConfig(QuantizeConfig):
    """Quantizes both weights of MinimalCell to 4 bits (so that the effect is visible)."""

    def get_weights_and_quantizers(self, cell):
        q = lambda: quantizers.LastValueQuantizer(num_bits=4, per_axis=False, symmetric=True, narrow_range=True)  # noqa: E731
        return [(cell.kernel, q()), (cell.recurrent_kernel, q())]

    def get_activations_and_quantizers(self, cell):
        return []

    def set_quantize_weights(self, cell, quantize_weights):
        cell.kernel, cell.recurrent_kernel = quantize_weights

    def set_quantize_activations(self, cell, quantize_activations):
        pass

    def get_output_quantizers(self, cell):
        return []

    def get_config(self):
        return {}


@pytest.fixture
def registered():
    lt.register_cell(MinimalCell, MinimalCellConfig())
    yield
    lt.unregister_cell(MinimalCell)


def _x():
    return np.random.default_rng(0).standard_normal((4, 5, 3)).astype("float32")


def _model(make):
    inputs = keras.Input((5, 3))
    return keras.Model(inputs, make()(inputs))


def test_unregistered_cell_error_names_cell_and_register_cell():
    model = _model(lambda: L.RNN(MinimalCell(4), name="custom_rnn"))
    with pytest.raises(lt.UnsupportedLayerError, match=r"custom_rnn.*MinimalCell.*register_cell\(MinimalCell"):
        lt.quantize_model(model)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: L.RNN(MinimalCell(4)), id="rnn"),
        pytest.param(lambda: L.RNN(L.StackedRNNCells([MinimalCell(4), L.LSTMCell(3)])), id="stacked-with-lstmcell"),
        pytest.param(lambda: L.Bidirectional(L.RNN(MinimalCell(4))), id="bidirectional"),
    ],
)
def test_registered_cell_is_quantized(registered, make):
    model = _model(make)
    with lt.quantize_scope(MinimalCell):
        qat = lt.quantize_model(model)
    wrapper = qat.layers[-1]
    user_cells = [c for c in cells_of(wrapper.layer) if isinstance(c, MinimalCell)]
    quantized_names = [w.name.split("/")[-1] for w, _, _ in wrapper._weight_vars]
    assert user_cells and quantized_names.count("kernel:0") >= len(user_cells)
    x = _x()
    for _ in range(2):
        qat(x, training=True)
    assert np.abs(qat(x).numpy() - model(x).numpy()).max() > 1e-3  # 4-bit weights act


def test_register_cell_validates_arguments():
    with pytest.raises(TypeError, match="QuantizeConfig"):
        lt.register_cell(MinimalCell, object())
    with pytest.raises(TypeError, match="Layer subclass"):
        lt.register_cell(int, MinimalCellConfig())
