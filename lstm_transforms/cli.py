"""The commands of `lstm-transforms` (the parser, `--help` and `--version` are in `lstm_transforms_cli`).

`inspect` prints per layer how a model is quantized (on a .tflite: ops, sizes, TFLite Micro arena,
Ethos-U placement); `export` writes a fully-integer .tflite (`--target micro|ethos-u` for devices);
`compare` reports per layer how far a .tflite is from its QAT model. Models load in Keras safe mode
unless the user passes `--unsafe-lambda` (see `lstm_transforms.loading`).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import warnings

import numpy as np

from lstm_transforms import loading
from lstm_transforms.export import export_tflite, plan
from lstm_transforms.wrappers import is_quantize_wrapper

__all__ = ["main", "run"]


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


# --target -> export mode for phone / server CPUs (float activations, int8 QAT weights).
CPU_TARGETS = {"cpu": "dynamic", "cpu-weight-only": "weight_only"}


def _load_model(path, unsafe_lambda=False):
    if not os.path.exists(path):
        raise CLIError(f"no such file or directory: {path}")
    try:
        return loading.load_model(path, safe_mode=not unsafe_lambda)
    except loading.UnsafeLambdaError:
        raise
    except Exception as e:  # noqa: BLE001 - one clear line
        raise CLIError(f"cannot load a Keras model from {path}: {type(e).__name__}: {_first_line(e)}") from e


def _first_line(e):
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _print_rows(title, rows):
    width = max(len(r[0]) for r in rows)
    cwidth = max(len(r[1]) for r in rows)
    print(title)
    for name, cls, status, details in rows:
        print(f"{name:{width}}  {cls:{cwidth}}  {status}")
        for d in details:
            print(f"{'':{width}}  {'':{cwidth}}    - {d}")


_NOT_LOADED = ("a Python lambda: its bytecode was not run (Keras safe mode), so it is shown as float; "
               "rerun with --unsafe-lambda if you trust this file")


def _config_rows(path, refused):
    """Layer names and classes read from the file's config, when the model cannot be rebuilt."""
    config = None if os.path.isdir(path) else loading.model_config(path)
    rows = []
    for layer in (config or {}).get("config", {}).get("layers", []):
        name, cls = layer.get("config", {}).get("name", "?"), layer.get("class_name", "?")
        if name in refused:
            rows.append((name, cls, "not loaded", [_NOT_LOADED]))
        else:
            rows.append((name, cls, "not analysed", ["the model cannot be rebuilt without running the Lambda code"]))
    return rows


def _inspect_without_lambdas(path, refusal, args):
    """The plan of the model with its refused Lambdas replaced by placeholders; or, when the file
    does not record their output shapes, the layer list of its config and a CLIError."""
    try:
        model, names = loading.model_with_placeholders(path)
    except loading.UnsafeLambdaError:
        rows = _config_rows(path, refusal.names)
        if rows:
            _print_rows(f"{path}: {len(rows)} layers (from the saved config; not analysed)", rows)
        raise CLIError(f"{refusal} The file does not record the output shape of those Lambda layers, so the rest "
                       "of the model could not be analysed.") from refusal
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the placeholders' FloatLambdaWarning: reported in the rows instead
        model_plan = _plan(path, model, args)
    layers = tuple(dataclasses.replace(row, class_name="Lambda", status="not loaded", quantized=(_NOT_LOADED,))
                   if row.name in names else row for row in model_plan.layers)
    _print_plan(dataclasses.replace(model_plan, layers=layers), args)
    print(f"lstm-transforms inspect: note: {refusal}", file=sys.stderr)
    return 0


def _plan(path, model, args):
    try:
        return plan(model, activations=args.activations)
    except Exception as e:  # noqa: BLE001 - quantize_model's own message, one line
        raise CLIError(f"cannot quantize {path}: {_first_line(e)}") from e


def _print_plan(model_plan, args):
    print(model_plan.to_json(indent=1) if args.json else model_plan)


