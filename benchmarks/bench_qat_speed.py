"""QAT / float training-step time for LSTM, GRU and SimpleRNN, measured in one run (CPU).

    python benchmarks/bench_qat_speed.py [--steps 20]

Model: Input(50, 32) -> RNN(128) -> Dense(10), batch 64. Prints the median step time of the float
model, the full QAT model and the weights-only QAT model (steps interleaved), and their ratios
(required <= 1.5x).
"""

import argparse
import time

import numpy as np

import lstm_transforms as lt
from lstm_transforms._keras import keras

T, F, UNITS, BATCH = 50, 32, 128, 64


def _compiled(model):
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def step_times(models, x, y, steps):
    """Median train-step time of each model; steps are interleaved so load drifts hit all alike."""
    for model in models:
        for _ in range(3):
            model.train_on_batch(x, y)
    times = [[] for _ in models]
    for _ in range(steps):
        for model, bucket in zip(models, times):
            start = time.perf_counter()
            model.train_on_batch(x, y)
            bucket.append(time.perf_counter() - start)
    return [float(np.median(bucket)) for bucket in times]


def build(layer_class):
    inputs = keras.Input((T, F))
    return keras.Model(inputs, keras.layers.Dense(10)(layer_class(UNITS)(inputs)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, T, F)).astype("float32")
    y = rng.integers(0, 10, BATCH)
    print(f"{'layer':10s} {'float ms':>9s} {'QAT ms':>8s} {'ratio':>6s} {'w-only ms':>10s} {'ratio':>6s}")
    for layer_class in (keras.layers.LSTM, keras.layers.GRU, keras.layers.SimpleRNN):
        model = build(layer_class)
        qat = lt.quantize_model(model)
        weights_only = lt.quantize_model(model, scheme=lt.RNNQuantizeScheme(weights_only=True))
        float_t, qat_t, wo_t = step_times([_compiled(m) for m in (model, qat, weights_only)], x, y, args.steps)
        print(
            f"{layer_class.__name__:10s} {float_t * 1e3:9.1f} {qat_t * 1e3:8.1f} {qat_t / float_t:5.2f}x "
            f"{wo_t * 1e3:10.1f} {wo_t / float_t:5.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
