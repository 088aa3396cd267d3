"""A numpy emulation of TFLite's integer UNIDIRECTIONAL_SEQUENCE_LSTM (8x8->16), bit for bit.

The fully-integer kernel (TFLite `lstm_eval.cc`, `EvalInteger8x8_16`, without layer norm, peephole,
projection or CIFG) computes, per step and per gate:

* gate pre-activation in Q3.12 (int16): the input part ``x W_x + bias - zp_x * rowsum(W_x)`` and the
  recurrent part ``h W_h - zp_h * rowsum(W_h)`` are each rescaled from int32 to Q3.12
  (``MultiplyByQuantizedMultiplier``) and added, each addition saturating to int16;
* the gates in Q0.15: gemmlowp's fixed-point ``logistic`` (i, f, o) and ``tanh`` (cell gate) on int16;
* the cell state (int16, scale 2**cell_scale): ``f*c >> 15`` and ``i*g >> (30 + cell_scale)``, each
  rounded, then a saturating add and the clip;
* the output: gemmlowp ``tanh`` of the cell state (15 + cell_scale integer bits), ``o * tanh(c)``
  rescaled to the hidden intermediate's int8 scale and zero point.

`IntegerLSTM.run` reproduces the interpreter's output tensor exactly (tests/test_integer_lstm.py).
Each stage is a method, so a test or a study can swap one for a float version (`FloatStages`) and
measure what that stage contributes.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

INT16_MIN, INT16_MAX = -32768, 32767
GATES = ("input", "forget", "cell", "output")
# Input positions of UNIDIRECTIONAL_SEQUENCE_LSTM (TFLite lstm_shared.h).
_INPUT_WEIGHTS = {"input": 1, "forget": 2, "cell": 3, "output": 4}
_RECURRENT_WEIGHTS = {"input": 5, "forget": 6, "cell": 7, "output": 8}
_BIASES = {"input": 12, "forget": 13, "cell": 14, "output": 15}
_OUTPUT_STATE, _CELL_STATE = 18, 19


# -- fixed-point primitives (gemmlowp / TFLite), on int64 numpy arrays ----------------------------

def _wrap16(x):
    """int16 two's-complement wrap (what a C cast to int16_t does)."""
    return ((np.asarray(x, np.int64) + 32768) & 0xFFFF) - 32768


def _trunc_div(a, b):
    """C integer division (rounds toward zero)."""
    q = np.abs(a) // b
    return np.where(a < 0, -q, q)


def rounding_divide_by_pot(x, exponent):
    """gemmlowp RoundingDivideByPOT: x / 2**exponent rounded to nearest, ties away from zero."""
    x = np.asarray(x, np.int64)
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def srdhm32(a, b):
    """gemmlowp SaturatingRoundingDoublingHighMul on int32."""
    a = np.asarray(a, np.int64)
    ab = a * np.int64(b)
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    out = _trunc_div(ab + nudge, 1 << 31)
    return np.where((a == b) & (a == -(1 << 31)), (1 << 31) - 1, out)


def multiply_by_quantized_multiplier(x, multiplier, shift):
    """TFLite MultiplyByQuantizedMultiplier (double rounding, the default build)."""
    left, right = max(shift, 0), max(-shift, 0)
    return rounding_divide_by_pot(srdhm32(np.asarray(x, np.int64) * (1 << left), multiplier), right)


def quantize_multiplier(real):
    """TFLite QuantizeMultiplier: real = multiplier * 2**(shift - 31), multiplier in [2**30, 2**31)."""
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(real)
    q_fixed = int(math.copysign(math.floor(abs(q) * (1 << 31) + 0.5), q))  # std::round
    if q_fixed == 1 << 31:
        q_fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    if shift > 30:
        return (1 << 31) - 1, 30
    return q_fixed, shift


# -- gemmlowp FixedPoint<int16_t, k> logistic and tanh ----------------------------------------------

def _srdhm16(a, b):
    ab = np.asarray(a, np.int64) * np.asarray(b, np.int64)
    nudge = np.where(ab >= 0, 1 << 14, 1 - (1 << 14))
    out = _wrap16(_trunc_div(ab + nudge, 1 << 15))
    return np.where((a == b) & (np.asarray(a) == INT16_MIN), INT16_MAX, out)


