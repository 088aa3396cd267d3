"""`lstm-transforms`: inspect what will be quantized, and export to fully-integer TFLite.

    lstm-transforms inspect MODEL [--json]                # .h5 / .keras / SavedModel dir, or a .tflite
    lstm-transforms export MODEL --calibration DATA.npy -o OUT.tflite [--int8-io]

`inspect` on a Keras model prints its `lstm_transforms.plan`: per layer, whether and how it is
quantized (which tensors, bits, per-gate / per-channel / per-tensor), how it will deploy (fused
LSTM op, unrolled integer ops, ...) and, for anything that cannot deploy, why and the fix (`--json`
for the same as JSON); on a `.tflite` file it prints the ops and every tensor's dtype and
quantization. `export` takes a QAT model (a float model is exported
with post-training quantization and a note). Errors are one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["main"]


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def _load_model(path):
    from lstm_transforms._keras import keras

    if not os.path.exists(path):
        raise CLIError(f"no such file or directory: {path}")
    import lstm_transforms

    try:
        with lstm_transforms.quantize_scope():
            return keras.models.load_model(path, compile=False, safe_mode=False)
    except TypeError:  # a loader without safe_mode (SavedModel)
        with lstm_transforms.quantize_scope():
            return keras.models.load_model(path, compile=False)
    except Exception as e:  # noqa: BLE001 - one clear line
        raise CLIError(f"cannot load a tf-keras model from {path}: {type(e).__name__}: {_first_line(e)}") from e


def _first_line(e):
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _is_wrapper(layer):
    from lstm_transforms.export._graph import is_quantize_wrapper

    return is_quantize_wrapper(layer)


def _cmd_inspect(args):
    if args.model.endswith(".tflite"):
        from lstm_transforms import tflite_utils

        with open(args.model, "rb") as f:
            print(tflite_utils.summary(f.read()))
        return 0
    model = _load_model(args.model)
    import lstm_transforms

    try:
        model_plan = lstm_transforms.plan(model, activations=args.activations)
    except Exception as e:  # noqa: BLE001 - quantize_model's own message, one line
        raise CLIError(f"cannot quantize {args.model}: {_first_line(e)}") from e
    print(model_plan.to_json(indent=1) if args.json else model_plan)
    return 0


def _cmd_export(args):
    import numpy as np

    from lstm_transforms.export import export_tflite

    model = _load_model(args.model)
    paths = args.calibration
    for p in paths:
        if not os.path.exists(p):
            raise CLIError(f"no such calibration file: {p}")
    try:
        data = [np.load(p) for p in paths]
    except Exception as e:  # noqa: BLE001
        raise CLIError(f"cannot read calibration data: {_first_line(e)}") from e
    if not any(_is_wrapper(layer) for layer in model.layers):
        print(f"note: {args.model} has no quantize wrappers (not a QAT model); exporting it with post-training "
              "quantization.", file=sys.stderr)
    try:
        flatbuffer = export_tflite(model, data if len(data) > 1 else data[0], int8_io=args.int8_io,
                                   max_samples=args.max_samples, progress=not args.quiet)
    except (ValueError, RuntimeError) as e:
        raise CLIError(_first_line(e)) from e
    out_dir = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(out_dir):
        raise CLIError(f"output directory does not exist: {out_dir}")
    tmp = args.output + ".part"
    with open(tmp, "wb") as f:
        f.write(flatbuffer)
    os.replace(tmp, args.output)
    print(f"wrote {args.output} ({len(flatbuffer)} bytes)")
    return 0


def _parser():
    parser = argparse.ArgumentParser(prog="lstm-transforms", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="show per layer how a model is quantized and deploys (or a .tflite's tensors)")
    p.add_argument("model", help="a tf-keras model (.h5, .keras, SavedModel directory) or a .tflite file")
    p.add_argument("--json", action="store_true", help="the plan as JSON (lstm_transforms.plan(model).to_dict())")
    p.add_argument("--activations", choices=("int8", "int16"), default="int8",
                   help="plan for int8 (default) or 16x8 activations")
    p.set_defaults(func=_cmd_inspect)
    p = sub.add_parser("export", help="export a QAT model to a fully-integer .tflite")
    p.add_argument("model", help="a tf-keras QAT model (.h5, .keras, SavedModel directory)")
    p.add_argument("--calibration", required=True, nargs="+", metavar="DATA.npy",
                   help="representative inputs, samples on axis 0 (one .npy per model input)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.tflite")
    p.add_argument("--int8-io", action="store_true", help="int8 model input/output instead of float")
    p.add_argument("--max-samples", type=int, default=None, help="use at most this many calibration samples")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_export)
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return args.func(args)
    except CLIError as e:
        print(f"lstm-transforms {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - never a traceback for the user
        print(f"lstm-transforms {args.command}: error: {type(e).__name__}: {_first_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
