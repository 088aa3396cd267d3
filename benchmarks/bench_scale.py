"""`quantize_model` cost per layer on generated models of 250, 500, 1,000 and 2,000 layers.

    python benchmarks/bench_scale.py [--sizes 250 500 1000 2000] [--repeats 1]

Each model is a functional chain of 20-layer blocks: one recurrent layer (LSTM, GRU, SimpleRNN in
turn, `return_sequences=True`, 4 units) followed by six residual Dense -> ReLU -> Add units and a
Dropout, so the recurrent share is constant (1 in 20: 12 recurrent layers at 250, 100 at 2,000).
Only `lstm_transforms.quantize_model(model)` is timed (model building is not), best of `--repeats`,
all sizes in this one process with `clear_session()` in between. Prints seconds per layer and the
per-layer cost ratio 2,000 vs 250 layers (required <= 1.5x: quantizing is linear in the layer count).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import lstm_transforms as lt  # noqa: E402
from lstm_transforms._keras import keras  # noqa: E402

L = keras.layers
BLOCK = 20
T, F = 4, 4


def generated_model(n_layers):
    """A model with exactly `n_layers` layers (Input included), one recurrent layer per 20."""
    inputs = keras.Input((T, F))
    x, count, k = inputs, 1, 0
    kinds = (lambda: L.LSTM(F, return_sequences=True), lambda: L.GRU(F, return_sequences=True),
             lambda: L.SimpleRNN(F, return_sequences=True))
    while count + BLOCK <= n_layers:
        x = kinds[k % 3]()(x)
        k += 1
        for _ in range(6):
            y = L.ReLU()(L.Dense(F)(x))
            x = L.Add()([x, y])
        x = L.Dropout(0.1)(x)
        count += BLOCK
    while count < n_layers:  # pad to the exact size
        x = L.Dense(F)(x)
        count += 1
    model = keras.Model(inputs, x)
    assert len(model.layers) == n_layers, (len(model.layers), n_layers)
    return model, k


def time_quantize(n_layers, repeats):
    best = float("inf")
    for _ in range(repeats):
        keras.backend.clear_session()
        gc.collect()
        model, n_recurrent = generated_model(n_layers)
        start = time.perf_counter()
        qat = lt.quantize_model(model)
        best = min(best, time.perf_counter() - start)
        del qat, model
    return best, n_recurrent


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000, 2000])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    per_layer = {}
    print(f"{'layers':>7} {'recurrent':>9} {'quantize_model s':>16} {'ms/layer':>9}")
    for n in args.sizes:
        seconds, n_recurrent = time_quantize(n, args.repeats)
        per_layer[n] = seconds / n
        print(f"{n:>7} {n_recurrent:>9} {seconds:>16.2f} {1000 * per_layer[n]:>9.2f}", flush=True)
    small, large = min(per_layer), max(per_layer)
    ratio = per_layer[large] / per_layer[small]
    verdict = "OK" if ratio <= 1.5 else "FAIL"
    print(f"per-layer cost ratio {large} vs {small} layers: {ratio:.2f}x (required <= 1.5x) {verdict}")


if __name__ == "__main__":
    main()
