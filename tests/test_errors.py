"""One test per row of the error table in docs/errors.md: each input lstm_transforms cannot handle
gets a precise exception whose message names the offending object and the fix.

Nothing is silently left in float: a recurrent layer that cannot be quantized is an error, never a
warning (the only warning is for non-recurrent, non-shape `Lambda` layers, last row).
"""

import warnings

import numpy as np
import pytest
import tensorflow_model_optimization as tfmot

import lstm_transforms as lt
from lstm_transforms._keras import keras, tf
from lstm_transforms.export import ExportError
from tests.helpers import assert_recurrent_quantized, calibrate, subclassed_model

L = keras.layers
T, F = 6, 5


def _x(n=4, t=T, f=F):
    return np.random.default_rng(0).standard_normal((n, t, f)).astype("float32")


def _functional(layer, shape=(T, F), name=None):
    inputs = keras.Input(shape)
    return keras.Model(inputs, layer(inputs), name=name)


class PlainCell(L.Layer):
    """A minimal user RNN cell that is never registered."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.state_size = units

    def build(self, input_shape):
        self.kernel = self.add_weight("kernel", (input_shape[-1], self.units))

    def call(self, inputs, states):
        h = tf.matmul(inputs, self.kernel) + states[0]
        return h, [h]


# --- What kind of model -------------------------------------------------------------------------


def test_none_model():
    with pytest.raises(ValueError, match=r"`model` is None: only tf-keras functional and Sequential models"):
        lt.quantize_model(None)


def test_a_layer_instead_of_a_model():
    with pytest.raises(ValueError, match=r"got LSTM\. Only functional and Sequential models.*wrap a single layer"):
        lt.quantize_model(L.LSTM(4))


def test_subclassed_model():
    model = subclassed_model(_x())
    with pytest.raises(ValueError, match=r"subclassed model \(Sub\).*Rebuild it with keras\.Input"):
        lt.quantize_model(model)


def test_unbuilt_sequential():
    with pytest.raises(ValueError, match=r"not built: call `model\.build\(input_shape\)` or give it an Input"):
        lt.quantize_model(keras.Sequential([L.LSTM(4)]))


def test_keras3_model():
    """quantize_model converts Keras 3 models (tests/test_keras3.py); functions that take the QAT model do not."""
    import keras as keras3  # installed next to tf-keras (TensorFlow 2.21 depends on it)

    assert keras3.__version__.startswith("3.")
    inputs = keras3.Input((T, F))
    model = keras3.Model(inputs, keras3.layers.LSTM(4)(inputs))
    with pytest.raises(ValueError, match=r"`qat_model` is a Keras 3 model .*lstm_transforms\.quantize_model \(and "
                                         r"tfmot's, after install\(\)\) accepts Keras 3 models and returns a tf-keras "
                                         r"QAT model: pass that one here"):
        lt.export_tflite(model, _x())


# --- Recurrent layers we cannot quantize --------------------------------------------------------


@pytest.mark.parametrize(
    "make, layer_name",
    [
        pytest.param(lambda: L.RNN(PlainCell(4), name="my_rnn"), "my_rnn", id="rnn"),
        pytest.param(lambda: L.Bidirectional(L.RNN(PlainCell(4)), name="my_bidi"), "my_bidi", id="bidirectional"),
        pytest.param(lambda: L.RNN(L.StackedRNNCells([L.LSTMCell(3), PlainCell(4)]), name="my_stack"), "my_stack",
                     id="stacked"),
    ],
)
def test_unregistered_custom_cell(make, layer_name):
    with pytest.raises(lt.UnsupportedLayerError) as info:
        lt.quantize_model(_functional(make()))
    message = str(info.value)
    assert f"'{layer_name}'" in message and "PlainCell" in message
    assert "lstm_transforms.register_cell(PlainCell, YourQuantizeConfig())" in message


@pytest.mark.parametrize(
    "make, shape, cell",
    [
        pytest.param(lambda: L.ConvLSTM2D(2, 3, name="conv_rnn"), (4, 8, 8, 1), "ConvLSTMCell", id="convlstm2d"),
        pytest.param(lambda: L.ConvLSTM1D(2, 3, name="conv_rnn"), (4, 8, 1), "ConvLSTMCell", id="convlstm1d"),
    ],
)
def test_conv_lstm(make, shape, cell):
    with pytest.raises(lt.UnsupportedLayerError) as info:
        lt.quantize_model(_functional(make(), shape))
    message = str(info.value)
    assert "'conv_rnn'" in message and cell in message and f"register_cell({cell}" in message


def test_time_distributed_recurrent_layer():
    model = _functional(L.TimeDistributed(L.LSTM(3), name="per_window"), (3, T, F))
    with pytest.raises(lt.UnsupportedLayerError) as info:
        lt.quantize_model(model)
    message = str(info.value)
    assert "'per_window'" in message and "TimeDistributed(LSTM)" in message
    assert "Reshape to (batch * outer, time, features)" in message


class DefaultLSTMQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
    """The original question's hand-written config: it reads `layer.layer`, which an LSTM lacks."""

    def get_weights_and_quantizers(self, layer):
        quantizer = tfmot.quantization.keras.quantizers.LastValueQuantizer
        return [(layer.layer.kernel, quantizer(num_bits=8, symmetric=True, narrow_range=False, per_axis=False)),
                (layer.layer.recurrent_kernel, quantizer(num_bits=8, symmetric=True, narrow_range=False, per_axis=False))]

    def get_activations_and_quantizers(self, layer):
        quantizer = tfmot.quantization.keras.quantizers.MovingAverageQuantizer
        return [(layer.layer.activation, quantizer(num_bits=8, symmetric=False, narrow_range=False, per_axis=False))]

    def set_quantize_weights(self, layer, quantize_weights):
        layer.kernel, layer.recurrent_kernel = quantize_weights

    def set_quantize_activations(self, layer, quantize_activations):
        layer.activation = quantize_activations[0]

    def get_output_quantizers(self, layer):
        return []

    def get_config(self):
        return {}


