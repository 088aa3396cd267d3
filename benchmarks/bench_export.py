"""Size, device fit and speed of the exported int8 model against the float TFLite model of the same architecture.

    python benchmarks/bench_export.py           # everything below
    python benchmarks/bench_export.py --bytes   # sizes and the TFLite Micro arena only (no Vela, no timing)

Prints, in one run, for each architecture:

- bytes: int8 flatbuffer / float flatbuffer, both as exported and both with names stripped
  (`flatbuffer_size.strip_strings`; the target for LSTM kinds is <= 0.30 stripped);
- devices (int8 I/O export): the TensorFlow Lite Micro tensor arena (`devices.micro_arena_bytes`), and
  Vela for an Ethos-U55-128: share of operators on the NPU, SRAM and flash (`devices.vela_compile`);
- int8 / float interpreter latency (median of batch-1 invocations, state reset before each, same
  interpreter settings; the aim is <= 1.0). Timings are only meaningful on an otherwise idle machine;
  sizes, arena and placement are deterministic.

The float model is the same graph (`baked_float_model`, GRU/SimpleRNN unrolled in both) converted
without quantization, with trained weights: each model gets one epoch of float training and then one of
QAT. (An untrained model's bias vectors are equal constants, zeros and ones, which the converter stores
once: its float file is about 1 KB smaller than a trained one's, e.g. for the BiLSTM.) GRU and
SimpleRNN use T=32 (13 features, as spoken-digit MFCCs); the stacked LSTM(64) -> GRU(64) model uses
JapaneseVowels' T=29, 12 features, like the LSTM kinds.

Reading the numbers: TFLite's integer LSTM kernel (int8 weights, int16 gates and cell state) is
much slower on x86 than its float LSTM kernel (the same with `ai-edge-litert` 2.3.0), so the int8
latency ratio of LSTM models is well above 1 here; it is meant for integer-only targets. Unrolled
GRU/SimpleRNN int8 models carry a set of scales on every tensor of every step: as exported, these tables
take back much of what the 4x smaller weights save; stripped, each distinct table is written once.
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import lstm_transforms  # noqa: E402
from lstm_transforms import devices, flatbuffer_size, tflite_utils  # noqa: E402
from lstm_transforms._keras import keras  # noqa: E402
from lstm_transforms.export import baked_float_model, convert, export_tflite  # noqa: E402

L = keras.layers
K = keras.backend


def lstm():
    i = keras.Input((29, 12))
    return keras.Model(i, L.Dense(9, activation="softmax")(L.LSTM(64)(i)), name="lstm64")


def question():
    i = keras.Input((29, 12, 1))
    x = L.Conv2D(1, (5, 1), activation="relu", padding="same")(i)
    x = L.BatchNormalization()(x)
    x = L.Lambda(lambda q: K.squeeze(q, -1), name="squeeze_last_dim")(x)
    x = L.LSTM(64, return_sequences=True)(x)
    x = L.Dense(64, activation="relu")(L.Flatten()(x))
    return keras.Model(i, L.Dense(12, activation="softmax")(x), name="question")


def gru():
    i = keras.Input((32, 13))
    return keras.Model(i, L.Dense(10, activation="softmax")(L.GRU(64)(i)), name="gru64")


def simplernn():
    i = keras.Input((32, 13))
    return keras.Model(i, L.Dense(10, activation="softmax")(L.SimpleRNN(64)(i)), name="rnn64")


def bilstm():
    i = keras.Input((29, 12))
    return keras.Model(i, L.Dense(9, activation="softmax")(L.Bidirectional(L.LSTM(32))(i)), name="bilstm32")


def stacked():
    i = keras.Input((29, 12))
    x = L.GRU(64)(L.LSTM(64, return_sequences=True)(i))
    return keras.Model(i, L.Dense(9, activation="softmax")(x), name="stacked")


def train_float(model):
    """`model` after one epoch of float training on `trained_qat`'s seeded random data."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64,) + tuple(model.input.shape[1:])).astype(np.float32)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, rng.integers(0, model.output.shape[-1], 64), epochs=1, verbose=0)


