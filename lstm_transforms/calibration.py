"""Initialise every learned range of a QAT model from data, before fine-tuning.

tfmot's activation ranges start at [-6, 6] and follow an exponential moving average with decay 0.999:
after a few hundred training steps (a small data set) they have moved a fraction of the way to the
real ranges, so values beyond them are clipped during the whole fine-tune, and those ranges are the
ones exported. `calibrate` sets them the way TFLite's calibrator does, to the minimum / maximum seen
over the data, in one or more passes of forward calls:

- tfmot's moving-average activation quantizers (layer outputs, ReLU outputs, ...) and our recurrent
  cells' output / cell-state ranges take the extremes over every batch;
- the model input ranges (tfmot's AllValuesQuantizer) too, from this data only;
- weight ranges are set from the weights;
- BatchNormalization runs in inference mode (its moving statistics, not batch statistics, and they
  are not updated); Dropout and recurrent dropout are off.

Nothing else changes: no weight is updated. Fine-tuning afterwards continues with the usual
moving averages from these ranges.

The running min / max rule is switched on for *this model's* quantizers and cells (no process-wide
patch), so every thread that runs the model meanwhile applies it: a model built under a
`tf.distribute` strategy is calibrated on all its replicas, and the extremes are taken over them.
"""

from __future__ import annotations

import contextlib

import numpy as np
from tensorflow_model_optimization.python.core.quantization.keras import quantizers as tfmot_quantizers
from tensorflow_model_optimization.python.core.quantization.keras.quantize_layer import QuantizeLayer

from lstm_transforms import data as data_mod
from lstm_transforms._keras import check_model, keras, tf
from lstm_transforms.cells import _QuantizedCellMixin, replica_extreme
from lstm_transforms.walk import is_cell, walk
from lstm_transforms.wrappers import is_quantize_wrapper

__all__ = ["calibrate"]


def _batch_range(inputs, quantizer):
    """The per-tensor range tfmot's MovingAvgQuantize / AllValuesQuantize derives from one batch."""
    batch_min, batch_max = tf.reduce_min(inputs), tf.reduce_max(inputs)
    if quantizer.symmetric:
        bits = quantizer.num_bits
        ratio = -1 if quantizer.narrow_range else -((1 << bits) - 2) / (1 << bits)
        lo = tf.minimum(batch_min, batch_max / ratio)
        # AllValuesQuantize derives the top from the new bottom, MovingAvgQuantize from the batch's.
        bottom = lo if isinstance(quantizer, tfmot_quantizers.AllValuesQuantizer) else batch_min
        return lo, tf.maximum(batch_max, bottom * ratio)
    return tf.minimum(batch_min, 0.0), tf.maximum(batch_max, 0.0)


def _replica_id():
    context = tf.distribute.get_replica_context()
    return 0 if context is None else int(tf.get_static_value(context.replica_id_in_sync_group))