def test_user_quantize_config_that_fails_on_a_recurrent_layer():
    inputs = keras.Input((T, F))
    h = tfmot.quantization.keras.quantize_annotate_layer(L.LSTM(4, name="lstm"), DefaultLSTMQuantizeConfig())(inputs)
    model = keras.Model(inputs, L.Dense(2)(h))
    with pytest.raises(lt.QuantizeConfigError) as info, lt.quantize_scope(DefaultLSTMQuantizeConfig):
        lt.quantize_model(model)
    message = str(info.value)
    assert "Layer 'lstm' (LSTM)" in message and "QuantizeConfig DefaultLSTMQuantizeConfig" in message
    assert "AttributeError: 'LSTM' object has no attribute 'layer'" in message
    assert "drop the quantize_config" in message and "lstm_transforms.RNNQuantizeConfig" in message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("quantize", ["quantize_model", "quantize_apply", "stock_after_install"])
def test_quantizing_an_already_quantized_model(quantize):
    qat = lt.quantize_model(_functional(L.LSTM(4, name="lstm")))
    call = {
        "quantize_model": lambda: lt.quantize_model(qat),
        "quantize_apply": lambda: lt.quantize_apply(qat),
        "stock_after_install": lambda: tfmot.quantization.keras.quantize_model(qat),
    }[quantize]
    lt.install()
    try:
        with pytest.raises(ValueError, match=r"is already quantized: it has quantize layers \('quantize_layer.*'quant_lstm"
                                             r".*Quantize the float model it was made from"):
            call()
    finally:
        lt.uninstall()


# --- Non-recurrent layers stock tfmot does not support ------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: L.UpSampling1D(2, name="odd_layer"), id="upsampling1d"),
        pytest.param(lambda: L.LayerNormalization(name="odd_layer"), id="layernormalization"),
    ],
)
def test_layer_tfmot_does_not_support(make):
    inputs = keras.Input((T, F))
    h = make()(L.LSTM(4, return_sequences=True)(inputs))
    model = keras.Model(inputs, L.Dense(2)(L.Flatten()(h)))
    with pytest.raises(RuntimeError) as info:
        lt.quantize_model(model)
    message = str(info.value)
    assert "Layer odd_layer:" in message and "is not supported" in message
    assert "QuantizeConfig" in message and "quantize_annotate_layer" in message


def test_masking_layer_before_lstm_quantizes():
    inputs = keras.Input((None, F))
    model = keras.Model(inputs, L.Dense(2)(L.LSTM(4, name="lstm")(L.Masking(0.0, name="pad_mask")(inputs))))
    qat = lt.quantize_model(model)
    x = _x(8)
    calibrate(qat, x)
    assert_recurrent_quantized(qat, x)
    # The mask reaches the LSTM: trailing padding changes nothing.
    padded = np.concatenate([x[:, :4], np.zeros_like(x[:, 4:])], axis=1)
    np.testing.assert_allclose(qat(padded, training=False), qat(x[:, :4], training=False), atol=1e-6)
    # ...and export says why a masked recurrence cannot be deployed, naming both layers.
    with pytest.raises(ExportError, match=r"at layer '(quant_)?lstm'.*Keras mask \(made by '(quant_)?pad_mask'\)"):
        lt.export_tflite(qat, x)