def _sat_shift_left16(x, exponent):
    """SaturatingRoundingMultiplyByPOT<exponent> on int16, exponent >= 0 (negative: rounding shift)."""
    if exponent < 0:
        return rounding_divide_by_pot(x, -exponent)
    if exponent == 0:
        return x
    threshold = (1 << (15 - exponent)) - 1
    return np.where(x > threshold, INT16_MAX, np.where(x < -threshold, INT16_MIN, _wrap16(x << exponent)))


def _constant16(raw32):
    """GEMMLOWP_CHECKED_FIXEDPOINT_CONSTANT for int16: the int32 raw value rounded down 16 bits."""
    return int(rounding_divide_by_pot(np.int64(raw32), 16))


def _rounding_half_sum16(a, b):
    s = np.asarray(a, np.int64) + b
    return _wrap16(_trunc_div(s + np.where(s >= 0, 1, -1), 2))


def _exp_on_interval_between_negative_one_quarter_and_0_excl(a):
    constant_term = _constant16(1895147668)
    one_third = _constant16(715827883)
    x = _wrap16(a + (1 << 12))
    x2 = _srdhm16(x, x)
    x3 = _srdhm16(x2, x)
    x4 = _srdhm16(x2, x2)
    x4_over_4 = rounding_divide_by_pot(x4, 2)
    poly = rounding_divide_by_pot(_wrap16(_srdhm16(_wrap16(x4_over_4 + x3), one_third) + x2), 1)
    return np.clip(constant_term + _srdhm16(constant_term, _wrap16(x + poly)), INT16_MIN, INT16_MAX)


def _exp_on_negative_values(a, integer_bits):
    fractional = 15 - integer_bits
    quarter = 1 << (fractional - 2)
    a_mod_quarter_minus_quarter = _wrap16((a & (quarter - 1)) - quarter)
    result = _exp_on_interval_between_negative_one_quarter_and_0_excl(
        _sat_shift_left16(a_mod_quarter_minus_quarter, integer_bits))
    remainder = _wrap16(a_mod_quarter_minus_quarter - a)
    barrel = {-2: 1672461947, -1: 1302514674, 0: 790015084, 1: 290630308, 2: 39332535, 3: 720401, 4: 242}
    for exponent, multiplier in barrel.items():
        if integer_bits > exponent:
            bit = _wrap16(1 << (fractional + exponent))
            result = np.where((remainder & bit) != 0, _srdhm16(result, _constant16(multiplier)), result)
    if integer_bits > 5:
        clamp = _constant16(-(1 << (36 - integer_bits)))
        result = np.where(a < clamp, 0, result)
    return np.where(a == 0, INT16_MAX, result)


def _newton_reciprocal_f2(a):
    """x ~ 1 / ((1 + a) / 2) in Q2.13 for a in Q0.15 (gemmlowp's three Newton-Raphson steps)."""
    half_denominator = _rounding_half_sum16(a, INT16_MAX)
    x = _wrap16(_constant16(1515870810) + _srdhm16(half_denominator, _constant16(-1010580540)))
    for _ in range(3):
        one_minus = _wrap16((1 << 13) - _srdhm16(half_denominator, x))
        x = _wrap16(x + _sat_shift_left16(_srdhm16(x, one_minus), 2))
    return x


@functools.lru_cache(maxsize=None)
def logistic_table(integer_bits=3):
    """gemmlowp::logistic(FixedPoint<int16_t, integer_bits>) -> Q0.15 for every int16 input (index raw + 32768)."""
    a = np.arange(INT16_MIN, INT16_MAX + 1, dtype=np.int64)
    positive = a > 0
    abs_input = np.where(positive, a, _wrap16(-a))
    exp = _exp_on_negative_values(_wrap16(-abs_input), integer_bits)
    if_positive = _sat_shift_left16(_newton_reciprocal_f2(exp), 1)
    out = np.where(positive, if_positive, _wrap16(INT16_MAX - if_positive))
    out = np.where(a == 0, _constant16(1 << 30), out)
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=None)
def tanh_table(integer_bits):
    """gemmlowp::tanh(FixedPoint<int16_t, integer_bits>) -> Q0.15 for every int16 input (index raw + 32768)."""
    a = np.arange(INT16_MIN, INT16_MAX + 1, dtype=np.int64)
    negative = a < 0
    n = np.where(negative, a, _wrap16(-a))
    exp = _exp_on_negative_values(n, integer_bits + 1)  # ExactMulByPot<1>: same raw, one more integer bit
    t = _sat_shift_left16(_wrap16(_newton_reciprocal_f2(exp) - (1 << 13)), 2)
    out = np.where(a == 0, 0, np.where(negative, _wrap16(-t), t))
    out.setflags(write=False)
    return out


