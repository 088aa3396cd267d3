"""Rewrite cost: time per layer at 400/800/1600 layers, and rewrite + quantize vs stock tfmot.

    python benchmarks/bench_rewrite.py [--repeats N]

1. A chain of blocks Dense -> ReLU -> Lambda(expand_dims) -> Reshape (one Lambda to rewrite per
   four layers); prints `rewrite` time per layer at 400, 800 and 1600 layers (flat = linear).
2. A residual Conv2D/BN/ReLU/Add stack that stock tfmot accepts (403 layers); prints stock
   `tfmot.quantization.keras.quantize_model` vs `rewrite` + the same stock quantize calls, timed in
   the same process, alternating, best of N, and the ratio (required <= 1.2x).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import lstm_transforms as lt  # noqa: E402
from lstm_transforms._keras import keras, tf  # noqa: E402
from lstm_transforms.transforms import RULES, graph, rewrite  # noqa: E402
from lstm_transforms.transforms.pattern import apply_rules  # noqa: E402

L = keras.layers


def lambda_chain(n_layers):
    """Input + blocks of 4 layers, one Lambda per block."""
    i = keras.Input((8,))
    x = i
    for _ in range(n_layers // 4):
        x = L.Dense(8)(x)
        x = L.ReLU()(x)
        x = L.Lambda(lambda q: tf.expand_dims(q, -1))(x)
        x = L.Reshape((8,))(x)
    return keras.Model(i, x)


def residual_stack(n_blocks=100):
    """Input, stem conv, 100 x (Conv2D, BN, ReLU, Add), head pooling: 403 layers."""
    i = keras.Input((8, 8, 4))
    x = L.Conv2D(4, 1, use_bias=False)(i)
    for _ in range(n_blocks):
        y = L.Conv2D(4, 3, padding="same", use_bias=False)(x)
        y = L.BatchNormalization()(y)
        y = L.ReLU()(y)
        x = L.Add()([x, y])
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(i, x)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    sys.setrecursionlimit(20000)  # tf-keras walks deep chains recursively
    rewrite(lambda_chain(40))  # warm-up: first tracing and first model build are slow
    import tensorflow_model_optimization as tfmot

    tfq = tfmot.quantization.keras

    print("rewrite time per layer (chain with one Lambda per 4 layers):")
    per_layer = {}
    for n in (400, 800, 1600):
        model = lambda_chain(n)
        best = min(timed(lambda: rewrite(model))[0] for _ in range(args.repeats))
        per_layer[n] = best / len(model.layers)
        print(f"  {len(model.layers):5d} layers: {best:7.3f} s total, {1e3 * per_layer[n]:.3f} ms/layer")
        t_graph, g = timed(lambda: graph.from_model(model))
        t_rules, _ = timed(lambda: apply_rules(g, RULES))
        t_build, _ = timed(lambda: graph.to_model(g))
        n_layers = len(model.layers)
        print(f"      split, ms/layer: to graph {1e3 * t_graph / n_layers:.3f}, match+trace rules "
              f"{1e3 * t_rules / n_layers:.3f}, rebuild (tf-keras layer calls) {1e3 * t_build / n_layers:.3f}")
        keras.backend.clear_session()
    print(f"  ms/layer ratio 1600 vs 400: {per_layer[1600] / per_layer[400]:.2f} (1.0 = linear)")

    model = residual_stack()
    print(f"\nresidual Conv2D/BN/ReLU/Add stack, {len(model.layers)} layers, best of {args.repeats}:")

    def stock():
        return tfq.quantize_model(model)

    def ours():
        return tfq.quantize_apply(tfq.quantize_annotate_model(rewrite(model)))

    def ours_full():
        return lt.quantize_model(model)

    stock_times, our_times, full_times = [], [], []
    for k in range(args.repeats):  # alternate which goes first
        trio = [(stock, stock_times), (ours, our_times), (ours_full, full_times)]
        for fn, times in trio if k % 2 == 0 else trio[::-1]:
            times.append(timed(fn)[0])
    rewrite_only = min(timed(lambda: rewrite(model))[0] for _ in range(args.repeats))
    s, o = min(stock_times), min(our_times)
    print(f"  stock quantize_model:         {s:7.3f} s")
    print(f"  rewrite + quantize:           {o:7.3f} s   (rewrite alone {rewrite_only:.3f} s)")
    print(f"  ratio: {o / s:.3f}x (required <= 1.2x)")
    f = min(full_times)
    print(f"  lstm_transforms.quantize_model: {f:7.3f} s   ratio vs stock: {f / s:.3f}x (required <= 1.2x)")


if __name__ == "__main__":
    main()