def _device_lines(flatbuffer):
    """TFLite Micro arena and Vela placement of a flatbuffer, as printable lines (what is installed)."""
    from lstm_transforms import devices

    lines = []
    try:
        recorded = devices.micro_recorded_arena_bytes(flatbuffer)
        lines.append(f"TFLite Micro arena: {devices.micro_arena_bytes(flatbuffer)} bytes needed "
                     f"({recorded} bytes recorded by TFLM's allocator)")
    except ImportError:
        lines.append(f"TFLite Micro arena: not measured (tflite-micro not installed: {devices.INSTALL_HINT})")
    except devices.DeviceError as e:
        lines.append(f"TFLite Micro: {_first_line(e)}")
    try:
        lines.append(devices.vela_compile(flatbuffer).summary())
    except ImportError:
        lines.append(f"Ethos-U: not compiled (ethos-u-vela not installed: {devices.INSTALL_HINT})")
    except devices.DeviceError as e:
        lines.append(f"Ethos-U: {_first_line(e)}")
    return lines


def _inspect_tflite(path):
    from collections import Counter

    from lstm_transforms import flatbuffer_size, tflite_utils

    if not os.path.exists(path):
        raise CLIError(f"no such file: {path}")
    with open(path, "rb") as f:
        flatbuffer = f.read()
    try:
        ops = Counter(tflite_utils.op_names(flatbuffer))
        size = flatbuffer_size.size_breakdown(flatbuffer)
    except Exception as e:  # noqa: BLE001 - one clear line
        raise CLIError(f"cannot read {path} as a TFLite flatbuffer: {_first_line(e)}") from e
    print(f"{path}: {size['total']} bytes ({size['buffers']} constant data, {size['other']} tables: "
          f"{size['operators']} operators, {size['tensors']} tensors, {size['name_bytes']} bytes of tensor names)")
    print("operators: " + ", ".join(f"{name} x{n}" for name, n in ops.most_common()))
    for line in _device_lines(flatbuffer):
        print(line)
    print()
    print(tflite_utils.summary(flatbuffer))
    return 0


def _cmd_inspect(args):
    if args.model.endswith(".tflite"):
        return _inspect_tflite(args.model)
    try:
        model = _load_model(args.model, args.unsafe_lambda)
    except loading.UnsafeLambdaError as refusal:
        return _inspect_without_lambdas(args.model, refusal, args)
    _print_plan(_plan(args.model, model, args), args)
    return 0


def _cmd_export(args):
    try:
        model = _load_model(args.model, args.unsafe_lambda)
    except loading.UnsafeLambdaError as refusal:
        raise CLIError(str(refusal)) from refusal
    if not any(is_quantize_wrapper(layer) for layer in model.layers):
        print(f"note: {args.model} has no quantize wrappers (not a QAT model); exporting it with post-training "
              "quantization.", file=sys.stderr)
    if args.target in CPU_TARGETS:
        mode = CPU_TARGETS[args.target]
        if args.int8_io:
            raise CLIError(f"--target {args.target} keeps float input/output (mode='{mode}'); drop --int8-io.")
        data, flatbuffer = None, _export(model, None, mode=mode)
    else:
        data = _calibration_data(args.calibration)
        if args.target != "tflite" and not args.int8_io:
            print(f"note: --target {args.target} exports with int8 input/output (--int8-io).", file=sys.stderr)
            args.int8_io = True
        flatbuffer = _export(model, data, int8_io=args.int8_io, max_samples=args.max_samples,
                             progress=not args.quiet)
    out_dir = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(out_dir):
        raise CLIError(f"output directory does not exist: {out_dir}")
    vela = None
    if args.target in ("micro", "ethos-u"):
        flatbuffer, vela = _for_device(flatbuffer, data, args.target)
    _write(args.output, flatbuffer)
    print(f"wrote {args.output} ({len(flatbuffer)} bytes)")
    if vela is not None:
        compiled = os.path.splitext(args.output)[0] + "_vela.tflite"
        _write(compiled, vela.compiled)
        print(vela.summary())
        print(f"wrote {compiled} ({len(vela.compiled)} bytes, for the Ethos-U driver)")
    return 0


