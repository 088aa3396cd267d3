"""JapaneseVowels end to end: float LSTM -> stock PTQ int8 baseline -> QAT -> fully-integer TFLite.

    python examples/japanese_vowels.py              # both architectures (a few minutes on 2 cores)
    python examples/japanese_vowels.py --arch lstm  # only the small LSTM classifier

Data: the UEA JapaneseVowels set shipped with the package (270 train / 370 test sequences, 12 LPC
channels, pre-padded to 29 frames, 9 speakers). Two architectures:

* `lstm`: Input(29, 12) -> LSTM(64) -> Dense(9, softmax).
* `question`: the model of the original question, exactly as written (Conv2D(1, (5, 1)) + ReLU,
  BatchNormalization, a Python `Lambda` squeeze, LSTM(64, return_sequences=True), Flatten,
  Dense(64, relu), Dense(12, softmax)), with the (T, F) sequence fed as a (29, 12, 1) image.

For each it prints: float accuracy, stock post-training int8 accuracy, QAT Keras accuracy, exported
int8 accuracy, prediction agreement QAT Keras vs the int8 flatbuffer, and the model sizes. Every
TFLite evaluation resets the LSTM state before each sequence (`tflite_utils.predict`).
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import lstm_transforms  # noqa: E402
from lstm_transforms import tflite_utils  # noqa: E402
from lstm_transforms._keras import keras, tf  # noqa: E402
from lstm_transforms.datasets import load_japanese_vowels  # noqa: E402
from lstm_transforms.export import convert, export_tflite  # noqa: E402

L = keras.layers


def lstm_model():
    i = keras.Input(shape=(29, 12))
    x = L.LSTM(64)(i)
    o = L.Dense(9, activation="softmax")(x)
    return keras.Model(i, o, name="jv_lstm")


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


ARCHS = {
    # name: (builder, input transform, float epochs, float lr, QAT epochs, QAT lr)
    "lstm": (lstm_model, lambda x: x, 60, 3e-3, 15, 3e-4),
    "question": (question_model, lambda x: x[..., None], 60, 2e-3, 15, 2e-4),
}


class EpochBar(keras.callbacks.Callback):
    """One progress bar over all epochs (loss and accuracy of the last epoch), instead of one per epoch."""

    def __init__(self, epochs, desc):
        super().__init__()
        self.bar = keras.utils.Progbar(epochs, stateful_metrics=["loss", "accuracy"], unit_name="epoch")
        self.desc = desc

    def on_train_begin(self, logs=None):
        sys.stdout.write(f"{self.desc}\n")

    def on_epoch_end(self, epoch, logs=None):
        self.bar.update(epoch + 1, [(k, v) for k, v in (logs or {}).items() if k in ("loss", "accuracy")])


def fit(model, x, y, epochs, lr, desc):
    model.compile(keras.optimizers.Adam(lr), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, shuffle=True, callbacks=[EpochBar(epochs, desc)])


def keras_accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, batch_size=128, verbose=0), -1) == y))


def run(arch, seed):
    build, prep, epochs, lr, qat_epochs, qat_lr = ARCHS[arch]
    keras.utils.set_random_seed(seed)
    x_train, y_train, x_test, y_test = load_japanese_vowels()
    x_train, x_test = prep(x_train), prep(x_test)
    t0 = time.time()

    print(f"\n=== {arch}: train float ===")
    float_model = build()
    fit(float_model, x_train, y_train, epochs, lr, "float training")
    acc_float = keras_accuracy(float_model, x_test, y_test)

    print(f"=== {arch}: float TFLite and stock post-training int8 (calibrated on the training set) ===")
    fb_float = convert(float_model)
    fb_ptq = convert(float_model, x_train, progress=True)
    acc_ptq = tflite_utils.evaluate(fb_ptq, x_test, y_test, progress=True, desc="PTQ int8 eval")

    print(f"=== {arch}: QAT fine-tune ===")
    qat_model = lstm_transforms.quantize_model(float_model)
    # Ranges from the data first: tfmot's start at [-6, 6] and move slowly (EMA 0.999) on 270 samples.
    lstm_transforms.calibrate(qat_model, x_train)
    acc_calibrated = keras_accuracy(qat_model, x_test, y_test)
    fit(qat_model, x_train, y_train, qat_epochs, qat_lr, "QAT fine-tuning")
    qat_probs = qat_model.predict(x_test, batch_size=128, verbose=0)
    acc_qat = float(np.mean(np.argmax(qat_probs, -1) == y_test))

    print(f"=== {arch}: export QAT model to fully-integer TFLite ===")
    fb_qat = export_tflite(qat_model, x_train, progress=True)
    int8_probs = tflite_utils.predict(fb_qat, x_test, progress=True, desc="int8 eval")
    acc_int8 = float(np.mean(np.argmax(int8_probs, -1) == y_test))
    agreement = float(np.mean(np.argmax(int8_probs, -1) == np.argmax(qat_probs, -1)))
    ops = tflite_utils.op_names(fb_qat)

    return {
        "arch": arch,
        "float": acc_float,
        "ptq_int8": acc_ptq,
        "qat_calibrated": acc_calibrated,
        "qat_keras": acc_qat,
        "int8": acc_int8,
        "agreement": agreement,
        "bytes_float": len(fb_float),
        "bytes_ptq": len(fb_ptq),
        "bytes_int8": len(fb_qat),
        "fused_lstm": ops.count("UNIDIRECTIONAL_SEQUENCE_LSTM"),
        "while": ops.count("WHILE"),
        "seconds": time.time() - t0,
    }


def print_table(rows):
    print("\nJapaneseVowels test set (370 sequences); accuracies in %")
    head = (f"{'arch':10} {'float':>6} {'PTQ int8':>9} {'QAT calib':>9} {'QAT keras':>10} {'QAT int8':>9} {'agree':>6} "
            f"{'float B':>8} {'int8 B':>8} {'int8 - float':>13} {'fused LSTM':>10}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['arch']:10} {100 * r['float']:6.1f} {100 * r['ptq_int8']:9.1f} {100 * r['qat_calibrated']:9.1f} "
              f"{100 * r['qat_keras']:10.1f} "
              f"{100 * r['int8']:9.1f} {100 * r['agreement']:6.1f} {r['bytes_float']:8d} {r['bytes_int8']:8d} "
              f"{100 * (r['int8'] - r['float']):+13.1f} {r['fused_lstm']:10d}")
    print("\nQAT calib = QAT Keras model after lstm_transforms.calibrate, before fine-tuning; QAT keras = after it.")
    print("agree = share of test sequences where the int8 flatbuffer predicts the QAT Keras model's class.")
    ok = all(abs(r["int8"] - r["float"]) <= 0.01 + 1e-9 or r["int8"] > r["float"] for r in rows)
    ok_agree = all(r["agreement"] >= 0.99 for r in rows)
    print(f"int8 accuracy within 1 point of float (or better): {'yes' if ok else 'NO'}; "
          f"agreement >= 99%: {'yes' if ok_agree else 'NO'}")
    return ok and ok_agree


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=["lstm", "question", "both"], default="both")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    tf.get_logger().setLevel("ERROR")
    archs = ["lstm", "question"] if args.arch == "both" else [args.arch]
    rows = [run(a, args.seed) for a in archs]
    ok = print_table(rows)
    print(f"total time: {sum(r['seconds'] for r in rows):.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
