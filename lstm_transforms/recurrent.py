"""Recurrent layers whose loop runs the quantized cells and learns their ranges over every step.

``QuantizedLSTM``/``QuantizedGRU``/``QuantizedSimpleRNN``/``QuantizedRNN`` are subclasses of the
stock tf-keras layers (same weights, same config plus ``quant_*`` keys). In full mode they always
run the per-step loop (the fused backend function hard-codes float sigmoid/tanh and would ignore
every activation quantization point); in weights-only mode LSTM/GRU keep the fused function.

While training, the loop carries two more states: the running minimum and maximum over the steps so
far of the unquantized value of every learned-range quantization point (each cell's
``STATISTICS``; stacked cells included), per batch row, or under XLA without a mask per unit
(`_extremes_per_row`). After the loop they are reduced and folded into the cells' moving-average
ranges: statistics over every step, at the cost of a few reductions per step, with no per-step
tensors kept. Masked steps are skipped like every state update (the per-row extremes are states
the loop masks); the zeros the stock loop outputs at some masked steps, which its statistics used
to include, are added back (`_rows_given_zero_outputs`). No variable is written inside the loop, so
this works unchanged under ``tf.distribute`` strategies.

Inside a quantize wrapper the range updates wait until the wrapped layer's call has finished
(`deferred_range_updates`): an update of a mirrored variable is a cross-replica merge point, where
MirroredStrategy switches replica threads, and the next replica re-points the cells' weight
attributes at *its* fake-quantized weights. A Bidirectional layer would otherwise run its second
direction on another replica's weights.
"""

import contextlib
import threading

from tf_keras.src import backend
from tf_keras.src.utils import generic_utils

from lstm_transforms._keras import keras, tf
from lstm_transforms.cells import QuantizedGRUCell, QuantizedLSTMCell, QuantizedSimpleRNNCell, _QuantizedCellMixin
from lstm_transforms.options import QuantOptions
from lstm_transforms.quantizers import under_xla
from lstm_transforms.walk import cells_of

__all__ = [
    "QuantizedRNN",
    "QuantizedLSTM",
    "QuantizedGRU",
    "QuantizedSimpleRNN",
    "QUANTIZED_LAYERS",
    "deferred_range_updates",
]

_pending = threading.local()


@contextlib.contextmanager
def deferred_range_updates():
    """Within the block, quantized layers queue their range updates; they are applied when it exits."""
    outer = getattr(_pending, "updates", None)
    _pending.updates = queued = []
    try:
        yield
    finally:
        _pending.updates = outer
    for extremes, training in queued:
        _QuantizedLoopMixin._fold_statistics(extremes, training)


def _static(flag):
    """The Python value of a training flag, or None when it is only known at run time."""
    return tf.get_static_value(flag) if tf.is_tensor(flag) else flag


def _quantized_cells(layer):
    return [c for c in cells_of(layer) if isinstance(c, _QuantizedCellMixin) and c.full_quantization]


