"""Public API contract: install/uninstall into stock tfmot, bad input, original model untouched."""

import numpy as np
import pytest
import tensorflow_model_optimization as tfmot

import lstm_transforms as lt
from lstm_transforms._keras import keras
from tests.helpers import assert_recurrent_quantized, calibrate, run_python, subclassed_model

L = keras.layers
tfmot_keras = tfmot.quantization.keras


def _lstm_gru_model():
    inputs = keras.Input((6, 4))
    x = L.LSTM(8, return_sequences=True)(inputs)
    return keras.Model(inputs, L.Dense(3)(L.GRU(6)(x)))


def _x():
    return np.random.default_rng(0).standard_normal((8, 6, 4)).astype("float32")


@pytest.fixture
def installed():
    lt.install()
    yield
    lt.uninstall()


def test_stock_quantize_model_rejects_lstm_without_install():
    assert not lt.is_installed()
    with pytest.raises(RuntimeError, match="not supported"):
        tfmot_keras.quantize_model(_lstm_gru_model())


def test_install_makes_stock_quantize_model_handle_recurrent_layers(installed):
    qat = tfmot_keras.quantize_model(_lstm_gru_model())
    calibrate(qat, _x())
    assert_recurrent_quantized(qat, _x(), expected_layers=2)


def test_install_covers_annotate_and_apply_with_default_scheme(installed):
    annotated = tfmot_keras.quantize_annotate_model(_lstm_gru_model())
    qat = tfmot_keras.quantize_apply(annotated)
    calibrate(qat, _x())
    assert_recurrent_quantized(qat, _x(), expected_layers=2)
    qat2 = tfmot_keras.quantize_apply(annotated, tfmot_keras.default_8bit.Default8BitQuantizeScheme())
    calibrate(qat2, _x())
    assert_recurrent_quantized(qat2, _x(), expected_layers=2)


def test_install_is_idempotent_and_uninstall_restores_exact_functions():
    stock = {name: getattr(tfmot_keras, name) for name in ("quantize_model", "quantize_apply", "quantize_annotate_model", "quantize_scope")}
    lt.install()
    lt.install()
    assert tfmot_keras.quantize_model is not stock["quantize_model"]
    lt.uninstall()
    lt.uninstall()
    for name, fn in stock.items():
        assert getattr(tfmot_keras, name) is fn
    assert not lt.is_installed()


def test_quantize_apply_with_rnn_scheme_explicitly():
    dense = keras.Sequential([keras.Input((6, 4)), L.Dense(3, name="dense")])
    qat = tfmot_keras.quantize_apply(tfmot_keras.quantize_annotate_model(dense), scheme=lt.RNNQuantizeScheme())
    wrapper = qat.get_layer("quant_dense")
    assert [w.name.split("/")[-1] for w, _, _ in wrapper._weight_vars] == ["kernel:0"]
    x = _x()
    lt.calibrate(qat, x)
    np.testing.assert_allclose(qat(x).numpy(), dense(x).numpy(), atol=0.02 * np.abs(dense(x).numpy()).max())
    model = _lstm_gru_model()
    # Stock annotate works on an LSTM model; stock apply with our scheme quantizes it.
    qat = tfmot_keras.quantize_apply(tfmot_keras.quantize_annotate_model(model), scheme=lt.RNNQuantizeScheme())
    calibrate(qat, _x())
    assert_recurrent_quantized(qat, _x(), expected_layers=2)


def test_original_model_untouched():
    model = _lstm_gru_model()
    before = [w.copy() for w in model.get_weights()]
    layers_before = [(type(l), l.name) for l in model.layers]
    qat = lt.quantize_model(model)
    qat.compile("adam", "mse")
    qat.fit(_x(), np.zeros((8, 3)), epochs=2, verbose=0)
    assert [(type(l), l.name) for l in model.layers] == layers_before
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert type(model.layers[1].cell) is L.LSTMCell


def test_weights_are_copied():
    model = _lstm_gru_model()
    qat = lt.quantize_model(model)
    wrapper = [l for l in qat.layers if isinstance(getattr(l, "layer", None), L.LSTM)][0]
    copied = {w.name.split("/")[-1]: w.numpy() for w in wrapper.weights}
    for original in model.layers[1].weights:
        np.testing.assert_array_equal(original.numpy(), copied[original.name.split("/")[-1]])


@pytest.mark.parametrize("bad", [None, L.Dense(3)], ids=["None", "layer"])
def test_bad_input_value_error(bad):
    with pytest.raises(ValueError, match="functional and Sequential"):
        lt.quantize_model(bad)


def test_subclassed_model_rejected():
    model = subclassed_model(_x())
    with pytest.raises(ValueError, match="subclassed model"):
        lt.quantize_model(model)


def test_keras3_model_is_converted_to_tf_keras():
    import keras as keras3  # installed next to tf-keras (TensorFlow 2.21 depends on it)

    assert keras3.__version__.startswith("3.")
    inputs = keras3.Input((6, 4))
    model = keras3.Model(inputs, keras3.layers.LSTM(4)(inputs))
    qat = lt.quantize_model(model)
    assert isinstance(qat, keras.Model)
    assert [type(layer.layer).__name__ for layer in qat.layers if hasattr(layer, "layer")] == ["QuantizedLSTM"]


def test_import_has_no_side_effects():
    code = (
        "import os; os.environ.pop('TF_USE_LEGACY_KERAS', None);"
        "import tensorflow_model_optimization as t; q = t.quantization.keras; f = q.quantize_model;"
        "import lstm_transforms as lt; assert q.quantize_model is f; assert not lt.is_installed();"
        "assert os.environ['TF_USE_LEGACY_KERAS'] == '1'; print('ok')"
    )
    out = run_python(code)
    assert out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_scheme_rejects_bad_bits():
    with pytest.raises(ValueError, match="weight_bits"):
        lt.RNNQuantizeScheme(weight_bits=12)


def test_rnn_quantize_config_annotation_chooses_the_weight_bits():
    inputs = keras.Input((6, 4))
    config = lt.RNNQuantizeConfig([lt.QuantizedCellConfig(num_gates=4, weight_bits=4)])
    h = tfmot_keras.quantize_annotate_layer(L.LSTM(5, name="lstm"), config)(inputs)
    qat = lt.quantize_model(keras.Model(inputs, L.Dense(2)(h)))
    wrapper = qat.get_layer("quant_lstm")
    assert type(wrapper.layer.cell) is lt.QuantizedLSTMCell
    assert [q.num_bits for _, q, _ in wrapper._weight_vars] == [4, 4]
    lt.calibrate(qat, _x())
    assert_recurrent_quantized(qat, _x())