def _lookup(table, x):
    return table[np.asarray(x, np.int64) + 32768]


# -- the kernel ---------------------------------------------------------------------------------------

@dataclasses.dataclass
class Gate:
    """One gate's integer parameters: weights (n_cell, n_in), effective biases and multipliers."""

    input_weights: np.ndarray
    recurrent_weights: np.ndarray
    input_bias: np.ndarray  # bias - zp_x * rowsum(W_x)
    recurrent_bias: np.ndarray  # - zp_h * rowsum(W_h)
    input_multiplier: tuple
    recurrent_multiplier: tuple
    # float view, for the float stages
    input_scale: float
    recurrent_scale: float
    bias: np.ndarray  # int32 bias as stored
    bias_scale: float


class IntegerLSTM:
    """The integer LSTM of one UNIDIRECTIONAL_SEQUENCE_LSTM op of a flatbuffer, step by step.

    `run(x_int8)` takes (batch, time, features) int8 inputs and returns the int8 outputs of every step,
    starting from zero state (the interpreter after `reset_all_variables`).
    """

    def __init__(self, flatbuffer, occurrence=0):
        from tensorflow.lite.tools import flatbuffer_utils

        model = flatbuffer_utils.read_model_from_bytearray(bytearray(bytes(flatbuffer)))
        graph = model.subgraphs[0]
        ops = [op for op in graph.operators
               if flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) == "UNIDIRECTIONAL_SEQUENCE_LSTM"]
        op = ops[occurrence]
        self.tensor_indices = {"input": int(op.inputs[0]), "output": int(op.outputs[0])}
        options = op.builtinOptions
        if getattr(options, "timeMajor", False):
            raise ValueError("time-major LSTM: not emulated")

        def tensor(i):
            return graph.tensors[op.inputs[i]] if op.inputs[i] >= 0 else None

        def quant(t):
            return float(t.quantization.scale[0]), int(t.quantization.zeroPoint[0])

        def data(t, dtype):
            return np.frombuffer(bytes(model.buffers[t.buffer].data), dtype=dtype).reshape(t.shape)

        for unsupported in (9, 10, 11, 16, 20, 21, 22, 23):
            if len(op.inputs) > unsupported and op.inputs[unsupported] >= 0:
                raise ValueError(f"LSTM input {unsupported} (peephole / projection / layer norm): not emulated")
        if tensor(_INPUT_WEIGHTS["input"]) is None:
            raise ValueError("CIFG LSTM: not emulated")
        self.input_scale, self.input_zero_point = quant(tensor(0))
        self.state_scale, self.state_zero_point = quant(tensor(_OUTPUT_STATE))
        cell_scale = quant(tensor(_CELL_STATE))[0]
        self.cell_scale = int(round(math.log2(cell_scale)))
        if 2.0 ** self.cell_scale != cell_scale:
            raise ValueError(f"cell state scale {cell_scale} is not a power of two")
        hidden = graph.tensors[op.intermediates[4]]
        self.hidden_scale, self.hidden_zero_point = quant(hidden)
        self.output_scale, self.output_zero_point = quant(graph.tensors[op.outputs[0]])
        f32 = np.float32
        gate_scale = f32(2.0 ** -12)
        self.gates = {}
        for gate in GATES:
            wx_t, wh_t, b_t = tensor(_INPUT_WEIGHTS[gate]), tensor(_RECURRENT_WEIGHTS[gate]), tensor(_BIASES[gate])
            wx, wh = data(wx_t, np.int8).astype(np.int64), data(wh_t, np.int8).astype(np.int64)
            bias = data(b_t, np.int32).astype(np.int64)
            sx, sh = quant(wx_t)[0], quant(wh_t)[0]
            x_scale = f32(sx) * f32(self.input_scale) / gate_scale  # float32, as lstm.cc computes it
            h_scale = f32(sh) * f32(self.state_scale) / gate_scale
            self.gates[gate] = Gate(
                input_weights=wx, recurrent_weights=wh,
                input_bias=bias - self.input_zero_point * wx.sum(1),
                recurrent_bias=-self.state_zero_point * wh.sum(1),
                input_multiplier=quantize_multiplier(float(x_scale)),
                recurrent_multiplier=quantize_multiplier(float(h_scale)),
                input_scale=sx * self.input_scale, recurrent_scale=sh * self.state_scale,
                bias=bias, bias_scale=quant(b_t)[0],
            )
        hidden_multiplier = f32(2.0 ** -15) / f32(self.hidden_scale) * f32(2.0 ** -15)
        self.hidden_multiplier = quantize_multiplier(float(hidden_multiplier))
        clip = float(getattr(options, "cellClip", 0.0) or 0.0)
        self.cell_clip = int(np.clip(f32(clip) / f32(cell_scale), INT16_MIN, INT16_MAX)) if clip > 0 else 0
        self.n_cell = self.gates["forget"].input_weights.shape[0]

    # -- stages (override to ablate) --------------------------------------------------------------
    def gate_preactivation(self, gate, x, h):
        """Q3.12 int16: the input and the recurrent part, each rescaled, saturating sums."""
        g = self.gates[gate]
        part_x = multiply_by_quantized_multiplier(x @ g.input_weights.T + g.input_bias, *g.input_multiplier)
        z = np.clip(part_x, INT16_MIN, INT16_MAX)
        part_h = multiply_by_quantized_multiplier(h @ g.recurrent_weights.T + g.recurrent_bias, *g.recurrent_multiplier)
        return np.clip(part_h + z, INT16_MIN, INT16_MAX)

    def sigmoid(self, z):
        """Q3.12 -> Q0.15."""
        return _lookup(logistic_table(3), z)

    def tanh_gate(self, z):
        """Q3.12 -> Q0.15."""
        return _lookup(tanh_table(3), z)

    def cell_update(self, f, c, i, g):
        """int16 cell state on 2**cell_scale."""
        forget = _wrap16(rounding_divide_by_pot(f * c, 15))
        update = _wrap16(rounding_divide_by_pot(i * g, 30 + self.cell_scale))
        c = np.clip(forget + update, INT16_MIN, INT16_MAX)
        return np.clip(c, -self.cell_clip, self.cell_clip) if self.cell_clip else c

    def tanh_cell(self, c):
        """int16 on 2**cell_scale -> Q0.15."""
        bits = 15 + self.cell_scale
        if not 0 <= bits <= 6:
            raise ValueError(f"cell state scale 2**{self.cell_scale}: tanh with {bits} integer bits is not emulated")
        return _lookup(tanh_table(bits), c)

    def hidden(self, o, tanh_c):
        """int8 on the hidden intermediate's scale and zero point."""
        # lstm.cc passes hidden_zp = -zero point and CwiseMul subtracts it: the zero point is added.
        value = multiply_by_quantized_multiplier(o * tanh_c, *self.hidden_multiplier) + self.hidden_zero_point
        return np.clip(value, -128, 127)

    # -- the loop ------------------------------------------------------------------------------------
    def step(self, x, h, c):
        """One step on int64 arrays: x (batch, n_in) and h (batch, n_cell) int8 values, c int16. Returns (h, c)."""
        z = {gate: self.gate_preactivation(gate, x, h) for gate in GATES}
        i, f, o = self.sigmoid(z["input"]), self.sigmoid(z["forget"]), self.sigmoid(z["output"])
        g = self.tanh_gate(z["cell"])
        c = self.cell_update(f, c, i, g)
        return self.hidden(o, self.tanh_cell(c)), c

    def run(self, x, return_cell=False):
        """int8 (batch, time, n_in) -> int8 (batch, time, n_cell): every step's output."""
        x = np.asarray(x, np.int64)
        batch = x.shape[0]
        h = np.full((batch, self.n_cell), self.state_zero_point, np.int64)
        c = np.zeros((batch, self.n_cell), np.int64)
        outputs, cells = [], []
        for t in range(x.shape[1]):
            h, c = self.step(x[:, t], h, c)
            outputs.append(h)
            cells.append(c)
        out = np.stack(outputs, 1).astype(np.int8)
        return (out, np.stack(cells, 1).astype(np.int16)) if return_cell else out


def interpreter_lstm(flatbuffer, x, emulator):
    """(int8 input, int8 output) of the flatbuffer's LSTM op (the one `emulator` reads) for every
    sequence of `x`, each from a zero state, read from TFLite's interpreter."""
    from tests.export_helpers import _interpreter

    it = _interpreter(flatbuffer)
    detail = it.get_input_details()[0]
    inputs, outputs = [], []
    for row in x:
        it.reset_all_variables()
        it.set_tensor(detail["index"], row[None].astype(detail["dtype"]))
        it.invoke()
        inputs.append(it.get_tensor(emulator.tensor_indices["input"]).copy())
        outputs.append(it.get_tensor(emulator.tensor_indices["output"]).copy())
    return np.concatenate(inputs), np.concatenate(outputs)
