"""Issue 9's table, rerun: each recurrent setting of the table exported with int8 I/O.

    python benchmarks/bench_export_table.py

For each row: Input(T=20, 8) -> the recurrent layer (16 units) -> Dense(4); `quantize_model`,
`calibrate` on random data, one training-mode pass, `export_tflite(..., int8_io=True)`. Prints the
bytes (as exported and name-stripped), the operators, whether anything float or any QUANTIZE /
DEQUANTIZE / WHILE is left, and the largest |int8 - QAT| of the output in steps of its int8 scale.
Sizes and op counts are deterministic; nothing here is timed.
"""

import os
from collections import Counter

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import lstm_transforms as lt  # noqa: E402
from lstm_transforms import flatbuffer_size, tflite_utils  # noqa: E402
from lstm_transforms._keras import keras  # noqa: E402
from lstm_transforms.export.verify import integer_violations  # noqa: E402

L = keras.layers
T, F, UNITS = 20, 8, 16

ROWS = {
    "LSTM(16)": lambda: L.LSTM(UNITS),
    "Bidirectional(LSTM(16))": lambda: L.Bidirectional(L.LSTM(UNITS)),
    "LSTM(16, recurrent_dropout=0.1)": lambda: L.LSTM(UNITS, recurrent_dropout=0.1),
    "LSTM(16, use_bias=False)": lambda: L.LSTM(UNITS, use_bias=False),
    "RNN(LSTMCell(16))": lambda: L.RNN(L.LSTMCell(UNITS)),
    'LSTM(16, activation="relu")': lambda: L.LSTM(UNITS, activation="relu"),
    'LSTM(16, recurrent_activation="hard_sigmoid")': lambda: L.LSTM(UNITS, recurrent_activation="hard_sigmoid"),
    "LSTM(16, unroll=True)": lambda: L.LSTM(UNITS, unroll=True),
    "RNN(StackedRNNCells([LSTMCell(8)] * 2))": lambda: L.RNN(L.StackedRNNCells([L.LSTMCell(8), L.LSTMCell(8)])),
    "GRU(16, reset_after=False)": lambda: L.GRU(UNITS, reset_after=False),
    "GRU(16)": lambda: L.GRU(UNITS),
    "SimpleRNN(16)": lambda: L.SimpleRNN(UNITS),
}


def measure(name, make_layer, x):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((T, F))
    model = keras.Model(inputs, L.Dense(4)(make_layer()(inputs)))
    qat = lt.quantize_model(model)
    lt.calibrate(qat, x)
    qat(x[:32], training=True)
    fb = lt.export_tflite(qat, x, int8_io=True)
    ops = Counter(tflite_utils.op_names(fb))
    q = tflite_utils.predict(fb, x).astype(np.float32)
    reference = qat.predict(x, verbose=0)
    scale = tflite_utils.interpreter(fb).get_output_details()[0]["quantization"][0]
    return {
        "name": name,
        "bytes": len(fb),
        "stripped": len(flatbuffer_size.strip_strings(fb)),
        "ops": sum(ops.values()),
        "kinds": ", ".join(f"{k} x{n}" for k, n in ops.most_common(4)),
        "float_or_qdq": len(integer_violations(fb, int8_io=True)) + ops["QUANTIZE"] + ops["DEQUANTIZE"],
        "max_lsb": float(np.max(np.abs(q - reference)) / scale),
    }


def main():
    x = np.random.default_rng(0).normal(size=(128, T, F)).astype(np.float32)
    rows = [measure(name, make, x) for name, make in ROWS.items()]
    width = max(len(r["name"]) for r in rows)
    print(f"\n{'row':{width}} {'bytes':>7} {'stripped':>8} {'ops':>5} {'float/Q/DQ/WHILE':>16} {'max LSB':>7}  most used ops")
    for r in rows:
        print(f"{r['name']:{width}} {r['bytes']:7d} {r['stripped']:8d} {r['ops']:5d} {r['float_or_qdq']:16d} "
              f"{r['max_lsb']:7.2f}  {r['kinds']}")
    return 0 if all(r["float_or_qdq"] == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