class _QuantizedLoopMixin:
    """`call` of the quantized layers: tf-keras RNN.call plus range statistics over all steps.

    Layers with a `CELL_CLASS` (LSTM, GRU, SimpleRNN) take the stock layer's arguments plus the
    ``quant_*`` keys of `QuantOptions`, and run that quantized cell in place of the stock one.
    """

    FLOAT_CLASS = keras.layers.RNN
    CELL_CLASS = None

    def __init__(self, *args, **kwargs):
        options = QuantOptions.pop_from(kwargs) if self.CELL_CLASS is not None else None
        super().__init__(*args, **kwargs)
        if options is not None:
            config = {**self.cell.get_config(), **options.to_config()}
            self.cell = self.CELL_CLASS.from_config(config)

    def get_config(self):
        config = super().get_config()
        if self.CELL_CLASS is not None:
            config.update(self.cell.options.to_config())
        return config

    def _fused_allowed(self):
        return False

    def call(self, inputs, mask=None, training=None, initial_state=None, constants=None):
        cells = _quantized_cells(self)
        if not cells:
            if self._fused_allowed():
                return self.FLOAT_CLASS.call(self, inputs, mask=mask, training=training, initial_state=initial_state)
            return keras.layers.RNN.call(
                self, inputs, mask=mask, training=training, initial_state=initial_state, constants=constants
            )
        if training is None:
            training = backend.learning_phase()
        collect = _static(training)
        collect = True if collect is None else bool(collect)
        with _frozen_bounds(cells):
            return self._call_quantized(cells, collect, inputs, mask, training, initial_state, constants)

    def _call_quantized(self, cells, collect, inputs, mask, training, initial_state, constants):
        """tf-keras `RNN.call` and, if `collect`, the range statistics of every step."""
        inputs, row_lengths = backend.convert_inputs_if_ragged(inputs)
        is_ragged_input = row_lengths is not None
        self._validate_args_if_ragged(is_ragged_input, mask)
        inputs, initial_state, constants = self._process_inputs(inputs, initial_state, constants)
        self._maybe_reset_cell_dropout_mask(self.cell)
        if isinstance(self.cell, keras.layers.StackedRNNCells):
            for cell in self.cell.cells:
                self._maybe_reset_cell_dropout_mask(cell)
        if mask is not None:
            mask = tf.nest.flatten(mask)[0]
        timesteps = backend.int_shape(tf.nest.flatten(inputs)[0])[0 if self.time_major else 1]
        kwargs = {"training": training} if generic_utils.has_arg(self.cell.call, "training") else {}
        is_tf_rnn_cell = getattr(self.cell, "_is_tf_rnn_cell", None) is not None
        # (cell, statistic) of each column (per row) or block of columns (per unit) of the two
        # extremes states (minima, maxima).
        layout = [(cell, key) for cell in cells for key in cell.STATISTICS] if collect else []
        per_row = _extremes_per_row(mask, row_lengths)
        widths = [cell.units for cell, _ in layout]  # per unit: the columns of each statistic
        if layout:
            shape = [tf.shape(tf.nest.flatten(initial_state)[0])[0], len(layout)] if per_row else [1, sum(widths)]
            initial_state = list(initial_state) + [tf.fill(shape, float("inf")), tf.fill(shape, -float("inf"))]

        def step(step_inputs, states):
            if constants:
                states, consts = states[: -self._num_constants], states[-self._num_constants :]
            if layout:
                states, (lowest, highest) = states[:-2], states[-2:]
            sink = [] if layout else None
            for cell in cells:
                cell.collect_statistics(sink)
            try:
                states = states[0] if len(states) == 1 and is_tf_rnn_cell else states
                if constants:
                    output, new_states = self.cell(step_inputs, states, constants=consts, **kwargs)
                else:
                    output, new_states = self.cell(step_inputs, states, **kwargs)
            finally:
                for cell in cells:
                    cell.collect_statistics(None)
            if not tf.nest.is_nested(new_states):
                new_states = [new_states]
            if layout:
                step_lowest, step_highest = _step_extremes(layout, sink, per_row)
                # No gradient through the carried extremes either: while_v2 would differentiate them.
                new_states = list(new_states) + [
                    tf.stop_gradient(tf.minimum(lowest, step_lowest)),
                    tf.stop_gradient(tf.maximum(highest, step_highest)),
                ]
            return output, new_states

        last_output, outputs, states = backend.rnn(
            step,
            inputs,
            initial_state,
            constants=constants,
            go_backwards=self.go_backwards,
            mask=mask,
            unroll=self.unroll,
            input_length=row_lengths if row_lengths is not None else timesteps,
            time_major=self.time_major,
            zero_output_for_mask=self.zero_output_for_mask,
            return_all_outputs=self.return_sequences,
        )
        if layout:
            states, (lowest, highest) = list(states[:-2]), states[-2:]
            if per_row:
                padded_length = tf.shape(tf.nest.flatten(inputs)[0])[0 if self.time_major else 1]
                zeros = self._rows_given_zero_outputs(mask, row_lengths, padded_length)
                if zeros is not None:
                    lowest = tf.where(zeros[:, None], tf.minimum(lowest, 0.0), lowest)
                    highest = tf.where(zeros[:, None], tf.maximum(highest, 0.0), highest)
                lowest, highest = tf.reduce_min(lowest, axis=0), tf.reduce_max(highest, axis=0)
            else:
                lowest = tf.stack([tf.reduce_min(block) for block in tf.split(lowest[0], widths)])
                highest = tf.stack([tf.reduce_max(block) for block in tf.split(highest[0], widths)])
            self._queue_statistics(layout, lowest, highest, training)

        if self.stateful:
            updates = [
                tf.compat.v1.assign(self_state, tf.cast(state, self_state.dtype))
                for self_state, state in zip(tf.nest.flatten(self.states), tf.nest.flatten(states))
            ]
            self.add_update(updates)
        if self.return_sequences:
            output = backend.maybe_convert_to_ragged(
                is_ragged_input, outputs, row_lengths, go_backwards=self.go_backwards
            )
        else:
            output = last_output
        if self.return_state:
            states = list(states) if isinstance(states, (list, tuple)) else [states]
            return generic_utils.to_list(output) + states
        return output

    def _rows_given_zero_outputs(self, mask, row_lengths, padded_length):
        """Per batch row, whether `backend.rnn` outputs zeros at one of its masked steps: at all of
        them with `zero_output_for_mask`, else at those before the row's first unmasked step (the
        loop repeats the previous output, zeros at first). The statistics of the stock outputs
        included these zeros. None without masking."""
        if mask is not None:
            kept = tf.cast(mask, tf.bool)
            kept = tf.reshape(kept, tf.shape(kept)[:2])
            kept = kept if self.time_major else tf.transpose(kept)  # (time, batch)
            first_kept = kept[-1] if self.go_backwards else kept[0]
            any_masked = tf.reduce_any(tf.logical_not(kept), axis=0)
        elif row_lengths is not None:  # ragged input: `backend.rnn` masks with the row lengths
            longest = tf.reduce_max(row_lengths) if self.go_backwards else tf.cast(padded_length, row_lengths.dtype)
            first_kept = row_lengths >= longest if self.go_backwards else row_lengths > 0
            any_masked = row_lengths < longest
        else:
            return None
        return any_masked if self.zero_output_for_mask else tf.logical_not(first_kept)

    @staticmethod
    def _queue_statistics(layout, lowest, highest, training):
        """Fold the batch's extremes (`lowest`, `highest`: min and max of each statistic in `layout`)
        into the ranges now, or when the enclosing `deferred_range_updates` block ends."""
        per_cell = {}
        for k, (cell, key) in enumerate(layout):
            per_cell.setdefault(cell, {})[key] = (lowest[k], highest[k])
        queued = getattr(_pending, "updates", None)
        if queued is None:
            _QuantizedLoopMixin._fold_statistics(per_cell, training)
        else:
            queued.append((per_cell, training))

    @staticmethod
    def _fold_statistics(extremes, training):
        def update():
            ops = [op for cell, batch in extremes.items() for op in cell.observe(batch)]
            with tf.control_dependencies(ops):
                return tf.constant(True)

        if _static(training) is None:
            tf.cond(tf.cast(training, tf.bool), update, lambda: tf.constant(False))
        else:
            update()


