"""tests/integer_lstm.py: the numpy integer LSTM is TFLite's kernel, bit for bit.

gemmlowp's int16 logistic and tanh against values printed by gemmlowp itself (fixedpoint.h compiled
from the TensorFlow wheel's headers), and the whole emulated layer against the interpreter's
UNIDIRECTIONAL_SEQUENCE_LSTM output tensor on an exported QAT model.
"""

import numpy as np
import pytest

import lstm_transforms as lt
from lstm_transforms._keras import keras
from lstm_transforms.export import export_tflite
from tests.integer_lstm import IntegerLSTM, interpreter_lstm, logistic_table, quantize_multiplier, tanh_table

L = keras.layers
INPUTS = [-32768, -20000, -4096, -1000, -1, 1, 7, 1000, 4096, 12345, 32767]
# gemmlowp::logistic / gemmlowp::tanh on FixedPoint<int16_t, k>::FromRaw(x), raw outputs.
GEMMLOWP = {
    ("logistic", 3): [11, 243, 8815, 14391, 16383, 16384, 16398, 18376, 23952, 31236, 32756],
    ("tanh", 1): [-31596, -27524, -8032, -2000, 4, -4, 20, 2000, 8032, 20880, 31596],
    ("tanh", 3): [-32767, -32767, -24964, -7840, -8, 8, 64, 7840, 24964, 32616, 32767],
    ("tanh", 4): [-32767, -32767, -31596, -14836, -24, 24, 104, 14836, 31596, 32767, 32767],
}


@pytest.mark.parametrize("function, integer_bits", list(GEMMLOWP))
def test_fixed_point_tables_are_gemmlowps(function, integer_bits):
    table = logistic_table(integer_bits) if function == "logistic" else tanh_table(integer_bits)
    got = [int(table[x + 32768]) for x in INPUTS]
    assert got == GEMMLOWP[function, integer_bits]


def test_quantize_multiplier_decomposes_like_tflite():
    assert quantize_multiplier(0.5) == (1 << 30, 0)
    assert quantize_multiplier(2.0 ** -20) == (1 << 30, -19)
    multiplier, shift = quantize_multiplier(0.3)
    assert abs(multiplier * 2.0 ** (shift - 31) - 0.3) < 2.0 ** -31


@pytest.fixture(scope="module")
def exported_lstm():
    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(32, 10, 5)).astype(np.float32)
    i = keras.Input((10, 5))
    model = keras.Model(i, L.LSTM(8, return_sequences=True)(i))
    qat = lt.quantize_model(model)
    lt.calibrate(qat, x)
    return x, export_tflite(qat, x)


def test_emulated_lstm_is_bit_exact_against_the_interpreter(exported_lstm):
    x, flatbuffer = exported_lstm
    emulator = IntegerLSTM(flatbuffer)
    x_int8, expected = interpreter_lstm(flatbuffer, x, emulator)
    assert x_int8.dtype == np.int8 and expected.dtype == np.int8
    assert len(np.unique(expected)) > 20  # a real trajectory, not a saturated or constant output
    assert emulator.hidden_zero_point != 0  # the zero point's sign is exercised
    np.testing.assert_array_equal(emulator.run(x_int8), expected)


def test_emulator_stages_matter(exported_lstm):
    """Swapping gemmlowp's tanh(c) for the exact one changes outputs: the comparison above can fail."""
    x, flatbuffer = exported_lstm
    emulator = IntegerLSTM(flatbuffer)
    x_int8, expected = interpreter_lstm(flatbuffer, x, emulator)

    class ExactTanh(IntegerLSTM):
        def tanh_cell(self, c):
            return np.round(np.tanh(c * 2.0 ** self.cell_scale) * 2**15).clip(-32768, 32767).astype(np.int64)

    assert np.any(ExactTanh(flatbuffer).run(x_int8) != expected)
