"""Quantizers tfmot lacks: per-gate weight blocks and the fixed/power-of-two ranges of the integer LSTM.

Every function here is a fake-quant op with a straight-through gradient for the tensor and no
gradient for its range, so it trains like tfmot's own quantizers.

Under XLA (`jit_compile=True`) the activation fake quants keep TensorFlow's forward op but take
their gradient from a mask computed in the forward pass (`_masked_straight_through`): a recurrent
loop then saves one boolean per element for the backward pass instead of the op's float input
(`benchmarks/qat_step_ablation.py`: the GRU's QAT step, 16 fake quants per time step, about 10%
faster). Without XLA, TensorFlow's own gradient op is the faster one (one kernel instead of three).
"""

from tensorflow.python.ops import control_flow_util
from tensorflow_model_optimization.python.core.quantization.keras import quantizers as tfmot_quantizers

from lstm_transforms._keras import tf

__all__ = [
    "PerGateWeightQuantizer",
    "fake_quant_fixed_unit",
    "fake_quant_tanh",
    "fake_quant_logistic",
    "fake_quant_asymmetric",
    "fake_quant_power_of_two",
    "power_of_two_bound",
    "power_of_two_bounds",
    "asymmetric_bounds",
]


def _round_half_away_from_zero(x):
    """`std::round` for x >= 0 (tf.round rounds halves to even)."""
    floor = tf.floor(x)
    return tf.where(x - floor >= 0.5, floor + 1.0, floor)


def _nudged_range(range_min, range_max, quant_min, quant_max):
    """TensorFlow's `Nudge` (fake_quant_ops_functor.h), elementwise in float32: the range moved so
    that 0 is a grid point. Returns (nudged_min, nudged_max, scale, inverse scale)."""
    qmin, qmax = float(quant_min), float(quant_max)
    scale = (range_max - range_min) / (qmax - qmin)
    inv_scale = (qmax - qmin) / (range_max - range_min)
    zero_point = _round_half_away_from_zero(tf.clip_by_value(qmin - range_min / scale, qmin, qmax))
    return (qmin - zero_point) * scale, (qmax - zero_point) * scale, scale, inv_scale


def under_xla():
    """Whether the graph being built is compiled by XLA (a `jit_compile=True` function, or inside one)."""
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def _masked_straight_through(quantize, x, pass_lo, pass_top):
    """`quantize(x)` with the gradient dy where pass_lo <= x <= pass_top, else 0 (the straight-through
    gradient of TensorFlow's fake-quant ops), its mask computed in the forward pass."""

    @tf.custom_gradient
    def fake_quant(v):
        inside = (v >= pass_lo) & (v <= pass_top)

        def grad(dy):
            return tf.where(inside, dy, tf.zeros_like(dy))

        return quantize(v), grad

    return fake_quant(x)


def _fake_quant_args(x, lo, top, num_bits):
    """`fake_quant_with_min_max_args` over [lo, top] (a range already on its grid: 0 a grid point)."""

    def quantize(v):
        return tf.quantization.fake_quant_with_min_max_args(v, min=lo, max=top, num_bits=num_bits)

    return _masked_straight_through(quantize, x, lo, top) if under_xla() else quantize(x)


def fake_quant_per_gate(kernel, num_gates, num_bits):
    """Symmetric narrow-range fake quant with one scale per gate block (max |w| / (2^(b-1) - 1)).

    Bit for bit `tf.quantization.fake_quant_with_min_max_vars_per_channel(kernel, -bound, bound,
    num_bits, narrow_range=True)` with the bound repeated over each block's columns, and its input
    gradient (straight through inside the nudged range), written as elementwise ops over the
    `(in, num_gates, units)` view: TensorFlow's per-channel kernels loop over the columns one
    strided slice at a time (37 ms for a 512-unit LSTM kernel on CPU, against 9 ms here).
    """
    blocks = tf.reshape(kernel, [tf.shape(kernel)[0], num_gates, -1])
    bound = tf.stop_gradient(tf.maximum(tf.reduce_max(tf.abs(blocks), axis=[0, 2], keepdims=True), 1e-8))
    nudged_min, nudged_max, scale, inv_scale = _nudged_range(-bound, bound, 1, 2**num_bits - 1)
    quant_zero = tf.floor(-nudged_min * inv_scale + 0.5)

    @tf.custom_gradient
    def fake_quant(w):
        clamped = tf.maximum(tf.minimum(w, nudged_max), nudged_min)
        quantized = tf.floor((clamped - nudged_min) * inv_scale - quant_zero + 0.5) * scale

        def grad(dy):
            return dy * tf.cast((w >= nudged_min) & (w <= nudged_max), dy.dtype)

        return quantized, grad

    return tf.reshape(fake_quant(blocks), tf.shape(kernel))


