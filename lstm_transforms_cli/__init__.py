"""`lstm-transforms`: inspect what will be quantized, and export to fully-integer TFLite.

    lstm-transforms inspect MODEL [--json]                # .h5 / .keras / SavedModel dir, or a .tflite
    lstm-transforms export MODEL --calibration DATA.npy -o OUT.tflite [--int8-io] [--target micro|ethos-u|cpu|cpu-weight-only]
    lstm-transforms compare MODEL FILE.tflite --data X.npy [--plot OUT.png]

`inspect` on a Keras model prints its `lstm_transforms.plan`: per layer, whether and how it is
quantized (which tensors, bits, per-gate / per-channel / per-tensor), how it will deploy (fused LSTM
op, unrolled integer ops, ...) and, for anything that cannot deploy, why and the fix (`--json` for
the same as JSON); on a `.tflite` file it prints the
ops, sizes, the TensorFlow Lite Micro arena and (with Vela installed) the Ethos-U NPU/CPU split, then
every tensor's dtype and quantization. `export` takes a QAT model (a float model is exported with
post-training quantization and a note); `--target micro` makes an int8-I/O, name-stripped file checked
in TensorFlow Lite Micro, `--target ethos-u` also compiles it with Vela (OUT_vela.tflite). `compare`
prints, per layer, how far the flatbuffer's tensors are from the QAT model's outputs, in LSBs.
Errors are one line on stderr and a non-zero exit code.

Models load in Keras safe mode: a `Lambda` saved as Python bytecode is refused (`export`) or shown
as not loaded (`inspect`), unless you pass `--unsafe-lambda` for a file you trust.

This package holds only the argument parser, so that `--help` and `--version` answer without
importing TensorFlow; the commands live in `lstm_transforms.cli`.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib import metadata

__all__ = ["main", "parser", "version"]


def version() -> str:
    """The installed lstm-transforms version."""
    try:
        return metadata.version("lstm-transforms")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _add_unsafe_lambda(p):
    p.add_argument("--unsafe-lambda", action="store_true",
                   help="load Lambda layers saved as Python bytecode (runs code from the file: only for files you "
                        "trust; Keras's safe_mode=False)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lstm-transforms", description=__doc__.split("\n\n")[0])
    p.add_argument("--version", action="version", version=f"lstm-transforms {version()}")
    sub = p.add_subparsers(dest="command", required=True)
    inspect = sub.add_parser("inspect", help="show per layer how a model is quantized and deploys (or a .tflite's tensors)")
    inspect.add_argument("model", help="a tf-keras model (.h5, .keras, SavedModel directory) or a .tflite file")
    inspect.add_argument("--json", action="store_true", help="the plan as JSON (lstm_transforms.plan(model).to_dict())")
    inspect.add_argument("--activations", choices=("int8", "int16"), default="int8",
                         help="plan for int8 (default) or 16x8 activations")
    _add_unsafe_lambda(inspect)
    export = sub.add_parser("export", help="export a QAT model to a fully-integer .tflite")
    export.add_argument("model", help="a tf-keras QAT model (.h5, .keras, SavedModel directory)")
    export.add_argument("--calibration", nargs="+", metavar="DATA.npy",
                        help="representative inputs, samples on axis 0 (one .npy per model input); "
                             "needed by every target but cpu and cpu-weight-only")
    export.add_argument("-o", "--output", required=True, metavar="OUT.tflite")
    export.add_argument("--int8-io", action="store_true", help="int8 model input/output instead of float")
    export.add_argument("--max-samples", type=int, default=None, help="use at most this many calibration samples")
    export.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    export.add_argument("--target", choices=["tflite", "micro", "ethos-u", "cpu", "cpu-weight-only"], default="tflite",
                        help="tflite: fully integer; micro: int8 I/O, names stripped, checked in TFLite Micro "
                             "(arena printed); ethos-u: that, and compiled with Vela for an Ethos-U55-128 "
                             "(OUT_vela.tflite); cpu: mode='dynamic' for phone / server CPUs (int8 QAT "
                             "weights, float activations, hybrid kernels, no calibration data); "
                             "cpu-weight-only: mode='weight_only' (the same int8 weights, float kernels)")
    _add_unsafe_lambda(export)
    compare = sub.add_parser("compare", help="per layer error of a .tflite against its QAT model, in output LSBs")
    compare.add_argument("model", help="the tf-keras QAT model the flatbuffer was exported from")
    compare.add_argument("flatbuffer", metavar="FILE.tflite", help="the exported flatbuffer (not name-stripped)")
    compare.add_argument("--data", required=True, nargs="+", metavar="X.npy",
                         help="inputs to run both on, samples on axis 0 (one .npy per model input)")
    compare.add_argument("--max-samples", type=int, default=None, help="use at most this many samples")
    compare.add_argument("--plot", metavar="OUT.png", default=None, help="also draw the errors (needs matplotlib)")
    _add_unsafe_lambda(compare)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from lstm_transforms import cli  # TensorFlow is imported from here on

    return cli.run(args)


if __name__ == "__main__":
    sys.exit(main())
