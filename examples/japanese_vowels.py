"""JapaneseVowels end to end: float LSTM -> stock PTQ int8 baseline -> QAT -> fully-integer TFLite.

    python examples/japanese_vowels.py                 # both architectures, seed 0 (a few minutes on 2 cores)
    python examples/japanese_vowels.py --arch lstm     # only the small LSTM classifier
    python examples/japanese_vowels.py --seeds 0 1 2   # several seeds: mean and spread per column

Data: the UEA JapaneseVowels set shipped with the package (270 train / 370 test sequences, 12 LPC
channels, pre-padded to 29 frames, 9 speakers). Architectures:

* `lstm`: Input(29, 12) -> LSTM(64) -> Dense(9, softmax).
* `gru`, `simple_rnn`: the same with GRU(64) / SimpleRNN(64), deployed as unrolled int8 steps.
* `bilstm`: Input(29, 12) -> Bidirectional(LSTM(32)) -> Dense(9, softmax): two fused LSTM ops, the
  backward input reversed in time by SPLIT + CONCATENATION.
* `stacked`: Input(29, 12) -> LSTM(32, return_sequences=True) -> GRU(32) -> Dense(9, softmax): a fused
  LSTM feeding unrolled int8 GRU steps.
* `question`: the model of the original question, exactly as written (Conv2D(1, (5, 1)) + ReLU,
  BatchNormalization, a Python `Lambda` squeeze, LSTM(64, return_sequences=True), Flatten,
  Dense(64, relu), Dense(12, softmax)), with the (T, F) sequence fed as a (29, 12, 1) image.

For each it prints: float accuracy, stock post-training int8 accuracy, QAT Keras accuracy after
`calibrate` and after fine-tuning, exported int8 accuracy, prediction agreement QAT Keras vs the int8
flatbuffer, and the model sizes. Every TFLite evaluation resets the LSTM state before each sequence.

Runs are reproducible on one machine (seeded, `enable_op_determinism`). Another CPU can round
differently (oneDNN picks kernels per instruction set), so single-seed accuracies move by a few test
sequences between machines; the README gives the spread over seeds. The exit code reports failures
(an exception, an export that is not a fused, fully-integer model, an int8 model that collapsed), not
the run-to-run noise of a 370-sequence test set.
"""

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

import lstm_transforms  # noqa: E402
from lstm_transforms import tflite_utils  # noqa: E402
from lstm_transforms._keras import keras, tf  # noqa: E402
from lstm_transforms.datasets import load_japanese_vowels  # noqa: E402
from lstm_transforms.export import convert, export_tflite  # noqa: E402

L = keras.layers

# An int8 model this far below float is broken, whatever the seed (the spread over seeds is ~1 point).
COLLAPSE_POINTS = 5.0


def lstm_model():
    i = keras.Input(shape=(29, 12))
    x = L.LSTM(64)(i)
    o = L.Dense(9, activation="softmax")(x)
    return keras.Model(i, o, name="jv_lstm")


def gru_model():
    i = keras.Input(shape=(29, 12))
    return keras.Model(i, L.Dense(9, activation="softmax")(L.GRU(64)(i)), name="jv_gru")


def simple_rnn_model():
    i = keras.Input(shape=(29, 12))
    return keras.Model(i, L.Dense(9, activation="softmax")(L.SimpleRNN(64)(i)), name="jv_simple_rnn")


def bilstm_model():
    i = keras.Input(shape=(29, 12))
    return keras.Model(i, L.Dense(9, activation="softmax")(L.Bidirectional(L.LSTM(32))(i)), name="jv_bilstm")


def stacked_model():
    i = keras.Input(shape=(29, 12))
    x = L.GRU(32)(L.LSTM(32, return_sequences=True)(i))
    return keras.Model(i, L.Dense(9, activation="softmax")(x), name="jv_stacked")


def question_model():
    """The original question's model, as written; only the input shape is the data's (T, F, 1)."""
    K = keras.backend
    i = keras.Input(shape=(29, 12, 1))
    x = L.Conv2D(1, (5, 1), activation="relu", padding="same")(i)
    x = L.BatchNormalization()(x)
    x = L.Lambda(lambda q: K.squeeze(q, -1), name="squeeze_last_dim")(x)
    x = L.LSTM(64, return_sequences=True)(x)
    x = L.Flatten()(x)
    x = L.Dense(64, activation="relu")(x)
    o = L.Dense(12, activation="softmax")(x)
    return keras.Model(i, o, name="jv_question")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How one architecture is built and trained."""

    build: Callable
    prepare: Callable  # (n, 29, 12) sequences -> the model's input
    float_epochs: int
    float_lr: float
    # QAT starts from calibrated ranges, within a few sequences of float: a short, gentle fine-tune
    # keeps that (15 epochs at 1/10 of the float rate lost 0.3 points on some seeds).
    qat_epochs: int = 10
    qat_lr: float = 3e-5
    fused_lstm: int = 1  # UNIDIRECTIONAL_SEQUENCE_LSTM ops the export must hold


RECIPES = {
    "lstm": Recipe(lstm_model, lambda x: x, float_epochs=60, float_lr=3e-3),
    "question": Recipe(question_model, lambda x: x[..., None], float_epochs=60, float_lr=2e-3),
    "gru": Recipe(gru_model, lambda x: x, float_epochs=60, float_lr=3e-3, fused_lstm=0),
    "simple_rnn": Recipe(simple_rnn_model, lambda x: x, float_epochs=60, float_lr=1e-3, fused_lstm=0),
    "bilstm": Recipe(bilstm_model, lambda x: x, float_epochs=60, float_lr=3e-3, fused_lstm=2),
    "stacked": Recipe(stacked_model, lambda x: x, float_epochs=60, float_lr=3e-3),
}


def set_seed(seed):
    """Same seed, same machine: the same weights and accuracies."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


