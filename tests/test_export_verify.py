"""verify: a flatbuffer that is not what the plan promised is an ExportError, never a silent success."""

import numpy as np
import pytest

from lstm_transforms._keras import keras, tf
from lstm_transforms.export import ExportError, convert
from lstm_transforms.export.plan import deployment_plan
from lstm_transforms.export.verify import integer_violations, verify

L = keras.layers
T, F = 5, 3


@pytest.fixture(scope="module")
def float_island():
    """A model whose middle op (FLOOR) has no int8 kernel, converted with float fallback allowed."""
    i = keras.Input((T * F,), batch_size=1)
    h = L.Lambda(lambda t: tf.math.floor(t), name="floor")(L.Dense(4)(i))
    model = keras.Model(i, L.Dense(2)(h))
    x = np.random.default_rng(0).normal(size=(16, T * F)).astype(np.float32)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([row[None]] for row in x)
    return model, converter.convert()


def test_float_islands_are_violations(float_island):
    model, fb = float_island
    problems = integer_violations(fb)
    assert any("computed inside (DEQUANTIZE)" in p for p in problems), problems
    with pytest.raises(ExportError, match=r"is not what its plan promised: float tensor .* computed inside"):
        verify(fb, deployment_plan(model))


def test_a_float_model_is_all_violations():
    i = keras.Input((T, F))
    model = keras.Model(i, L.Dense(2)(L.Flatten()(i)))
    problems = integer_violations(convert(model))
    assert problems and all(p.startswith("float tensor") for p in problems)


def test_integer_io_allows_no_quantize_op_and_the_fused_ops_are_counted(float_island):
    _, fb = float_island
    problems = integer_violations(fb, int8_io=True)
    assert "QUANTIZE op at a float tensor (integer I/O asks for none)" in problems
    assert "DEQUANTIZE op at a float tensor (integer I/O asks for none)" in problems
    i = keras.Input((T, F))
    lstm_plan = deployment_plan(keras.Model(i, L.Dense(2)(L.LSTM(4)(i))))
    with pytest.raises(ExportError, match=r"0 UNIDIRECTIONAL_SEQUENCE_LSTM op\(s\) for 1 fused LSTM cell\(s\)"):
        verify(fb, lstm_plan)
