"""How a recurrent step is fake-quantized: tf-keras cells with named quantization points.

Each cell here is a subclass of the stock tf-keras cell (same weights, same config keys plus
``quant_*`` options) whose ``call`` simulates TFLite's integer kernel:

* ``kernel`` / ``recurrent_kernel``: quantized per gate block by the layer's QuantizeConfig
  (see ``configs.py``) and handed to the cell as tensors before every call.
* gate activations (``gates``): fixed range [-1, 1), ``quant_gate_bits`` (16 in the integer LSTM).
* LSTM cell state (``cell_state``): clipped to +-``quant_cell_clip`` (the converter's CellClip), then
  symmetric ``quant_state_bits`` with a power-of-two scale covering its observed max |c|.
* hidden state / layer output (``output``): asymmetric ``quant_activation_bits`` over one learned
  range, the same for the output and for h(t-1) fed back into the next step.

GRU and SimpleRNN have no integer kernel of their own: they deploy as per-step integer ops
(`export/deployed.py`), and their cells simulate exactly that graph instead of the LSTM kernel.
Every tensor of a deployed step is a quantization point: the input projection of each gate block
(``input_z`` ...), the recurrent FULLY_CONNECTED of each gate block (``recurrent_z`` ..., its bias
included), each pre-activation sum (``pre_z`` ...), the GRU's reset product, state delta h(t-1) - hh
and update z * delta, and h (``output``): each with one learned asymmetric range shared by all
steps, which export writes into every step of the flatbuffer. TANH and LOGISTIC outputs are on
TFLite's fixed grids (int8: 1/128 with zero point 0, 1/256 with zero point -128); a ReLU is fused
into the op before it, so its point is the ReLU's output.

Learned ranges are moving averages of per-batch min/max collected over *every* time step by the
layer (``recurrent.py``), never updated inside the loop.
"""

from tf_keras.src import backend

from lstm_transforms._keras import keras, tf
from lstm_transforms.options import QuantOptions
from lstm_transforms.quantizers import asymmetric_bounds, fake_quant_asymmetric, fake_quant_fixed_unit
from lstm_transforms.quantizers import fake_quant_logistic, fake_quant_tanh
from lstm_transforms.quantizers import fake_quant_power_of_two, power_of_two_bounds

__all__ = ["QuantizedLSTMCell", "QuantizedGRUCell", "QuantizedSimpleRNNCell", "QUANTIZED_CELLS", "replica_extreme"]

_BOUNDED = {"sigmoid", "tanh", "hard_sigmoid"}


def _activation_name(fn):
    return keras.activations.serialize(fn) if fn is not None else "linear"