class EpochBar(keras.callbacks.Callback):
    """One progress bar over all epochs (loss and accuracy of the last epoch), instead of one per epoch."""

    def __init__(self, epochs, desc):
        super().__init__()
        # In a log file (not a terminal) one line at the end instead of a redrawn bar.
        self.bar = keras.utils.Progbar(epochs, stateful_metrics=["loss", "accuracy"], unit_name="epoch",
                                       verbose=1 if sys.stdout.isatty() else 2)
        self.desc = desc

    def on_train_begin(self, logs=None):
        sys.stdout.write(f"{self.desc}\n")

    def on_epoch_end(self, epoch, logs=None):
        self.bar.update(epoch + 1, [(k, v) for k, v in (logs or {}).items() if k in ("loss", "accuracy")])


def fit(model, x, y, epochs, lr, desc, progress=True):
    model.compile(keras.optimizers.Adam(lr), "sparse_categorical_crossentropy", metrics=["accuracy"])
    callbacks = [EpochBar(epochs, desc)] if progress else []
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, shuffle=True, callbacks=callbacks)


def keras_accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, batch_size=128, verbose=0), -1) == y))


def run(arch, seed, *, baselines=True, progress=True, compare=False, micro=False):
    """Train, quantize, fine-tune and export one architecture; returns a dict of measurements.

    `baselines=False` skips the float TFLite and stock post-training int8 conversions (the tests'
    multi-seed runs only need the QAT path). `compare=True` adds `lsb`: per layer, (mean, p99, max)
    of the flatbuffer against the QAT model in LSBs (`lstm_transforms.compare` on the test set).
    `micro=True` adds `micro_agreement`: the share of test sequences where TensorFlow Lite Micro
    (`lstm_transforms.devices`, extra `micro`) predicts the TFLite interpreter's class.
    """
    recipe = RECIPES[arch]
    say = print if progress else (lambda *a, **k: None)
    set_seed(seed)
    x_train, y_train, x_test, y_test = load_japanese_vowels()
    x_train, x_test = recipe.prepare(x_train), recipe.prepare(x_test)
    t0 = time.time()
    result = {"arch": arch, "seed": seed}

    say(f"\n=== {arch}, seed {seed}: train float ===")
    float_model = recipe.build()
    fit(float_model, x_train, y_train, recipe.float_epochs, recipe.float_lr, "float training", progress)
    result["float"] = keras_accuracy(float_model, x_test, y_test)

    if baselines:
        say(f"=== {arch}: float TFLite and stock post-training int8 (calibrated on the training set) ===")
        fb_float = convert(float_model)
        fb_ptq = convert(float_model, x_train, progress=progress)
        result["ptq_int8"] = tflite_utils.evaluate(fb_ptq, x_test, y_test, progress=progress, desc="PTQ int8 eval")
        result["bytes_float"], result["bytes_ptq"] = len(fb_float), len(fb_ptq)

    say(f"=== {arch}: QAT fine-tune ===")
    qat_model = lstm_transforms.quantize_model(float_model)
    # Ranges from the data first: tfmot's start at [-6, 6] and move slowly (EMA 0.999) on 270 samples.
    lstm_transforms.calibrate(qat_model, x_train)
    result["qat_calibrated"] = keras_accuracy(qat_model, x_test, y_test)
    fit(qat_model, x_train, y_train, recipe.qat_epochs, recipe.qat_lr, "QAT fine-tuning", progress)
    qat_probs = qat_model.predict(x_test, batch_size=128, verbose=0)
    result["qat_keras"] = float(np.mean(np.argmax(qat_probs, -1) == y_test))

    say(f"=== {arch}: export QAT model to fully-integer TFLite ===")
    fb_qat = export_tflite(qat_model, x_train, progress=progress)
    int8_probs = tflite_utils.predict(fb_qat, x_test, progress=progress, desc="int8 eval")
    ops = tflite_utils.op_names(fb_qat)
    result.update(
        int8=float(np.mean(np.argmax(int8_probs, -1) == y_test)),
        agreement=float(np.mean(np.argmax(int8_probs, -1) == np.argmax(qat_probs, -1))),
        bytes_int8=len(fb_qat),
        fused_lstm=ops.count("UNIDIRECTIONAL_SEQUENCE_LSTM"),
        fused_expected=recipe.fused_lstm,
        while_ops=ops.count("WHILE"),
        reverse_ops=ops.count("REVERSE_V2"),
        float_islands=len(tflite_utils.float_islands(fb_qat)),
        seconds=time.time() - t0,
    )
    if micro:
        from lstm_transforms import devices

        micro_probs = devices.micro_predict(fb_qat, x_test)
        result["micro_agreement"] = float(np.mean(np.argmax(micro_probs, -1) == np.argmax(int8_probs, -1)))
    if compare:
        report = lstm_transforms.compare(qat_model, fb_qat, x_test)
        result["lsb"] = {row.layer: (row.mean, row.p99, row.max) for row in report.layers}
    return result