def trained_qat(model, calibrate=False):
    """(QAT model, its 64 random inputs): `model` quantized (and calibrated, with `calibrate`), then one
    epoch of QAT on those inputs with random class labels (seeded)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64,) + tuple(model.input.shape[1:])).astype(np.float32)
    y = rng.integers(0, model.output.shape[-1], 64)
    qat = lstm_transforms.quantize_model(model)
    if calibrate:
        lstm_transforms.calibrate(qat, x)
    qat.compile("adam", "sparse_categorical_crossentropy")
    qat.fit(x, y, epochs=1, verbose=0)
    return qat, x


def latency_ms(flatbuffer, x, repeats):
    it = tflite_utils.interpreter(flatbuffer, num_threads=1)
    inp = it.get_input_details()[0]
    times = []
    for k in range(repeats + 5):
        it.reset_all_variables()
        it.set_tensor(inp["index"], x[k % len(x)][None].astype(inp["dtype"]))
        t0 = time.perf_counter()
        it.invoke()
        if k >= 5:  # warm-up
            times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def main(repeats=300, bytes_only=False):
    keras.utils.set_random_seed(0)
    rows = []
    for build in (lstm, question, bilstm, stacked, gru, simplernn):
        model = build()
        train_float(model)
        qat, x = trained_qat(model)
        fb_float = convert(baked_float_model(model))
        fb_int8 = export_tflite(qat, x)
        fb_device = flatbuffer_size.strip_strings(export_tflite(qat, x, int8_io=True))
        row = dict(name=model.name, float=len(fb_float), int8=len(fb_int8),
                   float_s=len(flatbuffer_size.strip_strings(fb_float)),
                   int8_s=len(flatbuffer_size.strip_strings(fb_int8)), arena=devices.micro_arena_bytes(fb_device))
        if not bytes_only:
            vela = devices.vela_compile(fb_device, "ethos-u55-128")
            row.update(npu=vela.npu_share, cpu_ops=",".join(p.op for p in vela.cpu_operators) or "-",
                       sram=vela.sram_bytes, flash=vela.flash_bytes, t_float=latency_ms(fb_float, x, repeats),
                       t_int8=latency_ms(fb_int8, x, repeats))
        rows.append(row)
    print(f"\n{'model':10} {'float B':>9} {'int8 B':>8} {'ratio':>6} {'stripped: float B':>17} {'int8 B':>8} "
          f"{'ratio':>6}")
    for r in rows:
        print(f"{r['name']:10} {r['float']:9d} {r['int8']:8d} {r['int8'] / r['float']:6.3f} {r['float_s']:17d} "
              f"{r['int8_s']:8d} {r['int8_s'] / r['float_s']:6.3f}")
    lstm_kinds = [r for r in rows if r["name"] in ("lstm64", "question", "bilstm32")]
    met = all(r["int8_s"] / r["float_s"] <= 0.30 for r in lstm_kinds)
    if bytes_only:
        print(f"\n{'model':10} {'TFLM arena B':>12}   (int8 I/O, names stripped)")
        for r in rows:
            print(f"{r['name']:10} {r['arena']:12d}")
        print("\nbytes ratio target <= 0.30 stripped for LSTM kinds")
        return 0 if met else 1
    print(f"\n{'model':10} {'TFLM arena B':>12} {'NPU share':>9} {'CPU ops':>10} {'SRAM KiB':>8} {'flash KiB':>9}"
          "   (int8 I/O, names stripped; Vela ethos-u55-128)")
    for r in rows:
        print(f"{r['name']:10} {r['arena']:12d} {100 * r['npu']:8.1f}% {r['cpu_ops']:>10} {r['sram'] / 1024:8.2f} "
              f"{r['flash'] / 1024:9.2f}")
    print(f"\n{'model':10} {'float ms':>9} {'int8 ms':>8} {'latency ratio':>13}")
    for r in rows:
        print(f"{r['name']:10} {r['t_float']:9.3f} {r['t_int8']:8.3f} {r['t_int8'] / r['t_float']:13.2f}")
    print(f"\nbatch 1, 1 interpreter thread, median of {repeats} invocations, state reset before each;"
          " bytes ratio target <= 0.30 stripped for LSTM kinds, latency ratio aim <= 1.0")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main(bytes_only="--bytes" in sys.argv[1:]))
