"""Shared test helpers: calibration, the proof that a recurrent layer is really quantized, shared models."""

import subprocess
import sys

import numpy as np

from tensorflow_model_optimization.python.core.quantization.keras.quantize_wrapper import QuantizeWrapperV2

from lstm_transforms._keras import keras
from lstm_transforms.cells import _QuantizedCellMixin
from lstm_transforms.walk import cells_of
from lstm_transforms.registry import is_recurrent

K = keras.backend


def calibrate(model, x, passes=3):
    """Forward passes in training mode: tfmot and lstm_transforms ranges learn from them."""
    for _ in range(passes):
        model(x, training=True)


def recurrent_wrappers(model):
    found = []
    for layer in model.layers:
        inner = getattr(layer, "layer", None)
        if inner is not None and is_recurrent(inner):
            found.append(layer)
        elif isinstance(inner, keras.layers.TimeDistributed) and is_recurrent(inner.layer):
            found.append(layer)
    return found


def _as_list(y):
    return [np.asarray(t) for t in (y if isinstance(y, (list, tuple)) else [y])]


def assert_recurrent_quantized(model, x, expected_layers=1):
    """Every recurrent layer is wrapped, runs quantized cells, and each cell's learned ranges act."""
    wrappers = recurrent_wrappers(model)
    assert len(wrappers) == expected_layers, [type(l).__name__ for l in model.layers]
    reference = _as_list(model(x, training=False))
    for wrapper in wrappers:
        assert isinstance(wrapper, QuantizeWrapperV2)
        for cell in cells_of(wrapper.layer):
            assert isinstance(cell, _QuantizedCellMixin), type(cell)
            assert cell.full_quantization
            # Every learned range at once: h of a tanh SimpleRNN is on TANH's fixed grid, its pre-activation learned.
            ranges = [v for point in cell.learned_points for v in cell.learned_range(point)]
            saved = [v.numpy() for v in ranges]
            for v, value in zip(ranges, saved):
                v.assign(value * 0.05)
            try:
                changed = _as_list(model(x, training=False))
            finally:
                for v, value in zip(ranges, saved):
                    v.assign(value)
            assert any(not np.allclose(a, b) for a, b in zip(reference, changed)), f"{cell.name} range has no effect"


def squeeze_last_dim(x):
    """The original question's squeeze: `Lambda(lambda q: K.squeeze(q, -1), name="squeeze_last_dim")`."""
    return keras.layers.Lambda(lambda q: K.squeeze(q, -1), name="squeeze_last_dim")(x)


def question_model(squeeze, input_shape=(32, 32, 1), name=None, keras_module=keras):
    """The original question's model, with `squeeze` taking its (batch, T, F, 1) tensor to (batch, T, F).

    `keras_module` builds it: tf-keras (`lstm_transforms._keras.keras`) or Keras 3 (`keras`).
    """
    L = keras_module.layers
    i = keras_module.Input(shape=input_shape)
    x = L.Conv2D(1, (5, 1), activation="relu", padding="same")(i)
    x = L.BatchNormalization()(x)
    x = squeeze(x)
    x = L.LSTM(64, return_sequences=True)(x)
    x = L.Flatten()(x)
    x = L.Dense(64, activation="relu")(x)
    o = L.Dense(12, activation="softmax")(x)
    return keras_module.Model(i, o, name=name)


def subclassed_model(x, keras_module=keras):
    """A subclassed model `Sub` around an LSTM(4), built by a call on `x`: no layer graph to quantize."""

    class Sub(keras_module.Model):
        def __init__(self):
            super().__init__()
            self.rnn = keras_module.layers.LSTM(4)

        def call(self, x):
            return self.rnn(x)

    model = Sub()
    model(x)
    return model


def run_python(code):
    """`code` run by a fresh Python interpreter (`python -c`), with its output captured as text."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
