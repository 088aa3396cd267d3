"""The float Keras layers a baked model is made of: what each recurrent layer computes on the device.

`bake.py` replaces every quantized recurrent layer by one `DeployedRNN`, built from plain data
(`RecurrentSpec`: per direction, per cell, the QAT weights and ranges). Its `call` spells out the
graph the converter should see:

* a **fused** LSTM cell is a stock `keras.layers.LSTM` (tanh/sigmoid, bias, no dropout, not
  unrolled, zero initial state, no `return_state`): the only form tf-keras runs through its
  `api_implements`-marked function, which the converter turns into `UNIDIRECTIONAL_SEQUENCE_LSTM`;
  its final h is the last step of its output sequence;
* an **unrolled** cell is written out step by step in integer-friendly ops: one input projection
  per gate for all steps, then per step one recurrent FULLY_CONNECTED per gate and the cell's own
  activation functions. Each gate block is its own weight tensor, so its int8 scale is the QAT
  per-gate scale. The op computing h at step t is named `{tag}_t{t}`: the conversion finds it by
  that name and gives it the cell's QAT range (no FakeQuant in the graph: the converter would push
  a fixed range onto every tensor sharing its scale, and clip them);
* a GRU / SimpleRNN step is exactly the graph its QAT cell simulates (`cells.py`), and every
  intermediate is named after its quantization point: `{tag}_{point}_t{t}` (input projections:
  `{tag}_input_<gate>_tall`), so each gets the cell's learned range of that point at every step.
  They start from an explicit zero state `{tag}_zero_tinit` (the first projection minus itself, on h's
  range), so that step 0 runs the same ops as every other step. Without QAT ranges (a float model,
  `activations="int16"`: no tag) step 0 skips the recurrent terms of the zero state instead (a
  calibrated [0, 0] zero state breaks the next FULLY_CONNECTED);
* time runs backwards as the plan says (`RecurrentSpec.time_reversal`): with SPLIT + CONCATENATION,
  the input is split into its steps once and every direction reads a concatenation of them, in
  reverse order for `go_backwards` (in order otherwise: a tensor feeding both a fused LSTM and the
  SPLIT leaves that LSTM in float). TensorFlow Lite Micro's CONCATENATION takes at most 10 inputs,
  so more steps are concatenated in groups of 10, then the groups. With REVERSE_V2 (time dimension
  None), `tf.reverse`.
  `Bidirectional` runs both directions, puts the backward output sequence back in time order the same
  way and merges (concat / sum / ave / mul / None) as Keras does;
* the outputs are packed in the original layer's (possibly nested) output structure.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lstm_transforms._keras import keras, tf

__all__ = ["FakeQuant", "WithFakeQuant", "CellSpec", "DirectionSpec", "RecurrentSpec", "DeployedRNN"]

FUSED = "fused"
UNROLLED = "unrolled"
# How time is reversed (the plan decides, see plan.py): with a fixed number of steps / with None.
SPLIT_CONCATENATION = "SPLIT + CONCATENATION"
REVERSE_V2 = "REVERSE_V2"
MAX_CONCATENATION_INPUTS = 10  # TensorFlow Lite Micro's kMaxInputNum (concatenation.cc)


class FakeQuant(keras.layers.Layer):
    """`fake_quant_with_min_max_vars` with fixed constants: a QAT activation range, for the converter."""

    def __init__(self, range_min, range_max, num_bits=8, narrow_range=False, **kwargs):
        super().__init__(**kwargs)
        self.range_min, self.range_max = float(range_min), float(range_max)
        self.num_bits, self.narrow_range = int(num_bits), bool(narrow_range)

    @tf.autograph.experimental.do_not_convert
    def call(self, inputs, training=None):
        del training  # the same at training and inference: a fixed range
        return tf.quantization.fake_quant_with_min_max_vars(
            inputs, self.range_min, self.range_max, num_bits=self.num_bits, narrow_range=self.narrow_range
        )

    def get_config(self):
        return dict(super().get_config(), range_min=self.range_min, range_max=self.range_max,
                    num_bits=self.num_bits, narrow_range=self.narrow_range)


class WithFakeQuant(keras.layers.Layer):
    """A float layer followed by its QAT output range (`FakeQuant`)."""

    def __init__(self, layer, fake_quant, **kwargs):
        super().__init__(name=layer.name, **kwargs)
        self.layer, self.fake_quant = layer, fake_quant

    @tf.autograph.experimental.do_not_convert
    def call(self, inputs, training=None, **kwargs):
        if self.layer._call_spec.expects_training_arg:
            kwargs["training"] = training
        return self.fake_quant(self.layer(inputs, **kwargs))


@dataclasses.dataclass
class CellSpec:
    """One recurrent cell as deployed: kind, weights as QAT computes them, and QAT ranges."""

    kind: str  # "lstm", "gru" or "simple_rnn"
    deploy: str  # FUSED or UNROLLED
    units: int
    kernel: np.ndarray  # (features, gates * units)
    recurrent_kernel: np.ndarray  # (units, gates * units)
    bias: np.ndarray | None  # (gates * units,); GRU with reset_after: (2, 3 * units)
    activation: object = "tanh"
    recurrent_activation: object = "sigmoid"
    reset_after: bool = True
    output_range: tuple | None = None  # QAT range of h (asymmetric int8), None: calibrated
    tag: str | None = None  # unrolled: the ops computing h are named f"{tag}_t{step}" (bake.py maps tag -> range)
    cell_bound: float | None = None  # QAT power-of-two bound of the LSTM cell state, None: calibrated
    cell_clip: float | None = None  # QAT clip of the LSTM cell state, None or 0: none
    ranges: dict = dataclasses.field(default_factory=dict)  # GRU / SimpleRNN: QAT range of each point

    @property
    def gates(self):
        return {"lstm": 4, "gru": 3, "simple_rnn": 1}[self.kind]

    def gate_blocks(self, array):
        return np.split(np.asarray(array), self.gates, axis=-1)


@dataclasses.dataclass
class DirectionSpec:
    cells: list  # CellSpec, first to last of a stack
    go_backwards: bool = False
    return_sequences: bool = False


@dataclasses.dataclass
class RecurrentSpec:
    """A recurrent layer (one or two directions) and the nested structure of its outputs."""

    directions: list  # one DirectionSpec, two for Bidirectional (forward, backward)
    bidirectional: bool = False
    merge_mode: str | None = "concat"
    return_state: bool = False
    structure: object = 0  # tf.nest structure of the original layer's outputs
    time_reversal: str = ""  # the plan's: SPLIT_CONCATENATION, REVERSE_V2 or "" (nothing reversed)


def _input_projection(x, kernel, bias, name=None):
    """x (batch, T, F) @ kernel + bias for all steps at once: one FULLY_CONNECTED (its output named `name`)."""
    features, units = kernel.shape
    flat = _recurrent(tf.reshape(x, [-1, features]), kernel, bias)
    return tf.reshape(flat, [-1, x.shape[1], units], name=name)  # the converter names the FC's output after it


def _recurrent(h, recurrent_kernel, bias=None, name=None):
    """h @ kernel (+ bias): one FULLY_CONNECTED, its output named `name` (the converter names a
    FULLY_CONNECTED with a bias after its MatMul)."""
    out = tf.matmul(h, tf.constant(recurrent_kernel, tf.float32), name=name)
    return out if bias is None else out + tf.constant(bias, tf.float32)


def _activation(fn):
    return keras.activations.get(fn) if isinstance(fn, str) or fn is None else fn


def _activation_name(fn):
    try:
        return keras.activations.serialize(fn)
    except ValueError:
        return getattr(fn, "__name__", "")


def _point_name(cell, point, t):
    """The name of the op computing quantization point `point` at step t (None: no tag)."""
    return f"{cell.tag}_{point}_t{t}" if cell.tag else None


def _projected_steps(x, cell, input_bias, gates):
    """Per gate, the list over time of x_t @ W_gate + b_gate, each projection named `{tag}_input_<gate>_tall`."""
    kernels = cell.gate_blocks(cell.kernel)
    biases = cell.gate_blocks(input_bias) if input_bias is not None else [None] * cell.gates
    return [tf.unstack(_input_projection(x, k, b, _point_name(cell, _point("input", g), "all")), axis=1)
            for g, k, b in zip(gates, kernels, biases)]


def _point(kind, gate):
    return f"{kind}_{gate}" if gate else kind


def _zero_state(projected, cell):
    """h = 0 as an op on h's range (the first projected step minus itself: a product with 0 would be
    folded into the next FULLY_CONNECTED's weights), so that step 0 runs every step op."""
    return tf.math.subtract(projected, projected, name=f"{cell.tag}_zero_tinit")