def _assign_on_every_replica(var, value):
    """`var.assign(value)` where `value` is the same on every replica (also for aggregation NONE)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return var.assign(value)

    def merge(strategy, var, value):
        value = strategy.extended.reduce_to(tf.distribute.ReduceOp.MEAN, value, var)
        return strategy.extended.update(var, lambda v, x: v.assign(x), args=(value,))

    return context.merge_call(merge, args=(var, value))


class _RunningMinMaxQuantizer:
    """Stands in for one of tfmot's activation quantizers (MovingAverageQuantizer, AllValuesQuantizer)
    while `calibrate` runs: in training mode its range becomes the min / max over every batch of
    this calibration, on every replica, then it fake-quantizes with that range (no EMA)."""

    def __init__(self, quantizer, seen):
        self.quantizer = quantizer
        self._seen = seen  # (replica, variable id) pairs already given their first batch

    def __call__(self, inputs, training, weights, **kwargs):
        if training is True:
            q = self.quantizer
            lo, hi = _batch_range(inputs, q)
            lo, hi = replica_extreme(lo, tf.reduce_min), replica_extreme(hi, tf.reduce_max)
            min_var, max_var = weights["min_var"], weights["max_var"]
            key = (_replica_id(), id(min_var))
            if key in self._seen:
                lo, hi = tf.minimum(min_var, lo), tf.maximum(max_var, hi)
            self._seen.add(key)
            _assign_on_every_replica(min_var, lo)
            _assign_on_every_replica(max_var, hi)
            training = False
        return self.quantizer(inputs, training, weights, **kwargs)


def _replaceable(quantizer):
    kinds = (tfmot_quantizers.MovingAverageQuantizer, tfmot_quantizers.AllValuesQuantizer)
    return isinstance(quantizer, kinds) and not quantizer.per_axis


@contextlib.contextmanager
def _running_min_max(model):
    """Running min / max for this model's tfmot activation quantizers and recurrent cells."""
    seen, restore = set(), []

    def replace(owner, attr):
        quantizer = getattr(owner, attr)
        if _replaceable(quantizer):
            restore.append((owner, attr, quantizer))
            object.__setattr__(owner, attr, _RunningMinMaxQuantizer(quantizer, seen))

    cells = []
    for layer in walk(model):
        if isinstance(layer, QuantizeLayer):
            replace(layer, "quantizer")
        if is_quantize_wrapper(layer):
            for activation in getattr(layer, "_quantize_activations", []):
                replace(activation, "quantizer")
            outputs = getattr(layer, "_output_quantizers", None) or []
            for k, quantizer in enumerate(outputs):
                if _replaceable(quantizer):
                    restore.append((outputs, k, quantizer))
                    outputs[k] = _RunningMinMaxQuantizer(quantizer, seen)
        if isinstance(layer, _QuantizedCellMixin):
            cells.append(layer)
    for cell in cells:
        cell.quant_observed.assign(0.0)  # the first batch replaces the initial range
        cell.use_running_min_max(True)
    try:
        yield
    finally:
        for cell in cells:
            cell.use_running_min_max(False)
        for owner, key, quantizer in reversed(restore):
            if isinstance(key, int):
                owner[key] = quantizer
            else:
                object.__setattr__(owner, key, quantizer)


@contextlib.contextmanager
def _inference_behaviour(model):
    """BatchNormalization in inference mode, every dropout off; restored on exit."""
    saved = []
    for layer in walk(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            saved.append((layer, "trainable", layer.trainable))
            layer.trainable = False
        if isinstance(layer, keras.layers.Dropout):
            saved.append((layer, "rate", layer.rate))
            layer.rate = 0.0
        for attr in ("dropout", "recurrent_dropout") if is_cell(layer) else ():
            if getattr(layer, attr, 0) and isinstance(getattr(layer, attr), (int, float)):
                saved.append((layer, attr, getattr(layer, attr)))
                setattr(layer, attr, 0.0)
    try:
        yield
    finally:
        for layer, attr, value in reversed(saved):
            setattr(layer, attr, value)


def _strategy(model):
    """The tf.distribute strategy the model was built under, when it has several replicas, else None."""
    strategy = getattr(model, "_distribution_strategy", None)
    return strategy if strategy is not None and strategy.num_replicas_in_sync > 1 else None


def _forward(model, batch, strategy):
    """One training-mode call of `model` on `batch` (split over the replicas of `strategy`)."""
    single = len(batch) == 1
    if strategy is None or len(batch[0]) < strategy.num_replicas_in_sync:
        model(batch[0] if single else batch, training=True)
        return
    parts = [np.array_split(a, strategy.num_replicas_in_sync) for a in batch]

    def replica_inputs(context):
        mine = [p[context.replica_id_in_sync_group] for p in parts]
        return mine[0] if single else mine

    inputs = strategy.experimental_distribute_values_from_function(replica_inputs)
    strategy.run(lambda x: model(x, training=True), args=(inputs,))


def calibrate(qat_model, data, *, batch_size=32, passes=1):
    """Set the QAT model's activation ranges to the min / max seen on `data`; returns `qat_model`.

    `data`: a numpy array (samples on axis 0), a list of arrays (one per input), a generator
    function (TFLite's representative_dataset convention) or a `tf.data.Dataset` of inputs or of
    `(inputs, labels)` tuples, batched or not; it is read in batches of `batch_size`, never all at
    once. Call it after `quantize_model` and before fine-tuning: tfmot's ranges otherwise start at
    [-6, 6] and move slowly (EMA 0.999) on small data sets. A model built under a `tf.distribute`
    strategy is calibrated on all its replicas.
    """
    check_model(qat_model, "qat_model")
    if batch_size < 1 or passes < 1:
        raise ValueError(f"batch_size and passes must be >= 1, got {batch_size} and {passes}")
    strategy = _strategy(qat_model)
    with _running_min_max(qat_model), _inference_behaviour(qat_model):
        for _ in range(passes):
            for batch in data_mod.batches(data, qat_model, batch_size, name="data"):
                _forward(qat_model, batch, strategy)
    return qat_model