def replica_extreme(value, reduce):
    """`reduce` (tf.reduce_min / tf.reduce_max) of a scalar over every replica in sync.

    Outside a replica context, or with one replica, `value` itself.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return reduce(context.all_gather(tf.reshape(value, [1]), axis=0))


class _QuantizedCellMixin:
    """Options, range variables and statistics shared by the quantized cells.

    The cell takes the stock cell's arguments plus the ``quant_*`` keys of `QuantOptions`.
    """

    FLOAT_CLASS = None
    NUM_GATES = 1
    STATISTICS = ("output",)  # tensors whose per-batch statistics set the learned ranges

    def __init__(self, *args, **kwargs):
        options = QuantOptions.pop_from(kwargs)
        super().__init__(*args, **kwargs)
        object.__setattr__(self, "options", options)
        object.__setattr__(self, "_running_min_max", False)

    def build(self, input_shape):
        super().build(input_shape)
        self._build_ranges()

    def build_from_config(self, config):
        """Nothing: the cell's RNN layer builds it, inside the RNN's name scope (deserialization
        would otherwise build it first, with variable names that lose the layer's prefix)."""

    def get_config(self):
        return {**super().get_config(), **self.options.to_config()}

    @property
    def full_quantization(self):
        return self.options.full

    def use_running_min_max(self, active):
        """While True, `observe` keeps the extremes over every batch (and replica) instead of an EMA.

        A property of the cell, not of the thread: MirroredStrategy's replica threads see it too.
        """
        object.__setattr__(self, "_running_min_max", bool(active))

    @property
    def learned_points(self):
        """The statistics with a learned asymmetric range (``quant_<point>_min`` / ``_max``)."""
        return tuple(point for point in self.STATISTICS if point != "cell_state")

    def _initial_output_range(self):
        bounded = _activation_name(self.activation) == "tanh"
        return (-1.0, 1.0) if bounded else (-6.0, 6.0)

    def _build_ranges(self):
        lo, hi = self._initial_output_range()
        add = lambda name, value: self.add_weight(  # noqa: E731
            name=name,
            shape=(),
            initializer=keras.initializers.Constant(value),
            trainable=False,
            aggregation=tf.VariableAggregation.MEAN,
        )
        self.quant_output_min = add("quant_output_min", lo)
        self.quant_output_max = add("quant_output_max", hi)
        for point in self.learned_points:
            if point != "output":  # intermediates of an unrolled step: wide until first observed
                setattr(self, f"quant_{point}_min", add(f"quant_{point}_min", -6.0))
                setattr(self, f"quant_{point}_max", add(f"quant_{point}_max", 6.0))
        if "cell_state" in self.STATISTICS:
            # Start wide (the clip, or 16 unclipped) so early states are not clamped while learning.
            self.quant_cell_max_abs = add("quant_cell_max_abs", self.options.cell_clip or 16.0)
        self.quant_observed = add("quant_observed", 0.0)
        self.collect_statistics(None)

    def _input_projection(self, inputs, training):
        """(input dropout) x W + input bias: the part of a step that does not depend on the state."""
        dp_mask = self.get_dropout_mask_for_cell(inputs, training, count=1)
        if dp_mask is not None:
            inputs = inputs * dp_mask
        x = backend.dot(inputs, self.kernel)
        bias = self._input_bias()
        return x if bias is None else x + bias

    def freeze_bounds(self, frozen):
        """While True, the fake-quant bounds and the bias are computed and read once (now) instead of
        in every step."""
        bounds = None
        object.__setattr__(self, "_frozen_bias", self._read_bias() if frozen and self.use_bias else None)
        if frozen:
            bounds = {point: asymmetric_bounds(*self.learned_range(point)) for point in self.learned_points}
            if "cell_state" in self.STATISTICS:
                bounds["cell_state"] = power_of_two_bounds(
                    self.quant_cell_max_abs, self.options.state_bits, self.options.cell_clip
                )
        object.__setattr__(self, "_frozen_bounds", bounds)

    def _read_bias(self):
        """The bias as the step uses it (a tensor; for GRU(reset_after=True) its two rows)."""
        return tf.convert_to_tensor(self.bias)

    def _step_bias(self):
        """`_read_bias()`, read once per layer call while `freeze_bounds(True)`."""
        frozen = getattr(self, "_frozen_bias", None)
        return self._read_bias() if frozen is None else frozen

    def _bounds(self, key):
        frozen = getattr(self, "_frozen_bounds", None)
        return None if frozen is None else frozen.get(key)

    def collect_statistics(self, sink):
        """Append (cell, statistic, tensor) to `sink` (a list) on every call; None stops it."""
        object.__setattr__(self, "_stats_sink", sink)  # a plain attribute, not a tracked list

    # -- quantization points ---------------------------------------------------------------
    def _quantize_gate(self, x, activation):
        if not self.full_quantization or _activation_name(activation) not in _BOUNDED:
            return x
        return fake_quant_fixed_unit(x, self.options.gate_bits)

    def learned_range(self, point):
        """(min, max) variables of a learned-range point."""
        return getattr(self, f"quant_{point}_min"), getattr(self, f"quant_{point}_max")

    def _record_statistic(self, x, point):
        if self._stats_sink is not None:
            self._stats_sink.append((self, point, x))

    def _quantize_learned(self, x, point):
        """Asymmetric ``quant_activation_bits`` over the learned range of `point` (an int8 tensor on the device).

        While `calibrate` runs (`use_running_min_max(True)`) the value passes unquantized: each point's
        range is then the extremes of what it computes, not of what the ranges of the points before it,
        still unknown, let through (a wide initial range rounds a small projection to 0, and every
        point after it would see only zeros).
        """
        self._record_statistic(x, point)
        if self._running_min_max:
            return x
        lo, hi = self.learned_range(point)
        return fake_quant_asymmetric(x, lo, hi, self.options.activation_bits, bounds=self._bounds(point))

    def _quantize_output(self, h):
        if not self.full_quantization:
            return h
        return self._quantize_learned(h, "output")

    def _quantize_cell_state(self, c):
        if not self.full_quantization:
            return c
        if self._stats_sink is not None:
            self._stats_sink.append((self, "cell_state", c))  # before the clip: `observe` clips its extremes
        clip = self.options.cell_clip
        return fake_quant_power_of_two(
            c, self.quant_cell_max_abs, self.options.state_bits, bounds=self._bounds("cell_state"), clip=clip
        )

    def observe(self, extremes):
        """Update the learned ranges from {statistic: (min, max) over one batch}: a moving average,
        or the running extremes while `use_running_min_max(True)`."""
        batch_stats = {}
        for point in self.learned_points:
            if point in extremes:
                batch_stats[point + "_min"], batch_stats[point + "_max"] = extremes[point]
        if "cell_state" in extremes:
            lowest, highest = extremes["cell_state"]
            max_abs = tf.maximum(-lowest, highest)  # of c before the clip: max |clip(c)| = min(max |c|, clip)
            clip = self.options.cell_clip
            batch_stats["cell_max_abs"] = tf.minimum(max_abs, clip) if clip else max_abs
        decay = self.options.ema_decay
        seen = self.quant_observed
        updates = []
        for key, value in batch_stats.items():
            var = getattr(self, "quant_" + key)
            if self._running_min_max:  # `lstm_transforms.calibrate`: extremes over every batch and replica
                lowest = key.endswith("_min")
                value = replica_extreme(value, tf.reduce_min if lowest else tf.reduce_max)
                merged = tf.minimum(var, value) if lowest else tf.maximum(var, value)
            else:
                merged = decay * var + (1.0 - decay) * value
            new = tf.where(seen > 0, merged, value)
            updates.append(var.assign(new))
        with tf.control_dependencies(updates):
            updates.append(seen.assign(1.0))
        return updates


class QuantizedLSTMCell(_QuantizedCellMixin, keras.layers.LSTMCell):
    """LSTMCell with TFLite integer-LSTM fake quantization (gates i, f, c, o)."""

    FLOAT_CLASS = keras.layers.LSTMCell
    NUM_GATES = 4
    STATISTICS = ("output", "cell_state")

    def call(self, inputs, states, training=None):
        if not self.full_quantization:
            return super().call(inputs, states, training=training)
        h_tm1, c_tm1 = states[0], states[1]
        rec_dp_mask = self.get_recurrent_dropout_mask_for_cell(h_tm1, training, count=1)
        if rec_dp_mask is not None:
            h_tm1 = h_tm1 * rec_dp_mask
        z = self._input_projection(inputs, training) + tf.matmul(h_tm1, self.recurrent_kernel)
        z_i, z_f, z_c, z_o = tf.split(z, 4, axis=-1)
        act, rec = self.activation, self.recurrent_activation
        i = self._quantize_gate(rec(z_i), rec)
        f = self._quantize_gate(rec(z_f), rec)
        g = self._quantize_gate(act(z_c), act)
        o = self._quantize_gate(rec(z_o), rec)
        c = self._quantize_cell_state(f * c_tm1 + i * g)
        h = self._quantize_output(o * self._quantize_gate(act(c), act))
        return h, [h, c]

    def _input_bias(self):
        return self._step_bias() if self.use_bias else None


class _UnrolledStepMixin:
    """Quantization points of a cell deployed as per-step integer ops (see the module docs)."""

    def _quantize_input_projection(self, x, gate=""):
        """x W (+ input bias) of one gate block: the output of the input FULLY_CONNECTED."""
        return self._quantize_learned(x, _point("input", gate))

    def _quantize_recurrent_projection(self, x, gate=""):
        """h W (+ recurrent bias) of one gate block: the output of a recurrent FULLY_CONNECTED."""
        return self._quantize_learned(x, _point("recurrent", gate))

    def _quantize_activation(self, pre, activation, gate=""):
        """activation(sum) as the device computes it: the ADD's output (`pre_<gate>`) feeds an int8
        TANH / LOGISTIC on its fixed output grid; a ReLU is fused into the ADD (the point is its output);
        other activations are the converter's ops on the quantized sum."""
        name = _activation_name(activation)
        point = _point("pre", gate)
        if name == "relu":
            return self._quantize_learned(activation(pre), point)
        y = activation(self._quantize_learned(pre, point))
        if name == "tanh":
            return fake_quant_tanh(y, self.options.activation_bits)
        if name == "sigmoid":
            return fake_quant_logistic(y, self.options.activation_bits)
        return y


def _point(kind, gate):
    return f"{kind}_{gate}" if gate else kind


class QuantizedGRUCell(_UnrolledStepMixin, _QuantizedCellMixin, keras.layers.GRUCell):
    """GRUCell that simulates the deployed integer step: per gate block an input and a recurrent
    FULLY_CONNECTED, the pre-activation ADDs, LOGISTIC z and r, the reset product, TANH hh, and
    h = hh + z * (h(t-1) - hh) (SUB, MUL, ADD), every tensor on its own learned int8 range."""

    FLOAT_CLASS = keras.layers.GRUCell
    NUM_GATES = 3
    STATISTICS = ("output", "input_z", "input_r", "input_h", "recurrent_z", "recurrent_r", "recurrent_h",
                  "pre_z", "pre_r", "pre_h", "reset_product", "state_delta", "update")

    def call(self, inputs, states, training=None):
        if not self.full_quantization:
            return super().call(inputs, states, training=training)
        h_tm1 = states[0] if tf.nest.is_nested(states) else states
        rec_dp_mask = self.get_recurrent_dropout_mask_for_cell(h_tm1, training, count=1)
        h_in = h_tm1 * rec_dp_mask if rec_dp_mask is not None else h_tm1
        x_z, x_r, x_h = tf.split(self._input_projection(inputs, training), 3, axis=-1)
        x_z = self._quantize_input_projection(x_z, "z")
        x_r = self._quantize_input_projection(x_r, "r")
        x_h = self._quantize_input_projection(x_h, "h")
        act, rec = self.activation, self.recurrent_activation
        if self.reset_after:
            inner = tf.matmul(h_in, self.recurrent_kernel)
            if self.use_bias:
                inner = tf.nn.bias_add(inner, self._step_bias()[1])
            r_z, r_r, r_h = tf.split(inner, 3, axis=-1)
        else:
            r_z, r_r = tf.split(tf.matmul(h_in, self.recurrent_kernel[:, : 2 * self.units]), 2, axis=-1)
        z = self._quantize_activation(x_z + self._quantize_recurrent_projection(r_z, "z"), rec, "z")
        r = self._quantize_activation(x_r + self._quantize_recurrent_projection(r_r, "r"), rec, "r")
        if self.reset_after:
            recurrent = self._quantize_learned(r * self._quantize_recurrent_projection(r_h, "h"), "reset_product")
        else:
            reset = self._quantize_learned(r * h_in, "reset_product")
            recurrent = self._quantize_recurrent_projection(
                tf.matmul(reset, self.recurrent_kernel[:, 2 * self.units :]), "h")
        hh = self._quantize_activation(x_h + recurrent, act, "h")
        delta = self._quantize_learned(h_tm1 - hh, "state_delta")
        h = self._quantize_output(hh + self._quantize_learned(z * delta, "update"))
        new_state = [h] if tf.nest.is_nested(states) else h
        return h, new_state

    def _input_bias(self):
        if not self.use_bias:
            return None
        return self._step_bias()[0] if self.reset_after else self._step_bias()

    def _read_bias(self):
        bias = tf.convert_to_tensor(self.bias)
        return tf.unstack(bias) if self.reset_after else bias


class QuantizedSimpleRNNCell(_UnrolledStepMixin, _QuantizedCellMixin, keras.layers.SimpleRNNCell):
    """SimpleRNNCell that simulates the deployed integer step: the input and recurrent
    FULLY_CONNECTED, their ADD and the activation (TANH / LOGISTIC on its fixed grid; a ReLU fused
    into the ADD, whose output is h)."""

    FLOAT_CLASS = keras.layers.SimpleRNNCell
    NUM_GATES = 1

    @property
    def STATISTICS(self):  # noqa: N802 - the mixin's class attribute, here depending on the activation
        if _activation_name(self.activation) in ("relu", "linear"):
            return ("output", "input", "recurrent")
        return ("output", "input", "recurrent", "pre")

    def call(self, inputs, states, training=None):
        if not self.full_quantization:
            return super().call(inputs, states, training=training)
        h_tm1 = states[0] if tf.nest.is_nested(states) else states
        rec_dp_mask = self.get_recurrent_dropout_mask_for_cell(h_tm1, training)
        h_in = h_tm1 * rec_dp_mask if rec_dp_mask is not None else h_tm1
        x = self._quantize_input_projection(self._input_projection(inputs, training))
        total = x + self._quantize_recurrent_projection(tf.matmul(h_in, self.recurrent_kernel))
        name = _activation_name(self.activation)
        if name in ("relu", "linear"):  # the ADD (its ReLU fused) computes h
            h = self._quantize_output(self.activation(total) if self.activation is not None else total)
        elif name in ("tanh", "sigmoid"):  # h is the TANH / LOGISTIC output, on its fixed grid
            h = self._quantize_activation(total, self.activation)
            self._record_statistic(h, "output")
        else:
            h = self._quantize_output(self._quantize_activation(total, self.activation))
        return h, ([h] if tf.nest.is_nested(states) else h)

    def _input_bias(self):
        return self._step_bias() if self.use_bias else None


QUANTIZED_CELLS = {cls.FLOAT_CLASS: cls for cls in (QuantizedLSTMCell, QuantizedGRUCell, QuantizedSimpleRNNCell)}
