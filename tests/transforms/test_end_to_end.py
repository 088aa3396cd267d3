"""The original question's model (LSTM swapped for a Conv1D: recurrent layers are tested with the
lead's scheme) through `rewrite` + stock tfmot annotate/apply with a scheme that asks
`extra_quantize_config` first."""

import numpy as np
import pytest
import tensorflow_model_optimization as tfmot

from lstm_transforms._keras import keras, tf
from lstm_transforms.layer_configs import BatchNormQuantizeConfig
from lstm_transforms.serialization import custom_objects
from lstm_transforms.transforms import FloatLambdaWarning, clone_scope, rewrite

L, K = keras.layers, keras.backend
tfq = tfmot.quantization.keras


def _squeeze_lambda(x):
    return L.Lambda(lambda q: K.squeeze(q, -1), name="squeeze_last_dim")(x)


def _tf_squeeze(x):
    return tf.squeeze(x, -1)


def _slice(x):
    return x[..., 0]


def _reshape(x):
    return L.Reshape((32, 32))(x)


def _question_model(squeeze):
    i = keras.Input(shape=(32, 32, 1))
    x = L.Conv2D(1, (5, 1), activation="relu", padding="same")(i)
    x = L.BatchNormalization()(x)
    x = squeeze(x)
    x = L.Conv1D(8, 3, padding="same")(x)  # stands in for LSTM(64, return_sequences=True)
    x = L.Flatten()(x)
    x = L.Dense(64, activation="relu")(x)
    o = L.Dense(12, activation="softmax")(x)
    return keras.Model(i, o)


def _quantize(model, scheme):
    with clone_scope(model), tfq.quantize_scope(custom_objects()):
        return tfq.quantize_apply(tfq.quantize_annotate_model(model), scheme=scheme)


def _train_one_step(model):
    model.compile("adam", "sparse_categorical_crossentropy")
    x = np.random.rand(8, 32, 32, 1).astype("float32")
    history = model.fit(x, np.random.randint(0, 12, 8), epochs=1, batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"][0])


@pytest.mark.parametrize("squeeze", [_squeeze_lambda, _tf_squeeze, _slice, _reshape], ids=lambda f: f.__name__)
def test_question_model_quantizes_and_trains(squeeze, extra_scheme, checks):
    model = _question_model(squeeze)
    rewritten = rewrite(model)
    checks.same_outputs(model, rewritten, np.random.rand(2, 32, 32, 1).astype("float32"))
    quantized = _quantize(rewritten, extra_scheme)
    kinds = {type(layer).__name__ for layer in quantized.layers}
    assert not kinds & {"Lambda", "TFOpLambda", "SlicingOpLambda"}
    wrapped = {layer.layer.__class__.__name__: layer.quantize_config for layer in quantized.layers
               if isinstance(layer, tfq.QuantizeWrapperV2)}
    assert isinstance(wrapped["BatchNormalization"], BatchNormQuantizeConfig)
    assert "Conv1D" in wrapped and "Conv2D" in wrapped
    _train_one_step(quantized)


def test_stock_tfmot_fails_without_the_rewrite(extra_scheme):
    with pytest.raises(ValueError, match="[Ll]ambda"):
        tfq.quantize_apply(tfq.quantize_annotate_model(_question_model(_squeeze_lambda)), scheme=extra_scheme)


def test_non_shape_lambda_stays_float_and_the_rest_quantizes(extra_scheme):
    def scale(x):
        return L.Lambda(lambda q: K.squeeze(q, -1) * 0.5, name="scale_and_squeeze")(x)

    with pytest.warns(FloatLambdaWarning, match="scale_and_squeeze"):
        rewritten = rewrite(_question_model(scale))
    quantized = _quantize(rewritten, extra_scheme)
    kept = quantized.get_layer("scale_and_squeeze")
    assert type(kept) is L.Lambda  # in float, not wrapped
    assert sum(isinstance(layer, tfq.QuantizeWrapperV2) for layer in quantized.layers) >= 5
    _train_one_step(quantized)


def test_clone_scope_is_narrow():
    model = _question_model(_squeeze_lambda)
    i = keras.Input((4, 1))
    foreign = keras.Model(i, L.Lambda(lambda q: K.squeeze(q, -1) + 1, name="squeeze_last_dim")(i))
    # tfmot's layout transform rebuilds with Model.from_config, which runs in safe mode.
    with clone_scope(model):
        clone = keras.Model.from_config(model.get_config())  # a Lambda of `model`: allowed
        assert type(clone.get_layer("squeeze_last_dim")) is L.Lambda
        with pytest.raises(ValueError, match="safe_mode"):
            keras.Model.from_config(foreign.get_config())  # same name, other function: refused
    with pytest.raises(ValueError, match="safe_mode"):
        keras.Model.from_config(model.get_config())  # and the scope is gone afterwards


def test_clone_scope_is_a_no_op_without_lambda():
    before = L.Lambda.__dict__["from_config"]
    with clone_scope(_question_model(_reshape)):
        assert L.Lambda.__dict__["from_config"] is before


def test_clone_scope_covers_a_lambda_the_user_annotated(extra_scheme):
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_configs,
    )

    i = keras.Input((4,))
    x = L.Dense(4)(i)
    x = tfq.quantize_annotate_layer(L.Lambda(lambda q: q * 2, name="double"),
                                    default_8bit_quantize_configs.Default8BitOutputQuantizeConfig())(x)
    annotated = tfq.quantize_annotate_model(keras.Model(i, L.Dense(2)(x)))
    with clone_scope(annotated), tfq.quantize_scope():
        quantized = tfq.quantize_apply(annotated, scheme=extra_scheme)
    assert isinstance(quantized.get_layer("quant_double"), tfq.QuantizeWrapperV2)


def test_computing_tf_ops_stay_float_and_the_rest_quantizes(extra_scheme, checks):
    i = keras.Input((6, 4))
    x = L.Dense(4)(i)
    x = tf.nn.relu(x) * 2.0  # two computing TFOpLambdas
    model = keras.Model(i, L.Dense(2)(x[:, -1]))
    with pytest.warns(FloatLambdaWarning) as record:
        rewritten = rewrite(model)
    named = " ".join(str(w.message) for w in record)
    assert "'tf.nn.relu'" in named and "'tf.math.multiply'" in named
    checks.same_outputs(model, rewritten, np.random.rand(3, 6, 4).astype("float32"))
    with pytest.raises(RuntimeError, match="not supported"):
        tfq.quantize_apply(tfq.quantize_annotate_model(model), scheme=extra_scheme)  # stock: TFOpLambda
    quantized = _quantize(rewritten, extra_scheme)
    assert type(quantized.get_layer("tf.nn.relu")) is L.Lambda
    assert sum(isinstance(layer, tfq.QuantizeWrapperV2) for layer in quantized.layers) == 3
    quantized.compile("adam", "mse")
    quantized.fit(np.random.rand(4, 6, 4), np.random.rand(4, 2), verbose=0)