def problems(result):
    """What is broken in one run (not noise): a missing fused op, float left inside, a collapsed model."""
    found = []
    expected = result.get("fused_expected", 1)
    if result["fused_lstm"] != expected or result["while_ops"]:
        found.append(f"expected {expected} fused LSTM op(s) and no WHILE, got {result['fused_lstm']} and "
                     f"{result['while_ops']}")
    if result.get("reverse_ops"):
        found.append(f"{result['reverse_ops']} REVERSE_V2 op(s) (a fixed time dimension reverses by SPLIT + "
                     "CONCATENATION)")
    if result["float_islands"]:
        found.append(f"{result['float_islands']} float tensors inside the int8 model")
    if 100 * (result["float"] - result["int8"]) > COLLAPSE_POINTS:
        found.append(f"int8 accuracy {100 * result['int8']:.1f}% is over {COLLAPSE_POINTS:.0f} points below float")
    return found


COLUMNS = (  # key, header, is a percentage
    ("float", "float", True),
    ("ptq_int8", "PTQ int8", True),
    ("qat_calibrated", "QAT calib", True),
    ("qat_keras", "QAT tuned", True),
    ("int8", "QAT int8", True),
    ("agreement", "agree", True),
    ("micro_agreement", "TFLM agree", True),
    ("bytes_float", "float B", False),
    ("bytes_int8", "int8 B", False),
)


def _cell(values, percent):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    scale = 100.0 if percent else 1.0
    if len(values) == 1:
        return f"{scale * values[0]:.1f}" if percent else f"{values[0]:d}"
    mean = scale * float(np.mean(values))
    low, high = scale * min(values), scale * max(values)
    return f"{mean:.1f} [{low:.1f}-{high:.1f}]" if percent else f"{mean:.0f}"


def print_table(results):
    seeds = sorted({r["seed"] for r in results})
    print(f"\nJapaneseVowels test set (370 sequences); accuracies in %, seeds {seeds}"
          + ("; mean [min-max] over seeds" if len(seeds) > 1 else ""))
    rows = []
    for arch in dict.fromkeys(r["arch"] for r in results):
        mine = [r for r in results if r["arch"] == arch]
        rows.append([arch] + [_cell([r.get(key) for r in mine], pct) for key, _, pct in COLUMNS])
    header = ["arch"] + [title for _, title, _ in COLUMNS]
    widths = [max(len(str(row[k])) for row in rows + [header]) for k in range(len(header))]
    print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    for row in rows:
        print("  ".join(str(c).rjust(w) for c, w in zip(row, widths)))
    print("\nQAT calib = QAT Keras model after lstm_transforms.calibrate, before fine-tuning; QAT tuned = after it.")
    print("agree = share of test sequences where the int8 flatbuffer predicts the QAT Keras model's class.")
    if any(r.get("micro_agreement") is not None for r in results):
        print("TFLM agree = share where TensorFlow Lite Micro predicts the TFLite interpreter's class.")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=[*RECIPES, "both"], default="both", help="both: lstm and question")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--json", metavar="PATH", help="also write every run's measurements to PATH")
    parser.add_argument("--micro", action="store_true",
                        help="also run the int8 model in TensorFlow Lite Micro (extra `micro`) against TFLite")
    args = parser.parse_args(argv)
    tf.get_logger().setLevel("ERROR")
    archs = ["lstm", "question"] if args.arch == "both" else [args.arch]
    results = [run(arch, seed, micro=args.micro) for arch in archs for seed in args.seeds]
    print_table(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    print(f"total time: {sum(r['seconds'] for r in results):.0f} s")
    failed = [(r["arch"], r["seed"], p) for r in results for p in problems(r)]
    for arch, seed, problem in failed:
        print(f"FAILED {arch} seed {seed}: {problem}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
