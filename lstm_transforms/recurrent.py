"""Recurrent layers whose loop runs the quantized cells and learns their ranges over every step.

``QuantizedLSTM``/``QuantizedGRU``/``QuantizedSimpleRNN``/``QuantizedRNN`` are subclasses of the
stock tf-keras layers (same weights, same config plus ``quant_*`` keys). In full mode they always
run the per-step loop (the fused backend function hard-codes float sigmoid/tanh and would ignore
every activation quantization point); in weights-only mode LSTM/GRU keep the fused function.

While training, each step also emits the unquantized value of every learned-range quantization
point of every quantized cell (stacked cells included) next to its output; after the loop they are
reduced over batch and time and folded into the cells' moving-average ranges. No variable is written inside
the loop, so this works unchanged under ``tf.distribute`` strategies.

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
    for layout, stats, training in queued:
        _QuantizedLoopMixin._fold_statistics(layout, stats, training)


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
        for cell in cells:  # range bounds: once per call, not once per step
            cell.freeze_bounds(True)
        try:
            if not collect:
                return keras.layers.RNN.call(
                    self, inputs, mask=mask, training=training, initial_state=initial_state, constants=constants
                )
            return self._call_collecting(cells, inputs, mask, training, initial_state, constants)
        finally:
            for cell in cells:
                cell.freeze_bounds(False)

    def _call_collecting(self, cells, inputs, mask, training, initial_state, constants):
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
        timesteps = backend.int_shape(inputs)[0 if self.time_major else 1]
        kwargs = {"training": training} if generic_utils.has_arg(self.cell.call, "training") else {}
        layout = []  # (cell, key) of every statistics column, fixed by the first trace of the step

        def step(step_inputs, states):
            sink = []
            for cell in cells:
                cell.collect_statistics(sink)
            try:
                if constants:
                    consts, states = states[-self._num_constants :], states[: -self._num_constants]
                    output, new_states = self.cell(step_inputs, states, constants=consts, **kwargs)
                else:
                    output, new_states = self.cell(step_inputs, states, **kwargs)
            finally:
                for cell in cells:
                    cell.collect_statistics(None)
            if not tf.nest.is_nested(new_states):
                new_states = [new_states]
            layout[:] = [(cell, key, value.shape[-1]) for cell, key, value in sink]
            return tf.concat([output] + [tf.cast(value, output.dtype) for _, _, value in sink], axis=-1), new_states

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
            return_all_outputs=True,
        )
        width = sum(columns for _, _, columns in layout)
        stats = outputs[..., -width:]
        outputs, last_output = outputs[..., :-width], last_output[..., :-width]
        queued = getattr(_pending, "updates", None)
        if queued is None:
            self._fold_statistics(layout, stats, training)
        else:
            queued.append((layout, stats, training))

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

    @staticmethod
    def _fold_statistics(layout, stats, training):
        per_cell, start = {}, 0
        for cell, key, columns in layout:
            per_cell.setdefault(cell, {})[key] = stats[..., start : start + columns]
            start += columns

        def update():
            ops = [op for cell, batch in per_cell.items() for op in cell.observe(batch)]
            with tf.control_dependencies(ops):
                return tf.constant(True)

        if _static(training) is None:
            tf.cond(tf.cast(training, tf.bool), update, lambda: tf.constant(False))
        else:
            update()


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
