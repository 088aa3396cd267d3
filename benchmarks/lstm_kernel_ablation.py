"""Which computation of TFLite's integer LSTM puts its outputs one int8 step off the QAT model's.

    python benchmarks/lstm_kernel_ablation.py [--seed 0]

Trains the original question's model on JapaneseVowels as the `question` fixture of
tests/test_export_real_data.py does (10 float epochs, calibrate, 2 QAT epochs), exports it, and
replays its UNIDIRECTIONAL_SEQUENCE_LSTM with `tests/integer_lstm.py` (bit-exact against the
interpreter; checked here on every test sequence). Then each stage of the kernel is swapped for the
float computation QAT simulates (`QATStages`): gate pre-activations (input and recurrent part each
rescaled to Q3.12 -> the exact float sum), gate activations (gemmlowp's int16 logistic / tanh on
Q3.12 -> the float function rounded to Q0.15), the cell update (two roundings -> one), tanh of the
cell state (gemmlowp -> float, rounded to Q0.15), and the hidden output's requantization.

Columns, in % of LSTM outputs (370 sequences x 29 steps x 64 units):

- `off QAT, x int8`: more than half an int8 step off the QAT model's LSTM output, fed the
  interpreter's int8 LSTM input (what tests/export_helpers.lsb_errors measures);
- `off QAT, x QAT`: the same, fed QAT's own LSTM input (its upstream layers' rounding removed);
- `one step`: one step from the integer kernel's own h(t-1), c(t-1) (so without the recurrence
  amplifying a flip over later steps), a different int8 h than the all-integer kernel.
"""

import argparse
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
from tests.export_helpers import qat_outputs  # noqa: E402
from tests.test_export_real_data import trained_question  # noqa: E402
from tests.integer_lstm import INT16_MAX, INT16_MIN, IntegerLSTM, interpreter_lstm  # noqa: E402

STAGES = ("preact", "act", "cell", "tanh_c", "hidden")


def _round_half_up(v):
    """tf.quantization.fake_quant's rounding: floor(v + 0.5)."""
    return np.floor(v + 0.5).astype(np.int64)


def _round_half_away(v):
    return (np.sign(v) * np.floor(np.abs(v) + 0.5)).astype(np.int64)


class QATStages(IntegerLSTM):
    """The integer LSTM with the stages named in `floats` computed as the QAT cell does, in raw units
    (Q3.12 pre-activations, Q0.15 gates, 2**cell_scale cell state, int8 h). An integer stage fed a
    float pre-activation rounds it to Q3.12 first."""

    def __init__(self, flatbuffer, floats=()):
        super().__init__(flatbuffer)
        self.floats = set(floats)

    def gate_preactivation(self, gate, x, h):
        if "preact" not in self.floats:
            return super().gate_preactivation(gate, x, h)
        g = self.gates[gate]
        x_real = (x - self.input_zero_point) * self.input_scale
        h_real = (h - self.state_zero_point) * self.state_scale
        z = (x_real @ (g.input_weights * (g.input_scale / self.input_scale)).T + g.bias * g.bias_scale
             + h_real @ (g.recurrent_weights * (g.recurrent_scale / self.state_scale)).T)
        return z * 2.0**12

    def _q312(self, z):
        return np.clip(_round_half_away(z), INT16_MIN, INT16_MAX)

    def _q015(self, v):
        return np.clip(_round_half_up(v * 2.0**15), INT16_MIN, INT16_MAX)

    def sigmoid(self, z):
        return self._q015(1 / (1 + np.exp(-z / 2.0**12))) if "act" in self.floats else super().sigmoid(self._q312(z))

    def tanh_gate(self, z):
        return self._q015(np.tanh(z / 2.0**12)) if "act" in self.floats else super().tanh_gate(self._q312(z))

    def cell_update(self, f, c, i, g):
        if "cell" not in self.floats:
            return super().cell_update(f, c, i, g)
        c = np.clip(_round_half_up(f * c / 2.0**15 + i * g * 2.0 ** (-30 - self.cell_scale)), INT16_MIN, INT16_MAX)
        return np.clip(c, -self.cell_clip, self.cell_clip) if self.cell_clip else c

    def tanh_cell(self, c):
        return self._q015(np.tanh(c * 2.0**self.cell_scale)) if "tanh_c" in self.floats else super().tanh_cell(c)

    def hidden(self, o, tanh_c):
        if "hidden" not in self.floats:
            return super().hidden(o, tanh_c)
        return np.clip(_round_half_up(o * tanh_c * 2.0**-30 / self.hidden_scale) + self.hidden_zero_point, -128, 127)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    qat, flatbuffer, x_test = trained_question(args.seed)
    kernel = IntegerLSTM(flatbuffer)
    x_int8, y_int8 = interpreter_lstm(flatbuffer, x_test, kernel)
    if not np.array_equal(kernel.run(x_int8), y_int8):
        sys.exit("the emulated LSTM differs from the interpreter's: the table would not describe TFLite")
    qat_io = qat_outputs(qat, ["squeeze_last_dim", "lstm"], x_test)
    x_qat = np.clip(_round_half_away(qat_io["squeeze_last_dim"] / kernel.input_scale) + kernel.input_zero_point, -128, 127)
    want = qat_io["lstm"]

    def off(out):
        got = (out.astype(np.float64) - kernel.output_zero_point) * kernel.output_scale
        return 100 * np.mean(np.abs(got - want) / kernel.output_scale > 0.5)

    out, cells = kernel.run(x_qat, return_cell=True)
    n, steps, units = out.shape
    h_prev = np.concatenate([np.full_like(out[:, :1], kernel.state_zero_point), out[:, :-1]], 1).astype(np.int64)
    c_prev = np.concatenate([np.zeros_like(cells[:, :1]), cells[:, :-1]], 1).astype(np.int64)

    def one_step(variant):
        h, _ = variant.step(x_qat.reshape(n * steps, -1), h_prev.reshape(n * steps, -1), c_prev.reshape(n * steps, -1))
        return 100 * np.mean(h.reshape(out.shape) != out)

    print(f"seed {args.seed}: {100 * np.mean(x_int8 != x_qat):.2f}% of the LSTM's int8 inputs differ from QAT's; "
          f"cell state 2**{kernel.cell_scale}; the integer kernel on QAT's input instead of the interpreter's "
          f"changes {100 * np.mean(kernel.run(x_int8) != out):.2f}% of its outputs")
    rows = [("all integer (the interpreter)", ()), ("all float (QAT)", STAGES)]
    rows += [(f"integer, {s} float", (s,)) for s in STAGES]
    rows += [(f"float, {s} integer", tuple(t for t in STAGES if t != s)) for s in STAGES]
    rows += [("integer, act + tanh_c float", ("act", "tanh_c"))]
    print(f"{'stages':34s} {'off QAT, x int8':>16s} {'off QAT, x QAT':>15s} {'one step':>9s}")
    for name, floats in rows:
        variant = QATStages(flatbuffer, floats)
        print(f"{name:34s} {off(variant.run(x_int8)):16.2f} {off(variant.run(x_qat)):15.2f} {one_step(variant):9.3f}",
              flush=True)


if __name__ == "__main__":
    main()