def _activate(a, b, fn, cell, point, t):
    """fn(a + b) as the QAT cell quantizes it: the ADD named `point`, or, for a ReLU (fused into the
    ADD by the converter), the ReLU's output."""
    if _activation_name(fn) == "relu":
        return tf.nn.relu(a + b, name=_point_name(cell, point, t))
    return fn(tf.math.add(a, b, name=_point_name(cell, point, t)))


def _per_gate_steps(x, cell, input_bias, unused_at_start=()):
    """Per gate, the list over time of x_t @ W_gate + b_gate (one projection per gate for all steps).

    Gates in `unused_at_start` are not needed at step 0 (their entry there is None): they project
    steps 1.. only, so that every output of the UNPACK is used (an unused one can leave the whole
    UNPACK in float).
    """
    kernels = cell.gate_blocks(cell.kernel)
    biases = cell.gate_blocks(input_bias) if input_bias is not None else [None] * cell.gates
    steps = []
    for g, (k, b) in enumerate(zip(kernels, biases)):
        if g in unused_at_start:
            rest = tf.unstack(_input_projection(x[:, 1:], k, b), axis=1) if x.shape[1] > 1 else []
            steps.append([None] + rest)
        else:
            steps.append(tf.unstack(_input_projection(x, k, b), axis=1))
    return steps


