"""Initialise every learned range of a QAT model from data, before fine-tuning.

tfmot's activation ranges start at [-6, 6] and follow an exponential moving average with decay 0.999:
after a few hundred training steps (a small data set) they have moved a fraction of the way to the
real ranges, so values beyond them are clipped during the whole fine-tune, and those ranges are the
ones exported. `calibrate` sets them the way TFLite's calibrator does, to the minimum / maximum seen
over the data, in one or more passes of forward calls:

- tfmot's moving-average activation quantizers (layer outputs, ReLU outputs, ...) and our recurrent
  cells' output / cell-state ranges take the extremes over every batch;
- weight ranges are set from the weights, and the model input range from the data;
- BatchNormalization runs in inference mode (its moving statistics, not batch statistics, and they
  are not updated); Dropout and recurrent dropout are off.

Nothing else changes: no weight is updated. Fine-tuning afterwards continues with the usual
moving averages from these ranges.
"""

from __future__ import annotations

import contextlib

from tensorflow_model_optimization.python.core.quantization.keras import quant_ops

from lstm_transforms._keras import check_model, keras, tf
from lstm_transforms.cells import _RUNNING_MIN_MAX, _QuantizedCellMixin

__all__ = ["calibrate"]


def _batch_range(inputs, symmetric, narrow_range, num_bits):
    """The per-tensor range tfmot's MovingAvgQuantize derives from one batch."""
    batch_min, batch_max = tf.reduce_min(inputs), tf.reduce_max(inputs)
    if symmetric:
        ratio = -1 if narrow_range else -((1 << num_bits) - 2) / (1 << num_bits)
        return tf.minimum(batch_min, batch_max / ratio), tf.maximum(batch_max, batch_min * ratio)
    return tf.minimum(batch_min, 0.0), tf.maximum(batch_max, 0.0)


@contextlib.contextmanager
def _running_min_max_activation_ranges():
    """tfmot's MovingAvgQuantize, with min/max over the calibration batches instead of an EMA."""
    original = quant_ops.MovingAvgQuantize
    seen = set()

    def running(inputs, min_var, max_var, per_channel=False, ema_decay=0.999, name_prefix="MovingAvgQuantize",
                is_training=True, num_bits=8, narrow_range=False, symmetric=False):
        if is_training is True and not per_channel:
            lo, hi = _batch_range(inputs, symmetric, narrow_range, num_bits)
            first = id(min_var) not in seen
            seen.add(id(min_var))
            min_var.assign(lo if first else tf.minimum(min_var, lo))
            max_var.assign(hi if first else tf.maximum(max_var, hi))
            is_training = False  # fake-quantize with the updated range, no EMA
        return original(inputs, min_var, max_var, per_channel=per_channel, ema_decay=ema_decay,
                        name_prefix=name_prefix, is_training=is_training, num_bits=num_bits,
                        narrow_range=narrow_range, symmetric=symmetric)

    quant_ops.MovingAvgQuantize = running
    try:
        yield
    finally:
        quant_ops.MovingAvgQuantize = original


def _all_layers(model):
    """Every layer and cell inside `model`, through quantize wrappers, Bidirectional and RNN cells."""
    found, stack = [], list(model.layers)
    while stack:
        layer = stack.pop()
        found.append(layer)
        for attr in ("layer", "forward_layer", "backward_layer", "cell"):
            inner = getattr(layer, attr, None)
            if isinstance(inner, keras.layers.Layer):
                stack.append(inner)
        stack.extend(getattr(layer, "cells", []) if isinstance(layer, keras.layers.StackedRNNCells) else [])
    return found


@contextlib.contextmanager
def _inference_behaviour(model):
    """BatchNormalization in inference mode, every dropout off; restored on exit."""
    saved = []
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            saved.append((layer, "trainable", layer.trainable))
            layer.trainable = False
        if isinstance(layer, keras.layers.Dropout):
            saved.append((layer, "rate", layer.rate))
            layer.rate = 0.0
        is_cell = hasattr(layer, "state_size") and not isinstance(layer, keras.layers.RNN)
        for attr in ("dropout", "recurrent_dropout") if is_cell else ():
            if getattr(layer, attr, 0) and isinstance(getattr(layer, attr), (int, float)):
                saved.append((layer, attr, getattr(layer, attr)))
                setattr(layer, attr, 0.0)
    try:
        yield
    finally:
        for layer, attr, value in reversed(saved):
            setattr(layer, attr, value)


def calibrate(qat_model, data, *, batch_size=32, passes=1):
    """Set the QAT model's activation ranges to the min / max seen on `data`; returns `qat_model`.

    `data`: a numpy array (samples on axis 0), a list of arrays (one per input), or a generator
    function as for `export_tflite`. Call it after `quantize_model` and before fine-tuning: tfmot's
    ranges otherwise start at [-6, 6] and move slowly (EMA 0.999) on small data sets.
    """
    from lstm_transforms.export._data import calibration_arrays

    check_model(qat_model, "qat_model")
    if batch_size < 1 or passes < 1:
        raise ValueError(f"batch_size and passes must be >= 1, got {batch_size} and {passes}")
    arrays = calibration_arrays(data, qat_model, None)
    cells = [layer for layer in _all_layers(qat_model) if isinstance(layer, _QuantizedCellMixin)]
    for cell in cells:
        cell.quant_observed.assign(0.0)  # the first batch replaces the initial range
    _RUNNING_MIN_MAX.active = True
    try:
        with _running_min_max_activation_ranges(), _inference_behaviour(qat_model):
            for _ in range(passes):
                for start in range(0, len(arrays[0]), batch_size):
                    batch = [a[start : start + batch_size] for a in arrays]
                    qat_model(batch if len(batch) > 1 else batch[0], training=True)
    finally:
        _RUNNING_MIN_MAX.active = False
    return qat_model