# --- Scheme and registration arguments ----------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"weight_bits": 1}, r"weight_bits must be in \[2, 8\], got 1"),
        ({"weight_bits": 16}, r"weight_bits must be in \[2, 8\], got 16"),
        ({"activation_bits": 17}, r"activation_bits must be in \[2, 16\], got 17"),
        ({"gate_bits": 1}, r"gate_bits must be in \[2, 16\], got 1"),
        ({"state_bits": 32}, r"state_bits must be in \[2, 16\], got 32"),
        ({"cell_clip": -1.0}, r"cell_clip must be >= 0, got -1"),
        ({"ema_decay": 1.0}, r"ema_decay must be in \(0, 1\), got 1\.0"),
    ],
)
def test_bad_scheme_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        lt.RNNQuantizeScheme(**kwargs)


def test_scheme_of_the_wrong_type():
    with pytest.raises(TypeError, match=r"scheme must be a tfmot QuantizeScheme .*got str"):
        lt.quantize_model(_functional(L.LSTM(4)), scheme="8bit")


def test_register_cell_with_a_non_layer():
    with pytest.raises(TypeError, match=r"register_cell expects a tf-keras Layer subclass \(an RNN cell\)"):
        lt.register_cell(object, None)


def test_register_cell_with_a_non_config():
    with pytest.raises(TypeError, match=r"register_cell\(PlainCell, \.\.\.\) expects a tfmot QuantizeConfig instance"):
        lt.register_cell(PlainCell, object())
    assert PlainCell not in lt.registered_cells()


# --- Loading ------------------------------------------------------------------------------------


def test_loading_without_quantize_scope(tmp_path):
    qat = lt.quantize_model(_functional(L.LSTM(4)))
    path = str(tmp_path / "qat.h5")
    qat.save(path)
    with pytest.raises(ValueError, match=r"Unknown layer: 'QuantizeLayer'.*custom_object_scope"):
        keras.models.load_model(path)
    with lt.quantize_scope():  # the fix
        keras.models.load_model(path)


# --- Export -------------------------------------------------------------------------------------


@pytest.mark.parametrize("rnn", ["GRU", "SimpleRNN"])
def test_export_unfixed_time_dimension(rnn):
    qat = lt.quantize_model(_functional(getattr(L, rnn)(4, name="rnn_layer"), (None, F)))
    with pytest.raises(ExportError) as info:
        lt.export_tflite(qat, _x())
    message = str(info.value)
    assert f"Layer 'rnn_layer' ({rnn}) has a time dimension of None" in message
    assert "keras.Input(shape=(T, features))" in message


def test_export_without_representative_dataset():
    qat = lt.quantize_model(_functional(L.LSTM(4)))
    with pytest.raises(ValueError, match=r"needs a representative_dataset"):
        lt.export_tflite(qat, None)


def test_calibration_data_read_once():
    qat = lt.quantize_model(_functional(L.LSTM(4)))
    with pytest.raises(TypeError, match=r"data is an iterator, which can be read only once: pass the generator function"):
        lt.calibrate(qat, (sample for sample in _x()))


@pytest.mark.parametrize(
    "data, message",
    [
        pytest.param(lambda: _x(t=T + 1), r"input 0 has sample shape \(7, 5\); the model expects \(6, 5\)", id="shape"),
        pytest.param(lambda: _x(n=0), r"representative_dataset is empty", id="empty"),
        pytest.param(lambda: [_x(), _x()], r"representative_dataset has 2 arrays; the model has 1 inputs", id="count"),
    ],
)
def test_export_bad_representative_dataset(data, message):
    qat = lt.quantize_model(_functional(L.LSTM(4)))
    with pytest.raises(ValueError, match=message):
        lt.export_tflite(qat, data())


# --- Not an error: the one documented warning ---------------------------------------------------


def test_non_shape_lambda_warns_and_the_rest_quantizes():
    from lstm_transforms.transforms import FloatLambdaWarning

    inputs = keras.Input((T, F))
    h = L.Lambda(lambda t: t * 2.0, name="double")(inputs)
    model = keras.Model(inputs, L.LSTM(4)(h))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        qat = lt.quantize_model(model)
    messages = [str(w.message) for w in caught if issubclass(w.category, FloatLambdaWarning)]
    assert messages and "'double'" in messages[0] and "QuantizeConfig" in messages[0]
    assert any("LSTM" in type(getattr(layer, "layer", layer)).__name__ for layer in qat.layers)