def _h_name(cell, t):
    """The name of the op computing h at step t (None: no QAT range to find it by)."""
    return f"{cell.tag}_t{t}" if cell.tag else None


def unrolled_lstm(x, cell):
    """LSTM steps in FULLY_CONNECTED / ADD / MUL / activation ops: (outputs per step, [h, c])."""
    act, rec = _activation(cell.activation), _activation(cell.recurrent_activation)
    x_i, x_f, x_c, x_o = _per_gate_steps(x, cell, cell.bias, unused_at_start=(1,))  # no f at step 0: c is 0
    u_i, u_f, u_c, u_o = cell.gate_blocks(cell.recurrent_kernel)
    h = c = None  # zero initial state: the recurrent terms of step 0 vanish
    outputs = []
    for t in range(len(x_i)):
        z = [x_g[t] if h is None else x_g[t] + _recurrent(h, u_g) for x_g, u_g in ((x_i, u_i), (x_c, u_c), (x_o, u_o))]
        i, g, o = rec(z[0]), act(z[1]), rec(z[2])
        c = i * g if c is None else rec(x_f[t] + _recurrent(h, u_f)) * c + i * g
        if cell.cell_clip:
            c = tf.clip_by_value(c, -cell.cell_clip, cell.cell_clip)
        h = tf.math.multiply(o, act(c), name=_h_name(cell, t))
        outputs.append(h)
    return outputs, [h, c]


def unrolled_gru(x, cell):
    """GRU steps (reset_after True or False) as `QuantizedGRUCell` simulates them: (outputs per step, [h])."""
    if not cell.tag:
        return _calibrated_gru(x, cell)
    act, rec = _activation(cell.activation), _activation(cell.recurrent_activation)
    bias = cell.bias
    input_bias, recurrent_bias = (bias[0], bias[1]) if bias is not None and cell.reset_after else (bias, None)
    b_z, b_r, b_h = cell.gate_blocks(recurrent_bias) if recurrent_bias is not None else (None, None, None)
    x_z, x_r, x_h = _projected_steps(x, cell, input_bias, "zrh")
    u_z, u_r, u_h = cell.gate_blocks(cell.recurrent_kernel)
    h = _zero_state(x_z[0], cell)
    outputs = []
    for t in range(len(x_z)):
        name = lambda point: _point_name(cell, point, t)  # noqa: E731,B023
        z = _activate(x_z[t], _recurrent(h, u_z, b_z, name("recurrent_z")), rec, cell, "pre_z", t)
        r = _activate(x_r[t], _recurrent(h, u_r, b_r, name("recurrent_r")), rec, cell, "pre_r", t)
        if cell.reset_after:
            recurrent = tf.math.multiply(r, _recurrent(h, u_h, b_h, name("recurrent_h")), name=name("reset_product"))
        else:
            recurrent = _recurrent(tf.math.multiply(r, h, name=name("reset_product")), u_h, None, name("recurrent_h"))
        hh = _activate(x_h[t], recurrent, act, cell, "pre_h", t)
        delta = tf.math.subtract(h, hh, name=name("state_delta"))
        h = tf.math.add(hh, tf.math.multiply(z, delta, name=name("update")), name=_h_name(cell, t))
        outputs.append(h)
    return outputs, [h]


