"""Convert: a float Keras model -> a TFLite flatbuffer, in a child process (third stage).

The model is saved as a batch-1 SavedModel (`[1, T, F]` inputs, so LSTMs fuse) and converted by
`python -m lstm_transforms.export._worker`: a converter crash becomes an `ExportError` naming the
layer(s) involved, never a dead caller, and a flatbuffer is only returned after it loaded and ran
once in the TFLite interpreter.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading

import numpy as np

from lstm_transforms._keras import check_model, keras, tf
from lstm_transforms import data as data_mod
from lstm_transforms.export.errors import ExportError

__all__ = ["convert", "layer_names_in"]


def convert(model, representative_dataset=None, *, int8_io=False, max_samples=None, timeout=600, progress=False,
            float_model=None, activations="int8", input_ranges=None, lstm_ranges=None, op_ranges=None,
            named_ranges=None, weight_grids=None, report=None, weights_only=False):
    """Convert a float tf-keras model to a TFLite flatbuffer (`bytes`) in a child process.

    With `representative_dataset`: post-training full-integer quantization (int8 weights, int32
    biases, int8 activations, int16 inside the integer LSTM; `activations="int16"`: 16x8); float
    input/output unless `int8_io=True`. Without it: a float model, or with `weights_only="hybrid"`
    (or True) float activations and int8 weights for TFLite's hybrid kernels
    (`_hybrid.quantize_weights`; the `weight_grids` apply), with `weights_only="dequantized"` the same
    int8 weights each read through a DEQUANTIZE op by float kernels (`_hybrid.dequantize_weights`).
    Inputs are fixed to batch 1.
    `input_ranges` ({input index: (lo, hi)}), `lstm_ranges` (`bake.LSTMRanges`), `op_ranges`
    (`bake.OpRange`) and `named_ranges` ({op name tag: (lo, hi)}) replace the calibrated statistics
    of those tensors; `weight_grids`
    (`bake.WeightGrid`) put weights back on their QAT grid.
    `report` (a dict) receives what the child changed. Raises `ExportError` (naming the layer(s)
    and the cause) when the converter fails or crashes, or the result does not load and run.
    `progress=True` draws a calibration progress bar on stderr. `float_model` names layers in errors.
    """
    check_model(model)
    arrays = None
    if representative_dataset is not None:
        arrays = data_mod.arrays(representative_dataset, model, max_samples)
    elif int8_io:
        raise ValueError("int8_io=True needs a representative_dataset (full-int8 conversion).")
    weights_only = "hybrid" if weights_only is True else weights_only
    if weights_only not in (False, None, "hybrid", "dequantized"):
        raise ValueError(f'weights_only must be False, True, "hybrid" or "dequantized", got {weights_only!r}')
    if weights_only and arrays is not None:
        raise ValueError("weights_only quantizes weights only: pass no representative_dataset.")
    workdir = tempfile.mkdtemp(prefix="lstm_transforms_export_")
    try:
        specs = _input_specs(model)
        _save(model, specs, os.path.join(workdir, "saved_model"))
        options = {"int8": arrays is not None, "int8_io": bool(int8_io), "activations": activations,
                   "weights_only": weights_only or False,
                   "weight_grids": [list(g.kmax) for g in weight_grids or []],
                   "input_ranges": {specs[k].name: list(r) for k, r in (input_ranges or {}).items() if r},
                   "lstm_ranges": [_lstm_options(r) for r in lstm_ranges or []],
                   "op_ranges": [list(r.output) for r in op_ranges or []],
                   "named_ranges": {tag: list(r) for tag, r in (named_ranges or {}).items()}}
        if arrays is not None:
            np.savez(os.path.join(workdir, "calibration.npz"), *arrays)
        keys = {f"lstm_{k}": np.asarray(r.input_to_forget, np.float32) for k, r in enumerate(lstm_ranges or [])}
        keys.update({f"op_{k}": np.asarray(r.weights, np.float32) for k, r in enumerate(op_ranges or [])})
        keys.update({f"grid_{k}": np.asarray(g.values, np.float32) for k, g in enumerate(weight_grids or [])})
        if keys:
            np.savez(os.path.join(workdir, "ranges.npz"), **keys)
        with open(os.path.join(workdir, "options.json"), "w") as f:
            json.dump(options, f)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_USE_LEGACY_KERAS="1")
        pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env["PYTHONPATH"] = pkg_root + os.pathsep + env.get("PYTHONPATH", "")
        proc = _run_worker(workdir, env, timeout, progress, model.name)
        out = os.path.join(workdir, "model.tflite")
        if proc.returncode == 0 and os.path.exists(out):
            if report is not None:
                with open(os.path.join(workdir, "report.json")) as f:
                    report.update(json.load(f))
            with open(out, "rb") as f:
                return f.read()
        raise _conversion_error(proc, workdir, float_model or model)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _lstm_options(ranges):
    return {"output": list(ranges.output) if ranges.output is not None else None,
            "cell_bound": ranges.cell_bound, "cell_clip": ranges.cell_clip}


def _input_specs(model):
    return [tf.TensorSpec([1] + list(t.shape[1:]), t.dtype, name=t.name.split(":")[0]) for t in model.inputs]


def _save(model, specs, path):
    module = tf.Module()
    module.variables_to_save = list(model.variables)  # not the model: Keras would trace every layer
    module.serve = tf.function(lambda *xs: model(list(xs) if len(xs) > 1 else xs[0], training=False),
                               input_signature=specs)
    tf.saved_model.save(module, path, signatures=module.serve.get_concrete_function())


class _Finished:
    def __init__(self, returncode, stderr):
        self.returncode, self.stderr = returncode, stderr


def _run_worker(workdir, env, timeout, progress, name):
    """Run the worker; relay its calibration progress lines to a bar on stderr when `progress`."""
    err_path = os.path.join(workdir, "stderr.txt")
    with open(err_path, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lstm_transforms.export._worker", workdir],
            env=env, stdout=subprocess.PIPE, stderr=err, text=True,
        )
        fired = []

        def kill():
            fired.append(True)
            proc.kill()

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            for line in proc.stdout:
                if progress and line.startswith("@@progress "):
                    _draw_progress(*(int(v) for v in line.split()[1:3]))
            proc.wait()
        finally:
            timer.cancel()
            proc.stdout.close()
    with open(err_path) as f:
        stderr = f.read()
    if fired:
        raise ExportError(f"TFLite conversion of '{name}' did not finish in {timeout} s.")
    return _Finished(proc.returncode, stderr)


def _draw_progress(done, total, width=30):
    if not sys.stderr.isatty() and done != total:
        return  # in a log file: only the final bar
    filled = int(width * done / max(total, 1))
    sys.stderr.write(f"\rcalibration: [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def layer_names_in(text, model):
    names = sorted({layer.name for layer in model.layers}, key=len, reverse=True)
    found = []
    for name in names:
        if re.search(rf"(^|[/\"'(\s]){re.escape(name)}(/|[\"')\s:]|$)", text) and not any(name in f for f in found):
            found.append(name)
    return found


def _describe_layers(names, model):
    out = []
    for name in names:
        layer = model.get_layer(name)
        cls = type(layer).__name__
        if cls == "Bidirectional":
            cls = f"Bidirectional({type(layer.forward_layer).__name__})"
        out.append(f"'{name}' ({cls})")
    return ", ".join(out)


def _loop_layers(model):
    """Recurrent layers that become control flow in TFLite (the usual cause of converter crashes)."""
    risky = []
    for layer in model.layers:
        rnn = layer.forward_layer if isinstance(layer, keras.layers.Bidirectional) else layer
        if isinstance(rnn, keras.layers.RNN) and not getattr(rnn, "unroll", False):
            if not isinstance(rnn.cell, keras.layers.LSTMCell):
                risky.append(layer.name)
    return risky


def _conversion_error(proc, workdir, model):
    err_file = os.path.join(workdir, "error.txt")
    detail = ""
    if os.path.exists(err_file):
        with open(err_file) as f:
            detail = f.read().strip()
    text = detail + "\n" + (proc.stderr or "")
    names = layer_names_in(text, model)
    if proc.returncode < 0:
        try:
            sig = signal.Signals(-proc.returncode).name
        except ValueError:
            sig = f"signal {-proc.returncode}"
        cause = f"the TFLite converter crashed ({sig})"
        names = names or _loop_layers(model)
    else:
        last = [ln for ln in detail.splitlines() if ln.strip()]
        cause = "the TFLite converter failed: " + (last[-1][:400] if last else (proc.stderr or "").strip()[-400:])
    where = f" at layer(s) {_describe_layers(names, model)}" if names else ""
    return ExportError(f"Export of '{model.name}' failed{where}: {cause}.")
