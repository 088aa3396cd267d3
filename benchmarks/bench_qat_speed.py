"""QAT / float training-step time for LSTM, GRU and SimpleRNN, measured in one process (CPU).

    python benchmarks/bench_qat_speed.py                      # T=50, 128 units, 3 runs
    python benchmarks/bench_qat_speed.py --sizes 50x128 200x128 50x512
    python benchmarks/bench_qat_speed.py --jit                # compile(jit_compile=True) for both
    python benchmarks/bench_qat_speed.py --jit qat            # XLA for the QAT models only
    python benchmarks/bench_qat_speed.py --mirrored           # MirroredStrategy, two logical CPUs
    python benchmarks/bench_qat_speed.py --jit qat --masked   # Masking(0.0) first, padded sequences

Model: Input(T, 32) -> RNN(units) -> Dense(10), batch 64, Adam. For each layer kind the float, the
full-QAT and the weights-only QAT model train on the same batch, one step each in turn, so that a
load change on the machine hits all three alike; each run reports the median step time of each
model and the ratios to float, by wall clock and by CPU time of the process. The runs are
repeated (`--runs`) and the worst ratio per kind is printed last (target: full QAT <= 1.3x float).

`--masked` puts a `Masking(0.0)` layer before the RNN and zero-pads each sequence after a random
length between T/2 and T.

`--mirrored` re-runs this script in a child process that splits the CPU into two logical devices
before TensorFlow starts, and builds, quantizes and compiles every model inside
`MirroredStrategy(["/cpu:0", "/cpu:1"])` (global batch 64, 32 per replica).
"""

import argparse
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FEATURES, BATCH = 32, 64
KINDS = ("LSTM", "GRU", "SimpleRNN")


def _parse_size(text):
    timesteps, units = text.lower().split("x")
    return int(timesteps), int(units)


def _arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per model and run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes", nargs="+", type=_parse_size, default=[(50, 128)], metavar="TxUNITS")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--jit", nargs="?", const="all", choices=("all", "qat"), default=None,
                        help="compile with jit_compile=True (XLA): every model (all) or the QAT models only (qat)")
    parser.add_argument("--mirrored", action="store_true", help="MirroredStrategy over two logical CPUs")
    parser.add_argument("--masked", action="store_true", help="Masking(0.0) before the RNN, zero-padded inputs")
    parser.add_argument("--no-weights-only", action="store_true", help="skip the weights-only QAT model")
    return parser.parse_args(argv)


def _strategy(mirrored):
    import tensorflow as tf

    if not mirrored:
        return tf.distribute.get_strategy()
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def step_times(models, x, y, steps):
    """(wall, CPU) median train-step seconds of each model; steps are interleaved so that load
    drifts hit all models alike. CPU time (of this process, all its threads) does not count the
    time other processes hold the cores, so its ratios stay readable on a busy machine."""
    import numpy as np

    wall, cpu = [[] for _ in models], [[] for _ in models]
    for _ in range(steps):
        for model, wall_bucket, cpu_bucket in zip(models, wall, cpu):
            start, start_cpu = time.perf_counter(), time.process_time()
            model.train_on_batch(x, y)
            wall_bucket.append(time.perf_counter() - start)
            cpu_bucket.append(time.process_time() - start_cpu)
    return [float(np.median(b)) for b in wall], [float(np.median(b)) for b in cpu]


def _models(kind, timesteps, units, args, strategy):
    import lstm_transforms as lt
    from lstm_transforms._keras import keras

    with strategy.scope():
        inputs = keras.Input((timesteps, FEATURES))
        sequence = keras.layers.Masking(0.0)(inputs) if args.masked else inputs
        model = keras.Model(inputs, keras.layers.Dense(10)(getattr(keras.layers, kind)(units)(sequence)))
        models = [model, lt.quantize_model(model)]
        if not args.no_weights_only:
            models.append(lt.quantize_model(model, scheme=lt.RNNQuantizeScheme(weights_only=True)))
        for k, m in enumerate(models):
            m.compile(
                optimizer="adam",
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                jit_compile=args.jit == "all" or (args.jit == "qat" and k > 0),
            )
    return models


def main(argv=None):
    args = _arguments(argv)
    if args.mirrored and os.environ.get("LT_BENCH_CHILD") != "1":
        child = [a for a in (argv if argv is not None else sys.argv[1:])]
        env = {**os.environ, "LT_BENCH_CHILD": "1"}
        return subprocess.call([sys.executable, os.path.abspath(__file__), *child], env=env)

    strategy = _strategy(args.mirrored)  # before anything else initializes TensorFlow's devices
    import numpy as np

    rng = np.random.default_rng(0)
    xla = {None: "", "all": ", XLA", "qat": ", XLA for the QAT models only"}[args.jit]
    setting = f"{'MirroredStrategy, 2 logical CPUs' if args.mirrored else 'one device'}{xla}"
    setting += ", Masking(0.0) and zero-padded sequences" if args.masked else ""
    print(f"batch {BATCH}, {FEATURES} features, {setting}; median of {args.steps} interleaved steps per run")
    worst = {}
    for timesteps, units in args.sizes:
        x = rng.standard_normal((BATCH, timesteps, FEATURES)).astype("float32")
        if args.masked:
            for row, length in enumerate(rng.integers(timesteps // 2, timesteps + 1, BATCH)):
                x[row, length:] = 0.0
        y = rng.integers(0, 10, BATCH)
        built = {kind: _models(kind, timesteps, units, args, strategy) for kind in args.kinds}
        for models in built.values():  # trace and warm up every model before any timing
            for model in models:
                for _ in range(3):
                    model.train_on_batch(x, y)
        header = f"{'run':>3s} {'layer':10s} {'T':>4s} {'units':>5s} {'float ms':>9s} {'QAT ms':>8s} {'ratio':>6s}"
        header += "" if args.no_weights_only else f" {'w-only ms':>10s} {'ratio':>6s}"
        print(header + f"   {'CPU: float ms':>13s} {'QAT':>6s}" + ("" if args.no_weights_only else f" {'w-only':>6s}"))
        for run in range(1, args.runs + 1):
            for kind, models in built.items():
                wall, cpu = step_times(models, x, y, args.steps)
                key = (kind, timesteps, units)
                worst[key] = max(worst.get(key, (0.0, 0.0))[0], wall[1] / wall[0]), max(
                    worst.get(key, (0.0, 0.0))[1], cpu[1] / cpu[0]
                )
                line = (
                    f"{run:3d} {kind:10s} {timesteps:4d} {units:5d} {wall[0] * 1e3:9.1f} "
                    f"{wall[1] * 1e3:8.1f} {wall[1] / wall[0]:5.2f}x"
                )
                if not args.no_weights_only:
                    line += f" {wall[2] * 1e3:10.1f} {wall[2] / wall[0]:5.2f}x"
                line += f"   {cpu[0] * 1e3:13.1f} {cpu[1] / cpu[0]:5.2f}x"
                if not args.no_weights_only:
                    line += f" {cpu[2] / cpu[0]:5.2f}x"
                print(line, flush=True)
    print("worst full-QAT / float ratio over the runs (wall-clock median; CPU-time median):")
    for (kind, timesteps, units), (ratio, cpu_ratio) in worst.items():
        print(f"    {kind:10s} T={timesteps:<4d} units={units:<4d} {ratio:5.2f}x   CPU {cpu_ratio:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