def unrolled_simple_rnn(x, cell):
    """SimpleRNN steps as `QuantizedSimpleRNNCell` simulates them: (outputs per step, [h])."""
    if not cell.tag:
        return _calibrated_simple_rnn(x, cell)
    act = _activation(cell.activation)
    name = _activation_name(act)
    (x_h,) = _projected_steps(x, cell, cell.bias, [""])
    h = _zero_state(x_h[0], cell)
    outputs = []
    for t in range(len(x_h)):
        recurrent = _recurrent(h, cell.recurrent_kernel, None, _point_name(cell, "recurrent", t))
        if name == "relu":  # the ADD, its ReLU fused, computes h
            h = tf.nn.relu(x_h[t] + recurrent, name=_h_name(cell, t))
        elif name == "linear":
            h = tf.math.add(x_h[t], recurrent, name=_h_name(cell, t))
        else:
            pre = tf.math.add(x_h[t], recurrent, name=_point_name(cell, "pre", t))
            h = _NAMED_ACTIVATIONS[name](pre, name=_h_name(cell, t)) if name in _NAMED_ACTIVATIONS else act(pre)
        outputs.append(h)
    return outputs, [h]


def _calibrated_gru(x, cell):
    """GRU steps without QAT ranges (every range calibrated): step 0 without the recurrent terms of its zero state."""
    act, rec = _activation(cell.activation), _activation(cell.recurrent_activation)
    bias = cell.bias
    input_bias, recurrent_bias = (bias[0], bias[1]) if bias is not None and cell.reset_after else (bias, None)
    b_z, b_r, b_h = cell.gate_blocks(recurrent_bias) if recurrent_bias is not None else (None, None, None)
    reset_unused_at_start = not cell.reset_after or b_h is None  # r multiplies h @ U_h (+ b_h), 0 at step 0
    x_z, x_r, x_h = _per_gate_steps(x, cell, input_bias, unused_at_start=(1,) if reset_unused_at_start else ())
    u_z, u_r, u_h = cell.gate_blocks(cell.recurrent_kernel)
    h = None
    outputs = []
    for t in range(len(x_z)):
        if h is None:  # zero state: h @ U vanishes, the recurrent bias stays
            rz, rr, rh = (None if b is None else tf.constant(b, tf.float32) for b in (b_z, b_r, b_h))
        else:
            rz, rr = _recurrent(h, u_z, b_z), _recurrent(h, u_r, b_r)
            rh = _recurrent(h, u_h, b_h) if cell.reset_after else None
        z = rec(x_z[t] if rz is None else x_z[t] + rz)
        r = None if x_r[t] is None else rec(x_r[t] if rr is None else x_r[t] + rr)
        if cell.reset_after:
            pre = x_h[t] if rh is None else x_h[t] + r * rh
        else:
            pre = x_h[t] if h is None else x_h[t] + _recurrent(r * h, u_h)
        hh = act(pre)
        name = _h_name(cell, t)
        h = tf.math.multiply(1.0 - z, hh, name=name) if h is None else tf.math.add(z * h, (1.0 - z) * hh, name=name)
        outputs.append(h)
    return outputs, [h]


def _calibrated_simple_rnn(x, cell):
    """SimpleRNN steps without QAT ranges: h = activation(x W + b + h U), step 0 without h U."""
    act = _activation(cell.activation)
    named = _NAMED_ACTIVATIONS.get(_activation_name(act))
    (x_h,) = _per_gate_steps(x, cell, cell.bias)
    h = None
    outputs = []
    for t in range(len(x_h)):
        pre = x_h[t] if h is None else x_h[t] + _recurrent(h, cell.recurrent_kernel)
        h = named(pre, name=_h_name(cell, t)) if named else act(pre)
        outputs.append(h)
    return outputs, [h]


# Activations whose TF op can carry a name (the h of a SimpleRNN step); others stay unnamed (calibrated).
_NAMED_ACTIVATIONS = {"relu": tf.nn.relu, "tanh": tf.math.tanh, "sigmoid": tf.math.sigmoid}
_UNROLLED = {"lstm": unrolled_lstm, "gru": unrolled_gru, "simple_rnn": unrolled_simple_rnn}