def _extremes_per_row(mask, row_lengths):
    """Whether the loop carries its statistics' extremes per batch row (else per unit).

    Per row where the loop masks rows (a Keras mask, a ragged input): a masked step then leaves the
    row's extremes as they were. Without XLA per row too: TensorFlow's reductions over the last axis
    are the faster ones. Under XLA, whose CPU backend splits every reduction over the last axis into
    two kernels, per unit: one reduction over the batch per statistic
    (`benchmarks/qat_step_ablation.py` measures both).
    """
    return mask is not None or row_lengths is not None or not under_xla()


def _step_extremes(layout, sink, per_row):
    """(minima, maxima) of each statistic of one step, in `layout` order: per row (batch, len(layout)),
    the extremes over the last axis of each statistic; per unit (1, sum of the cells' units), the
    extremes over the batch. One reduction per statistic and extreme: stacking the statistics
    to reduce them together costs more than the reductions (a Pack of 13 (64, 128) tensors in a
    loop step: 95-130 us; 26 reductions and two concats: about 35 us)."""
    found = {(cell, key): value for cell, key, value in sink}
    if len(found) != len(sink) or set(found) != set(layout):
        reported = [(cell.name, key) for cell, key, _ in sink]
        expected = [(cell.name, key) for cell, key in layout]
        raise RuntimeError(
            f"A quantized step reported the statistics {reported}, expected {expected} (its cells' STATISTICS)."
        )
    values = [tf.cast(found[cell_key], tf.float32) for cell_key in layout]
    axis = -1 if per_row else 0
    lowest = tf.concat([tf.reduce_min(value, axis=axis, keepdims=True) for value in values], axis=-1)
    highest = tf.concat([tf.reduce_max(value, axis=axis, keepdims=True) for value in values], axis=-1)
    return lowest, highest


@contextlib.contextmanager
def _frozen_bounds(cells):
    """Range bounds computed once per call, not once per step."""
    for cell in cells:
        cell.freeze_bounds(True)
    try:
        yield
    finally:
        for cell in cells:
            cell.freeze_bounds(False)


class QuantizedLSTM(_QuantizedLoopMixin, keras.layers.LSTM):
    FLOAT_CLASS = keras.layers.LSTM
    CELL_CLASS = QuantizedLSTMCell

    def _fused_allowed(self):
        return self._could_use_gpu_kernel


class QuantizedGRU(_QuantizedLoopMixin, keras.layers.GRU):
    FLOAT_CLASS = keras.layers.GRU
    CELL_CLASS = QuantizedGRUCell

    def _fused_allowed(self):
        return self._could_use_gpu_kernel


class QuantizedSimpleRNN(_QuantizedLoopMixin, keras.layers.SimpleRNN):
    FLOAT_CLASS = keras.layers.SimpleRNN
    CELL_CLASS = QuantizedSimpleRNNCell


class QuantizedRNN(_QuantizedLoopMixin, keras.layers.RNN):
    """`RNN(cell)` / `RNN(StackedRNNCells)` whose built-in cells are the quantized ones."""

    FLOAT_CLASS = keras.layers.RNN


QUANTIZED_LAYERS = {
    cls.FLOAT_CLASS: cls for cls in (QuantizedLSTM, QuantizedGRU, QuantizedSimpleRNN, QuantizedRNN)
}