class PerGateWeightQuantizer(tfmot_quantizers.Quantizer):
    """int-N symmetric weight quantizer with one scale per gate block of a fused RNN kernel.

    TFLite's integer LSTM stores each gate matrix (input, forget, cell, output) as its own
    tensor with its own per-tensor scale; GRU has three blocks (z, r, h), SimpleRNN one.
    """

    def __init__(self, num_gates, num_bits=8):
        if num_gates < 1:
            raise ValueError(f"num_gates must be >= 1, got {num_gates}")
        if not 2 <= num_bits <= 8:
            raise ValueError(f"weight num_bits must be in [2, 8], got {num_bits}")
        self.num_gates = int(num_gates)
        self.num_bits = int(num_bits)

    def build(self, tensor_shape, name, layer):
        if tensor_shape[-1] % self.num_gates:
            raise ValueError(
                f"Weight '{name}' of layer '{layer.name}' has last dimension {tensor_shape[-1]}, "
                f"not divisible into {self.num_gates} gate blocks."
            )
        return {}

    def __call__(self, inputs, training, weights, **kwargs):
        return fake_quant_per_gate(inputs, self.num_gates, self.num_bits)

    def get_config(self):
        return {"num_gates": self.num_gates, "num_bits": self.num_bits}

    def __eq__(self, other):
        return isinstance(other, PerGateWeightQuantizer) and self.get_config() == other.get_config()

    def __ne__(self, other):
        return not self == other


def fake_quant_fixed_unit(x, num_bits):
    """Fixed range [-1, 1) with scale 2^-(b-1): the int16 gate outputs of TFLite's integer LSTM."""
    return _fake_quant_args(x, -1.0, 1.0 - 2.0 ** (1 - num_bits), num_bits)


def fake_quant_tanh(x, num_bits=8):
    """TFLite's integer TANH output: fixed range [-1, 1), scale 2^-(b-1), zero point 0 (int8: 1/128)."""
    return fake_quant_fixed_unit(x, num_bits)


def fake_quant_logistic(x, num_bits=8):
    """TFLite's integer LOGISTIC output: fixed range [0, 1), scale 2^-b, lowest code at 0 (int8: 1/256, -128)."""
    return _fake_quant_args(x, 0.0, 1.0 - 2.0**-num_bits, num_bits)


def asymmetric_bounds(range_min, range_max):
    """The [lo, hi] an asymmetric fake quant uses for a learned [min, max]: 0 inside, never empty."""
    lo = tf.stop_gradient(tf.minimum(range_min, 0.0))
    hi = tf.stop_gradient(tf.maximum(range_max, lo + 1e-6))
    return lo, hi


def fake_quant_asymmetric(x, range_min, range_max, num_bits, bounds=None):
    """Asymmetric fake quant over a learned [min, max] (TFLite int8 activation).

    `bounds`: `asymmetric_bounds(range_min, range_max)` computed once outside a loop (optional).
    """
    lo, hi = bounds if bounds is not None else asymmetric_bounds(range_min, range_max)
    def quantize(v):
        return tf.quantization.fake_quant_with_min_max_vars(v, lo, hi, num_bits=num_bits)

    if not under_xla():
        return quantize(x)
    pass_lo, pass_top, _, _ = _nudged_range(lo, hi, 0, 2**num_bits - 1)
    return _masked_straight_through(quantize, x, pass_lo, pass_top)


def power_of_two_bound(max_abs):
    """Smallest power of two >= max_abs (at least 2^-8): the integer LSTM's cell-state range."""
    max_abs = tf.maximum(max_abs, 2.0**-8)
    return tf.pow(2.0, tf.math.ceil(tf.math.log(max_abs) / tf.math.log(2.0)))


def power_of_two_bounds(max_abs, num_bits, clip=0.0):
    """The symmetric power-of-two fake quant covering `max_abs`, after a clip to +-`clip` (0: none):
    (lo, top) = (-bound, bound * (1 - 2^(1-b))), and (pass_lo, pass_top), the interval where its
    gradient passes straight through (inside the clip and inside TensorFlow's nudged range)."""
    bound = tf.stop_gradient(power_of_two_bound(max_abs))
    lo, top = -bound, bound * (1.0 - 2.0 ** (1 - num_bits))
    pass_lo, pass_top, _, _ = _nudged_range(lo, top, 0, 2**num_bits - 1)
    if clip:
        pass_lo, pass_top = tf.maximum(pass_lo, -clip), tf.minimum(pass_top, clip)
    return lo, top, pass_lo, pass_top


def fake_quant_power_of_two(x, max_abs, num_bits, bounds=None, clip=0.0):
    """Symmetric fake quant with a power-of-two scale covering `max_abs` (bound / 2^(b-1)).

    `clip` > 0: `x` is clipped to +-clip first (the converter's CellClip). The gradient of clip and
    fake quant together is one straight-through mask, the values that differentiating both ops
    gives, in a third of the ops: a recurrent loop runs it once per step.
    `bounds`: `power_of_two_bounds(max_abs, num_bits, clip)` computed once outside a loop (optional).
    """
    lo, top, pass_lo, pass_top = bounds if bounds is not None else power_of_two_bounds(max_abs, num_bits, clip)

    def quantize(v):
        clipped = tf.clip_by_value(v, -clip, clip) if clip else v
        return tf.quantization.fake_quant_with_min_max_vars(clipped, lo, top, num_bits=num_bits)

    if under_xla():
        return _masked_straight_through(quantize, x, pass_lo, pass_top)

    @tf.custom_gradient
    def fake_quant(v):
        def grad(dy):
            return dy * tf.cast((v >= pass_lo) & (v <= pass_top), dy.dtype)

        return quantize(v), grad

    return fake_quant(x)
