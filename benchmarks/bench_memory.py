"""Peak memory of a QAT training run vs float training of the same model, measured in one run.

    python benchmarks/bench_memory.py [--layer LSTM|GRU|SimpleRNN] [--steps 20]

Three child processes, started one after the other by this script, each reporting its own peak
resident set size (`ru_maxrss`): `baseline` (imports, data, model built, no training), `float`
(baseline + `fit`), `qat` (baseline + `lstm_transforms.quantize_model` + `fit`). Same model
(Conv1D front end -> recurrent(128, return_sequences) -> recurrent(128) -> Dense), same data (batch 64,
50 steps, 32 features), same number of training steps. Prints the peaks, the QAT/float ratio of the
peaks (required <= 1.3x), and the ratio of the training increments over the baseline (peak - baseline),
which is the stricter view since the baseline (TensorFlow itself) dominates the totals.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

CHILD = r"""
import json, os, resource, sys
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
mode, layer_name, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
import numpy as np
import lstm_transforms as lt
from lstm_transforms._keras import keras
L = keras.layers
keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
x = rng.standard_normal((64 * steps, 50, 32)).astype("float32")
y = rng.integers(0, 10, 64 * steps)
inputs = keras.Input((50, 32))
h = L.Conv1D(32, 3, padding="same", activation="relu")(inputs)
h = getattr(L, layer_name)(128, return_sequences=True)(h)
h = getattr(L, layer_name)(128)(h)
model = keras.Model(inputs, L.Dense(10)(h))
if mode != "baseline":
    if mode == "qat":
        model = lt.quantize_model(model)
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)
print("@@" + json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(mode, layer, steps):
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, layer, str(steps)], env=env, capture_output=True,
                          text=True, timeout=1200)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("@@")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{mode} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][2:])["peak_mib"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", default="LSTM", choices=["LSTM", "GRU", "SimpleRNN"])
    parser.add_argument("--steps", type=int, default=20, help="training steps (batches of 64)")
    args = parser.parse_args()
    peaks = {mode: run(mode, args.layer, args.steps) for mode in ("baseline", "float", "qat")}
    for mode, peak in peaks.items():
        print(f"{mode:>8}: peak RSS {peak:8.1f} MiB")
    ratio = peaks["qat"] / peaks["float"]
    inc_float, inc_qat = peaks["float"] - peaks["baseline"], peaks["qat"] - peaks["baseline"]
    verdict = "OK" if ratio <= 1.3 else "FAIL"
    print(f"{args.layer}: QAT / float peak RSS = {ratio:.3f}x (required <= 1.3x) {verdict}")
    print(f"{args.layer}: training increment over baseline: float {inc_float:.1f} MiB, QAT {inc_qat:.1f} MiB, "
          f"ratio {inc_qat / max(inc_float, 1e-9):.2f}x")


if __name__ == "__main__":
    main()