def _fused_lstm(cell, name):
    """A stock LSTM layer that the converter fuses, holding the cell's QAT weights (zero bias if none)."""
    bias = cell.bias if cell.bias is not None else np.zeros(4 * cell.units, np.float32)

    def constant(value):
        value = np.asarray(value, np.float32)
        return lambda shape, dtype=None, **kwargs: tf.constant(value, dtype or tf.float32)

    return keras.layers.LSTM(
        cell.units, return_sequences=True, name=name, unit_forget_bias=False, kernel_initializer=constant(cell.kernel),
        recurrent_initializer=constant(cell.recurrent_kernel), bias_initializer=constant(bias),
    )


def _concatenated(pieces):
    """tf.concat(pieces, axis=1) in CONCATENATION ops of at most MAX_CONCATENATION_INPUTS inputs each."""
    if len(pieces) <= MAX_CONCATENATION_INPUTS:
        return tf.concat(pieces, axis=1)
    size = MAX_CONCATENATION_INPUTS
    return _concatenated([tf.concat(pieces[k:k + size], axis=1) for k in range(0, len(pieces), size)])


class DeployedRNN(keras.layers.Layer):
    """A recurrent layer as it will run on the device (see the module docs); float, for the converter."""

    def __init__(self, spec, **kwargs):
        super().__init__(**kwargs)
        self.spec = spec
        self._fused = {}
        for d, direction in enumerate(spec.directions):
            for k, cell in enumerate(direction.cells):
                if cell.deploy == FUSED:
                    self._fused[f"d{d}_c{k}"] = _fused_lstm(cell, f"{self.name}_d{d}_c{k}")

    @tf.autograph.experimental.do_not_convert
    def call(self, inputs, training=None):
        del training  # inference: dropout off
        spec = self.spec
        steps = self._split_steps(inputs)
        results = [self._direction(self._direction_input(inputs, steps, direction), d, direction)
                   for d, direction in enumerate(spec.directions)]
        outputs = [sequence for sequence, _ in results]
        states = [state for _, direction_states in results for state in direction_states]
        if spec.bidirectional:
            forward, backward = outputs
            if spec.directions[1].return_sequences:
                backward = self._reversed(backward)
            outputs = self._merge(forward, backward)
        flat = list(outputs) + (states if spec.return_state else [])
        return tf.nest.pack_sequence_as(spec.structure, flat)

    def _merge(self, forward, backward):
        mode = self.spec.merge_mode
        if mode == "concat":
            return [tf.concat([forward, backward], -1)]
        if mode == "sum":
            return [forward + backward]
        if mode == "ave":
            return [(forward + backward) / 2.0]
        if mode == "mul":
            return [forward * backward]
        return [forward, backward]

    def _split_steps(self, x):
        """The input's time steps (one SPLIT) when time is reversed by SPLIT + CONCATENATION, else None."""
        return tf.split(x, x.shape[1], axis=1) if self.spec.time_reversal == SPLIT_CONCATENATION else None

    def _direction_input(self, x, steps, direction):
        """What one direction reads: the input, in reverse time order for `go_backwards`."""
        if steps is not None:  # a concatenation in order too: see the module docs
            return _concatenated(steps[::-1] if direction.go_backwards else steps)
        return tf.reverse(x, [1]) if direction.go_backwards else x

    def _reversed(self, sequence):
        """`sequence` (batch, T, ...) in reverse time order, in the plan's form."""
        if self.spec.time_reversal == SPLIT_CONCATENATION:
            return _concatenated(tf.split(sequence, sequence.shape[1], axis=1)[::-1])
        return tf.reverse(sequence, [1])

    def _direction(self, sequence, d, direction):
        """(output, flat final states) of one direction, on its (already time-ordered) input."""
        states, last = [], None
        for k, cell in enumerate(direction.cells):
            if cell.deploy == FUSED:
                sequence = self._fused[f"d{d}_c{k}"](sequence)
                last = sequence[:, -1]
                states += [last, tf.zeros_like(last)]  # c is no output of the fused op: the plan checks it is unused
            else:
                more = k + 1 < len(direction.cells) or direction.return_sequences
                steps, cell_states = _UNROLLED[cell.kind](sequence, cell)
                last = steps[-1]
                sequence = tf.stack(steps, axis=1) if more else None
                states += cell_states
        return (sequence if direction.return_sequences else last), states
