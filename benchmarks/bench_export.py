"""Size and speed of the exported int8 model against the float TFLite model of the same architecture.

    python benchmarks/bench_export.py

Prints, in one run, for each architecture: int8 flatbuffer bytes / float flatbuffer bytes (the issue
requires <= 0.35) and int8 / float interpreter latency (median of batch-1 invocations, state reset
before each, same interpreter settings; the aim is <= 1.0). The float model is the same graph
(`baked_float_model`, GRU/SimpleRNN unrolled in both) converted without quantization.

Reading the numbers: TFLite's integer LSTM kernel (int8 weights, int16 gates and cell state) is
much slower on x86 than its float LSTM kernel (the same with `ai-edge-litert` 2.3.0), so the int8
latency ratio of LSTM models is well above 1 here; it is meant for integer-only targets. Unrolled
GRU/SimpleRNN int8 models carry one int32 bias and one set of scales per step, so at small sizes the
flatbuffer's metadata outweighs the 4x smaller weights.
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import lstm_transforms  # noqa: E402
from lstm_transforms import tflite_utils  # noqa: E402
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
    i = keras.Input((29, 12))
    return keras.Model(i, L.Dense(9, activation="softmax")(L.GRU(64)(i)), name="gru64")


def bilstm():
    i = keras.Input((29, 12))
    return keras.Model(i, L.Dense(9, activation="softmax")(L.Bidirectional(L.LSTM(32))(i)), name="bilstm32")


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


def main(repeats=300):
    keras.utils.set_random_seed(0)
    rows = []
    for build in (lstm, question, bilstm, gru):
        model = build()
        shape = tuple(model.input.shape[1:])
        rng = np.random.default_rng(0)
        x = rng.normal(size=(64,) + shape).astype(np.float32)
        y = rng.integers(0, model.output.shape[-1], 64)
        qat = lstm_transforms.quantize_model(model)
        qat.compile("adam", "sparse_categorical_crossentropy")
        qat.fit(x, y, epochs=1, verbose=0)
        fb_float = convert(baked_float_model(model))
        fb_int8 = export_tflite(qat, x)
        t_float, t_int8 = latency_ms(fb_float, x, repeats), latency_ms(fb_int8, x, repeats)
        rows.append((model.name, len(fb_float), len(fb_int8), t_float, t_int8))
    print(f"\n{'model':10} {'float B':>9} {'int8 B':>8} {'bytes ratio':>11} {'float ms':>9} {'int8 ms':>8} "
          f"{'latency ratio':>13}")
    for name, bf, bi, tf_, ti in rows:
        print(f"{name:10} {bf:9d} {bi:8d} {bi / bf:11.3f} {tf_:9.3f} {ti:8.3f} {ti / tf_:13.2f}")
    print(f"\nbatch 1, 1 interpreter thread, median of {repeats} invocations, state reset before each;"
          " required bytes ratio <= 0.35, latency ratio aim <= 1.0")
    return 0 if all(bi / bf <= 0.35 for _, bf, bi, _, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