def _calibration_data(paths):
    """The calibration arrays of `--calibration` (one array, or a list for several inputs)."""
    if not paths:
        raise CLIError("--calibration DATA.npy is needed to export a fully-integer model (only --target cpu "
                       "and cpu-weight-only export without it).")
    for p in paths:
        if not os.path.exists(p):
            raise CLIError(f"no such calibration file: {p}")
    try:
        data = [np.load(p) for p in paths]
    except Exception as e:  # noqa: BLE001
        raise CLIError(f"cannot read calibration data: {_first_line(e)}") from e
    return data if len(data) > 1 else data[0]


def _export(model, data, **options):
    try:
        return export_tflite(model, data, **options)
    except (ValueError, RuntimeError) as e:
        raise CLIError(_first_line(e)) from e


def _write(path, data):
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _for_device(flatbuffer, data, target, samples=32):
    """Strip names, check the model in TFLite Micro against TFLite, print the arena; Vela for ethos-u."""
    from lstm_transforms import devices, flatbuffer_size, tflite_utils

    stripped = flatbuffer_size.strip_strings(flatbuffer)
    x = [a[:samples] for a in data] if isinstance(data, list) else data[:samples]
    try:
        reference = tflite_utils.predict(stripped, x)
        micro = devices.micro_predict(stripped, x)
        arena = devices.micro_arena_bytes(stripped)
        vela = devices.vela_compile(stripped) if target == "ethos-u" else None
    except ImportError as e:
        raise CLIError(str(e)) from e
    except devices.DeviceError as e:
        raise CLIError(_first_line(e)) from e
    reference = reference if isinstance(reference, list) else [reference]
    micro = micro if isinstance(micro, list) else [micro]
    agree = float(np.mean(np.argmax(reference[0], -1) == np.argmax(micro[0], -1)))
    worst = max(float(np.max(np.abs(a - b))) for a, b in zip(reference, micro))
    print(f"stripped names: {len(flatbuffer)} -> {len(stripped)} bytes")
    print(f"TFLite Micro: runs; on {len(reference[0])} calibration samples {100 * agree:.1f}% the same classes as "
          f"TFLite (largest output difference {worst:.4g}); tensor arena {arena} bytes")
    return stripped, vela


def _cmd_compare(args):
    from lstm_transforms.compare import compare

    try:
        model = _load_model(args.model, args.unsafe_lambda)
    except loading.UnsafeLambdaError as refusal:
        raise CLIError(str(refusal)) from refusal
    if not os.path.exists(args.flatbuffer):
        raise CLIError(f"no such file: {args.flatbuffer}")
    for p in args.data:
        if not os.path.exists(p):
            raise CLIError(f"no such data file: {p}")
    with open(args.flatbuffer, "rb") as f:
        flatbuffer = f.read()
    try:
        data = [np.load(p) for p in args.data]
    except Exception as e:  # noqa: BLE001
        raise CLIError(f"cannot read data: {_first_line(e)}") from e
    try:
        report = compare(model, flatbuffer, data if len(data) > 1 else data[0], max_samples=args.max_samples,
                         plot=args.plot)
    except (ValueError, ImportError) as e:
        raise CLIError(_first_line(e)) from e
    print(report.summary())
    first = report.first_divergent()
    if first is not None:
        print(f"first layer over 2 LSB (p99): {first.layer}")
    if args.plot:
        print(f"wrote {args.plot}")
    return 0


def run(args) -> int:
    """Run the parsed command line `args` (from `lstm_transforms_cli.parser()`); the exit code."""
    try:
        return _COMMANDS[args.command](args)
    except CLIError as e:
        print(f"lstm-transforms {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - never a traceback for the user
        print(f"lstm-transforms {args.command}: error: {type(e).__name__}: {_first_line(e)}", file=sys.stderr)
        return 1


_COMMANDS = {"inspect": _cmd_inspect, "export": _cmd_export, "compare": _cmd_compare}


def main(argv=None) -> int:
    """`lstm-transforms ARGS...` in this process (the same as the console script)."""
    from lstm_transforms_cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
