"""Where a QAT train step's time goes: the step with parts of the simulation switched off.

    python benchmarks/qat_step_ablation.py                 # GRU, QAT models under XLA
    python benchmarks/qat_step_ablation.py --kind LSTM --no-jit

Same model and batch as `bench_qat_speed.py` (Input(T, 32) -> RNN(128) -> Dense(10), batch 64,
Adam). The float model and one full-QAT model per variant train one step each in turn; each
variant's model is traced with its switch on, so all of them run in one process and a load change
hits them alike. Variants:

- `shipped`: the library as it is;
- `gradient op`: the activation fake quants use TensorFlow's gradient ops under XLA too, instead of a
  mask computed in the forward pass (`quantizers.under_xla`);
- `extremes per row`: the loop keeps its statistics' extremes per batch row under XLA too, not per
  unit (`recurrent._extremes_per_row`);
- `both`: the two above (the step as it was before either);
- `no statistics`: the loop collects no range statistics;
- `no activation fake quant`: every activation fake quant is the identity (weights still quantized).

The last two are not QAT any more: they show what the statistics and the fake quants cost.
Prints the median step time of each model and its ratio to float, per run, and the ranges.
"""

import argparse
import contextlib
import os
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FEATURES, BATCH = 32, 64


@contextlib.contextmanager
def _patched(obj, name, value):
    saved = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, saved)


def _variants():
    """{name: context manager factory} of the switches, applied while the variant's model is traced."""
    from lstm_transforms import cells, quantizers, recurrent

    def gradient_op():
        return _patched(quantizers, "under_xla", lambda: False)

    def per_row():
        return _patched(recurrent, "_extremes_per_row", lambda mask, row_lengths: True)

    @contextlib.contextmanager
    def both():
        with gradient_op(), per_row():
            yield

    def no_statistics():
        loop = recurrent._QuantizedLoopMixin
        call = loop._call_quantized

        def without_statistics(self, cells_, collect, *rest):
            return call(self, cells_, False, *rest)

        return _patched(loop, "_call_quantized", without_statistics)

    def identity(x, *args, **kwargs):
        return x

    @contextlib.contextmanager
    def no_fake_quant():
        with contextlib.ExitStack() as stack:
            for name in ("fake_quant_asymmetric", "fake_quant_fixed_unit", "fake_quant_tanh", "fake_quant_logistic",
                         "fake_quant_power_of_two"):
                stack.enter_context(_patched(cells, name, identity))
            yield

    return {
        "shipped": contextlib.nullcontext,
        "gradient op": gradient_op,
        "extremes per row": per_row,
        "both": both,
        "no statistics": no_statistics,
        "no activation fake quant": no_fake_quant,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=("LSTM", "GRU", "SimpleRNN"), default="GRU")
    parser.add_argument("--timesteps", type=int, default=50)
    parser.add_argument("--units", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per model and run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-jit", action="store_true", help="QAT models without XLA")
    args = parser.parse_args(argv)

    import numpy as np

    import lstm_transforms as lt
    from lstm_transforms._keras import keras

    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, args.timesteps, FEATURES)).astype("float32")
    y = rng.integers(0, 10, BATCH)
    inputs = keras.Input((args.timesteps, FEATURES))
    model = keras.Model(inputs, keras.layers.Dense(10)(getattr(keras.layers, args.kind)(args.units)(inputs)))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer="adam", loss=loss)
    models = {"float": model}
    for name, switch in _variants().items():
        qat = lt.quantize_model(model)
        qat.compile(optimizer="adam", loss=loss, jit_compile=not args.no_jit)
        with switch():
            qat.train_on_batch(x, y)  # traced (and compiled) with the switch on
        models[name] = qat
    for m in models.values():
        for _ in range(2):
            m.train_on_batch(x, y)

    xla = "without XLA" if args.no_jit else "QAT models under XLA, float without"
    print(f"{args.kind}({args.units}), T={args.timesteps}, batch {BATCH}, {xla}; "
          f"median of {args.steps} interleaved steps")
    ratios = {name: [] for name in models if name != "float"}
    for run in range(1, args.runs + 1):
        times = {name: [] for name in models}
        for _ in range(args.steps):
            for name, m in models.items():
                start = time.perf_counter()
                m.train_on_batch(x, y)
                times[name].append(time.perf_counter() - start)
        medians = {name: float(np.median(t)) for name, t in times.items()}
        line = f"run {run}: float {medians['float'] * 1e3:.1f} ms"
        for name in ratios:
            ratios[name].append(medians[name] / medians["float"])
            line += f" | {name} {ratios[name][-1]:.2f}x"
        print(line, flush=True)
    for name, values in ratios.items():
        print(f"    {name:26s} {min(values):.2f}-{max(values):.2f}x float")
    return 0


if __name__ == "__main__":
    sys.exit(main())
