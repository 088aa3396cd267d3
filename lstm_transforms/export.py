"""QAT model -> fully-integer TFLite flatbuffer, with the fused LSTM op.

Why not convert the QAT model directly: fake-quant ops on recurrent weights stop the converter from
fusing an LSTM into `UNIDIRECTIONAL_SEQUENCE_LSTM` (it emits a `WHILE` loop and full-int8 conversion
then fails), and full-int8 conversion of GRU/SimpleRNN `WHILE` loops crashes the process.

What `export_tflite` does instead:

1. **Bake** (`baked_float_model`): rebuild a plain float tf-keras model with the QAT model's layer
   graph, in which every weight is replaced by its fake-quantized value exactly as the QAT model
   computes it at inference (`quantizer(weight, training=False, ...)`). Quantize wrappers become their
   stock float layers (`FLOAT_CLASS`), `QuantizeLayer`s become identities, GRU and SimpleRNN are
   rebuilt with `unroll=True` (a fixed time dimension is required).
2. **Convert** (`convert`): post-training full-int8 quantization of that float model from a
   batch-1 concrete function (`[1, T, F]` inputs, so LSTMs fuse), run in a separate Python process:
   a converter crash becomes an `ExportError` naming the layer(s) involved, never a dead caller, and
   a model is only returned after it loaded and ran once in the TFLite interpreter.

Because the baked weights already lie on the int8 grid with the max-abs symmetric scale the converter
picks itself (one scale per gate matrix for LSTM, per output channel for Conv, per tensor for Dense:
per-channel Dense quantization is switched off to match tfmot), the int8 weights in the flatbuffer
dequantize to the QAT weights (`tflite_utils.weights` / tests check it, gate by gate).

**Which ranges come from where.**

- Weights and their scales: from QAT, exactly, when the QAT range is the weights' current max-abs.
  That always holds for the per-gate recurrent quantizers (they compute it from the weights). tfmot's
  `LastValueQuantizer` (Dense, Conv) stores the range seen at the last *training* step; if a weight's
  max-abs shrank after that step the converter re-grids that tensor (error at most half a step).
- Biases: int32 at scale `input_scale * weight_scale`. The converter sometimes quantizes a bias with
  a stale input scale when fixed and calibrated ranges are mixed (seen on the fused LSTM: 1.56x);
  the worker re-expresses every such bias at the right scale (`_convert_worker.requantize_biases`).
- Activation ranges learned in QAT are kept (as fixed `FakeQuant` ops the converter honours) for the
  model input (`QuantizeLayer`) and for outputs of non-recurrent layers (Conv, Dense, BatchNorm,
  Add, ...), except where that output must share its scale with a recurrent output (Concatenate,
  pooling, reshapes).
- From **calibration** on `representative_dataset`: the outputs of recurrent layers (the LSTM hidden
  state / output, the unrolled GRU/SimpleRNN steps, one range per step) and the layers tied to them.
  The converter cannot fix both the input and the output range of a fused LSTM ("Failed to duplicate
  values for the stateful op"); if it still rejects the QAT ranges, `export_tflite` warns and falls
  back to calibrating every activation range (the weights stay the QAT weights).
- Inside the integer LSTM: gate outputs are int16 on the fixed range [-1, 1), the cell state int16
  with a power-of-two scale from calibration, clipped to +-10 (CellClip) — what the QAT cells simulate.
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
import warnings

import numpy as np

from lstm_transforms._keras import check_model, keras, tf
from tensorflow_model_optimization.python.core.quantization.keras import quantize_layer as _tfmot_quantize_layer
from tensorflow_model_optimization.python.core.quantization.keras import quantize_wrapper as _tfmot_wrapper

__all__ = ["export_tflite", "convert", "baked_float_model", "ExportError", "FakeQuant"]

_UNROLL_CLASSES = ("GRU", "SimpleRNN")


class ExportError(RuntimeError):
    """The TFLite converter failed or crashed; the message names the layer(s) and the cause."""


# ----------------------------------------------------------------------------------------------
# 1. Bake: QAT model -> float model with fake-quantized weights
# ----------------------------------------------------------------------------------------------


def _float_class_name(obj_or_cls):
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    fc = getattr(cls, "FLOAT_CLASS", None)
    if fc is None:
        return None
    return fc if isinstance(fc, str) else fc.__name__


def _float_class_map(layer):
    """{class_name: stock class name} for the layer and every nested layer/cell that has FLOAT_CLASS."""
    out, stack, seen = {}, [layer], set()
    while stack:
        obj = stack.pop()
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        name = _float_class_name(obj)
        if name is not None:
            out[type(obj).__name__] = name
        for attr in ("layer", "forward_layer", "backward_layer", "cell"):
            stack.append(getattr(obj, attr, None))
        stack.extend(getattr(obj, "cells", None) or [])
    return out


def _plain_activation(act):
    """The float activation behind tfmot's QuantizeAwareActivation (or the activation itself)."""
    inner = getattr(act, "activation", None)
    if inner is not None and type(act).__name__ in ("QuantizeAwareActivation", "NoOpActivation"):
        return inner
    return act


def _clean_config(config, class_map):
    """Recursively: stock class names for FLOAT_CLASS subclasses, drop `quant_*` keys, plain activations."""
    if isinstance(config, list):
        return [_clean_config(c, class_map) for c in config]
    if not isinstance(config, dict):
        return config
    if "class_name" in config and "config" in config:
        out = dict(config)
        cname = config["class_name"]
        if cname in class_map:
            out["class_name"] = class_map[cname]
            out.pop("module", None)
            out.pop("registered_name", None)
        if cname == "QuantizeAwareActivation":
            return _clean_config(config["config"]["activation"], class_map)
        out["config"] = _clean_config(config["config"], class_map)
        return out
    return {k: _clean_config(v, class_map) for k, v in config.items() if not str(k).startswith("quant_")}


def _qat_weight_values(wrapper):
    """{variable ref: value as the QAT layer uses it at inference} for one quantize wrapper."""
    values = {}
    for var, quantizer, quantizer_vars in getattr(wrapper, "_weight_vars", []):
        q = wrapper._make_quantizer_fn(quantizer, var, False, quantizer_vars)()
        values[var.ref()] = np.asarray(q)
    return values


def _all_variables(layer):
    """Every variable of `layer`, including the ones a quantize wrapper untracked from its inner layer."""
    found = {}
    for var in list(layer.weights) + [v for v, _, _ in getattr(layer, "_weight_vars", [])]:
        found.setdefault(var.ref(), var)
    return list(found.values())


def _relative(name, layer_name):
    name = name.split(":")[0]
    prefix = layer_name + "/"
    if name.startswith(prefix):
        while name.startswith(prefix):  # a layer built inside a same-named wrapper: "dense/dense/kernel"
            name = name[len(prefix):]
        return name
    return name.split("/", 1)[-1]


def _baked_weights(source, new_layer):
    """Weights for `new_layer` (float) from `source` (QAT wrapper or plain layer), matched by name."""
    inner = getattr(source, "layer", source) if _is_quantize_wrapper(source) else source
    qvalues = _qat_weight_values(source) if _is_quantize_wrapper(source) else {}
    candidates = {}
    for var in _all_variables(source):
        rel = _relative(var.name, inner.name)
        candidates.setdefault(rel, []).append(var)
    values = []
    for target in new_layer.weights:
        rel = _relative(target.name, new_layer.name)
        match = [v for v in candidates.get(rel, []) if tuple(v.shape) == tuple(target.shape)]
        if len(match) != 1:
            raise ExportError(
                f"Layer '{inner.name}': cannot find its weight '{rel}' {tuple(target.shape)} in the QAT "
                f"model (candidates: {sorted(candidates)})."
            )
        var = match[0]
        values.append(qvalues.get(var.ref(), None) if var.ref() in qvalues else var.numpy())
    return values


def _is_quantize_wrapper(layer):
    """tfmot's QuantizeWrapper/QuantizeWrapperV2 or any subclass (e.g. the masking-safe wrapper)."""
    return isinstance(layer, _tfmot_wrapper.QuantizeWrapper)


def _is_quantize_layer(layer):
    return isinstance(layer, _tfmot_quantize_layer.QuantizeLayer)


def _time_dim(layer):
    try:
        shape = layer.input_shape
    except (AttributeError, RuntimeError):  # a shared layer: take its first call
        shape = layer.get_input_shape_at(0)
    if isinstance(shape, list):
        shape = shape[0]
    return shape[1] if shape is not None and len(shape) > 1 else None


def _set_unroll(config, layer_name, time_dim):
    """unroll=True on every GRU/SimpleRNN/RNN(non-LSTM cell) config inside `config` (T must be fixed)."""
    if isinstance(config, list):
        return [_set_unroll(c, layer_name, time_dim) for c in config]
    if not isinstance(config, dict):
        return config
    out = {k: _set_unroll(v, layer_name, time_dim) for k, v in config.items()}
    cname = config.get("class_name")
    needs = cname in _UNROLL_CLASSES or (cname == "RNN" and not _is_lstm_cell_config(config["config"]["cell"]))
    if needs and not out["config"].get("unroll"):
        if time_dim is None:
            raise ExportError(
                f"Layer '{layer_name}' ({cname}) has a time dimension of None. TFLite has no fused integer "
                f"{cname} op, so it is exported unrolled, which needs a fixed number of steps: build the "
                "model with keras.Input(shape=(T, features))."
            )
        out["config"] = dict(out["config"], unroll=True)
    return out


def _is_lstm_cell_config(cell_config):
    return isinstance(cell_config, dict) and cell_config.get("class_name") == "LSTMCell"


def _float_layer(layer):
    """A fresh stock float layer equivalent to `layer` (a QAT wrapper, a QuantizeLayer or a plain layer)."""
    if _is_quantize_layer(layer):
        return keras.layers.Activation("linear", name=layer.name)
    inner = layer.layer if _is_quantize_wrapper(layer) else layer
    class_map = _float_class_map(inner)
    config = {"class_name": type(inner).__name__, "config": inner.get_config()}
    if getattr(inner, "activation", None) is not None and "activation" in config["config"]:
        config["config"]["activation"] = keras.activations.serialize(_plain_activation(inner.activation))
    config = _set_unroll(_clean_config(config, class_map), inner.name, _time_dim(layer))
    try:
        if config["class_name"] == type(inner).__name__:
            return type(inner).from_config(config["config"])
        return keras.layers.deserialize(config)
    except Exception:
        if not inner.weights and not _is_quantize_wrapper(layer):
            return inner  # e.g. a Lambda of a Python lambda: weightless, safe to share
        raise


class FakeQuant(keras.layers.Layer):
    """`fake_quant_with_min_max_vars` with fixed constants: a QAT activation range, for the converter."""

    def __init__(self, range_min, range_max, num_bits=8, narrow_range=False, **kwargs):
        super().__init__(**kwargs)
        self.range_min, self.range_max = float(range_min), float(range_max)
        self.num_bits, self.narrow_range = int(num_bits), bool(narrow_range)

    @tf.autograph.experimental.do_not_convert
    def call(self, inputs, training=None):
        del training  # the same at training and inference: a fixed range
        return tf.quantization.fake_quant_with_min_max_vars(
            inputs, self.range_min, self.range_max, num_bits=self.num_bits, narrow_range=self.narrow_range
        )

    def get_config(self):
        return dict(super().get_config(), range_min=self.range_min, range_max=self.range_max,
                    num_bits=self.num_bits, narrow_range=self.narrow_range)


class WithFakeQuant(keras.layers.Layer):
    """A float layer followed by its QAT output range (`FakeQuant`)."""

    def __init__(self, layer, fake_quant, **kwargs):
        super().__init__(name=layer.name, **kwargs)
        self.layer, self.fake_quant = layer, fake_quant

    @tf.autograph.experimental.do_not_convert
    def call(self, inputs, training=None, **kwargs):
        if self.layer._call_spec.expects_training_arg:
            kwargs["training"] = training
        return self.fake_quant(self.layer(inputs, **kwargs))


def _fake_quant_from(quantizer, quantizer_vars, name):
    """A `FakeQuant` reproducing a tfmot activation quantizer at inference, or None if not per-tensor."""
    if quantizer is None or not isinstance(quantizer_vars, dict):
        return None
    lo, hi = quantizer_vars.get("min_var"), quantizer_vars.get("max_var")
    if lo is None or hi is None or getattr(quantizer, "per_axis", False) or np.size(lo.numpy()) != 1:
        return None
    return FakeQuant(float(lo.numpy()), float(hi.numpy()), getattr(quantizer, "num_bits", 8),
                     getattr(quantizer, "narrow_range", False), name=name)


def _output_fake_quant(layer):
    """The QAT range a wrapper applies to its output (output quantizer or post-activation), if any."""
    if not _is_quantize_wrapper(layer) or _is_recurrent(layer.layer) or _shares_scale_with_recurrent(layer):
        # A fused LSTM cannot have a fixed range on both its input and its output (the converter
        # fails with "Failed to duplicate values for the stateful op"): recurrent outputs, and
        # outputs of layers that must share their input's scale (Concatenate, pooling, ...) when
        # that input is a recurrent output, are calibrated.
        return None
    name = layer.layer.name + "_fake_quant"
    if getattr(layer, "_output_quantizers", None):
        return _fake_quant_from(layer._output_quantizers[0], layer._output_quantizer_vars, name)
    act = getattr(layer.layer, "activation", None)
    if type(act).__name__ == "QuantizeAwareActivation" and act._should_post_quantize():
        return _fake_quant_from(act.quantizer, act._post_activation_vars, name)
    return None


# Layers whose TFLite op keeps (or forces) its input's quantization scale on its output.
_SCALE_SHARING = ("Concatenate", "Reshape", "Flatten", "Permute", "Dropout", "MaxPooling1D", "MaxPooling2D",
                  "GlobalMaxPooling1D", "GlobalMaxPooling2D", "Cropping1D", "Cropping2D", "ZeroPadding1D",
                  "ZeroPadding2D", "RepeatVector", "Activation", "Lambda", "TFOpLambda", "SlicingOpLambda",
                  "QuantizeLayer", "SpatialDropout1D")


def _inbound(layer):
    return [inbound for node in layer._inbound_nodes for inbound in tf.nest.flatten(node.inbound_layers)]


def _shares_scale_with_recurrent(layer, depth=0):
    """Whether `layer`'s output scale is tied (through scale-sharing ops) to a recurrent layer's output."""
    if depth > 50:
        return False
    for inbound in _inbound(layer):
        inner = inbound.layer if _is_quantize_wrapper(inbound) else inbound
        if _is_recurrent(inner):
            return True
        if type(inner).__name__ in _SCALE_SHARING and _shares_scale_with_recurrent(inbound, depth + 1):
            return True
    return False


def _feeds_recurrent(layer, depth=0):
    """Whether `layer`'s output reaches a recurrent layer directly or through scale-sharing layers."""
    if depth > 50:
        return False
    for node in layer._outbound_nodes:
        out = node.outbound_layer
        inner = out.layer if _is_quantize_wrapper(out) else out
        if _is_recurrent(inner):
            return True
        if type(inner).__name__ in _SCALE_SHARING and _feeds_recurrent(out, depth + 1):
            return True
    return False


def _is_recurrent(layer):
    inner = getattr(layer, "forward_layer", None) or getattr(layer, "layer", None) or layer
    return isinstance(layer, keras.layers.RNN) or isinstance(inner, keras.layers.RNN)


def baked_float_model(qat_model, *, qat_ranges=True):
    """A plain float tf-keras model computing what `qat_model` computes at inference.

    Same layer graph and layer names; every weight is the QAT model's fake-quantized weight; quantize
    wrappers become their stock float layers, GRU/SimpleRNN are unrolled. With `qat_ranges=True`
    (default) the QAT activation ranges of `QuantizeLayer`s and of non-recurrent layer outputs are kept
    as fixed `FakeQuant` ops (the converter then uses them instead of calibrating those tensors);
    otherwise `QuantizeLayer`s become identities and every activation range is left to calibration.
    Works on float models too (then it is a clone with GRU/SimpleRNN unrolled).
    """
    check_model(qat_model, "qat_model")
    pairs = []

    def clone(layer):
        if _is_quantize_layer(layer):
            # Directly in front of a recurrent layer the converter may calibrate the recurrent input
            # anyway and insert a DEQUANTIZE/QUANTIZE round trip: leave that input range to calibration.
            keep = qat_ranges and not _feeds_recurrent(layer)
            fq = _fake_quant_from(layer.quantizer, layer.quantizer_vars, layer.name) if keep else None
            return fq or keras.layers.Activation("linear", name=layer.name)
        new = _float_layer(layer)
        pairs.append((layer, new))
        fq = _output_fake_quant(layer) if qat_ranges else None
        return WithFakeQuant(new, fq) if fq is not None else new

    try:
        model = keras.models.clone_model(qat_model, clone_function=clone)
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 - name the model-level cause in one line
        raise ExportError(f"Could not rebuild a float model from '{qat_model.name}': {type(e).__name__}: {e}") from e
    for source, new in pairs:
        if new.weights:
            new.set_weights(_baked_weights(source, new))
    return model


# ----------------------------------------------------------------------------------------------
# 2. Convert in a child process
# ----------------------------------------------------------------------------------------------


def _input_specs(model):
    specs = []
    for t in model.inputs:
        shape = [1] + list(t.shape[1:])
        specs.append(tf.TensorSpec(shape, t.dtype, name=t.name.split(":")[0]))
    return specs


def _calibration_arrays(representative_dataset, model, max_samples):
    """The representative data as one float32 array per model input, samples on axis 0."""
    n_inputs = len(model.inputs)
    if callable(representative_dataset):
        per_input = [[] for _ in range(n_inputs)]
        for i, sample in enumerate(representative_dataset()):
            if max_samples is not None and i >= max_samples:
                break
            if isinstance(sample, dict):
                sample = list(sample.values())
            if not isinstance(sample, (list, tuple)):
                sample = [sample]
            if len(sample) != n_inputs:
                raise ValueError(f"representative_dataset yielded {len(sample)} arrays; the model has {n_inputs} inputs.")
            for k, a in enumerate(sample):
                a = np.asarray(a, np.float32)
                per_input[k].append(a if a.shape[:1] == (1,) else a[None])
        arrays = [np.concatenate(p, 0) for p in per_input] if per_input[0] else []
    else:
        arrays = representative_dataset if isinstance(representative_dataset, (list, tuple)) else [representative_dataset]
        arrays = [np.asarray(a, np.float32) for a in arrays]
        if len(arrays) != n_inputs:
            raise ValueError(f"representative_dataset has {len(arrays)} arrays; the model has {n_inputs} inputs.")
        if max_samples is not None:
            arrays = [a[:max_samples] for a in arrays]
    if not arrays or len(arrays[0]) == 0:
        raise ValueError("representative_dataset is empty: give at least one calibration sample.")
    for k, (a, t) in enumerate(zip(arrays, model.inputs)):
        want = tuple(t.shape[1:])
        if len(a.shape) != len(want) + 1 or any(w is not None and w != s for w, s in zip(want, a.shape[1:])):
            raise ValueError(f"representative_dataset input {k} has sample shape {a.shape[1:]}; the model expects {want}.")
        if len({len(x) for x in arrays}) != 1:
            raise ValueError("representative_dataset arrays have different numbers of samples.")
    return arrays


def _layer_names_in(text, model):
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
        inner = type(layer).__name__
        if inner == "Bidirectional":
            inner = f"Bidirectional({type(layer.forward_layer).__name__})"
        out.append(f"'{name}' ({inner})")
    return ", ".join(out)


def _risky_layers(model):
    """Layers that become control flow in TFLite (the usual cause of converter crashes)."""
    risky = []
    for layer in model.layers:
        rnn = layer.forward_layer if type(layer).__name__ == "Bidirectional" else layer
        if isinstance(rnn, keras.layers.RNN) and not getattr(rnn, "unroll", False):
            if not isinstance(rnn.cell, keras.layers.LSTMCell):
                risky.append(layer.name)
    return risky


def _masked_recurrent_layers(model):
    """(recurrent layer, layer that made the mask) for every recurrent layer called with a Keras mask."""
    found = []
    for layer in model.layers:
        inner = getattr(layer, "layer", layer) if _is_quantize_wrapper(layer) else layer
        if not isinstance(inner, (keras.layers.RNN, keras.layers.Bidirectional)):
            continue
        for node in layer._inbound_nodes:
            for tensor in tf.nest.flatten(node.input_tensors):
                if getattr(tensor, "_keras_mask", None) is not None:
                    history = getattr(tensor, "_keras_history", None)
                    found.append((layer.name, history.layer.name if history else "?"))
    return found


def _check_no_masks(model):
    masked = _masked_recurrent_layers(model)
    if masked:
        layer, source = masked[0]
        raise ExportError(
            f"Export of '{model.name}' failed at layer '{layer}': it is called with a Keras mask (made by "
            f"'{source}'), and TFLite's recurrent kernels have no mask input (the converter cannot lower a masked "
            "recurrence to integer ops). Export a copy built without the mask (no Masking layer, "
            "Embedding(mask_zero=False)) with the same weights, and feed it unpadded or pre-padded sequences."
        )


def convert(model, representative_dataset=None, *, int8_io=False, max_samples=None, timeout=600, progress=False,
            float_model=None):
    """Convert a float tf-keras model to a TFLite flatbuffer (`bytes`) in a child process.

    With `representative_dataset`: post-training full-int8 (int8 weights, int32 biases, int8
    activations, int16 inside the integer LSTM); float input/output unless `int8_io=True`. Without it:
    a float model. Inputs are fixed to batch 1 (`[1, T, F]`) so LSTM layers fuse into
    `UNIDIRECTIONAL_SEQUENCE_LSTM`. Raises `ExportError` (naming the layer(s) and the cause) when the
    converter fails or crashes, or when the result does not load and run in the interpreter.
    `progress=True` draws a calibration progress bar on stderr. `float_model` is only used to name
    layers in error messages (defaults to `model`).
    """
    check_model(model)
    _check_no_masks(model)
    arrays = None
    if representative_dataset is not None:
        arrays = _calibration_arrays(representative_dataset, model, max_samples)
    elif int8_io:
        raise ValueError("int8_io=True needs a representative_dataset (full-int8 conversion).")
    workdir = tempfile.mkdtemp(prefix="lstm_transforms_export_")
    try:
        specs = _input_specs(model)
        module = tf.Module()
        module.model = model
        module.serve = tf.function(lambda *xs: model(list(xs) if len(xs) > 1 else xs[0], training=False),
                                   input_signature=specs)
        saved = os.path.join(workdir, "saved_model")
        tf.saved_model.save(module, saved, signatures=module.serve.get_concrete_function())
        if arrays is not None:
            np.savez(os.path.join(workdir, "calibration.npz"), *arrays)
        with open(os.path.join(workdir, "options.json"), "w") as f:
            json.dump({"int8": arrays is not None, "int8_io": bool(int8_io)}, f)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_USE_LEGACY_KERAS="1")
        pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = pkg_root + os.pathsep + env.get("PYTHONPATH", "")
        proc = _run_worker(workdir, env, timeout, progress, model.name)
        out = os.path.join(workdir, "model.tflite")
        if proc.returncode == 0 and os.path.exists(out):
            with open(out, "rb") as f:
                return f.read()
        raise _conversion_error(proc, workdir, float_model or model)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


class _Finished:
    def __init__(self, returncode, stderr):
        self.returncode, self.stderr = returncode, stderr


def _run_worker(workdir, env, timeout, progress, name):
    """Run the worker; relay its calibration progress lines to a bar on stderr when `progress`."""
    err_path = os.path.join(workdir, "stderr.txt")
    with open(err_path, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lstm_transforms._convert_worker", workdir],
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
                    done, total = (int(v) for v in line.split()[1:3])
                    if not sys.stderr.isatty() and done != total:
                        continue  # in a log file: only the final bar
                    width = 30
                    filled = int(width * done / max(total, 1))
                    sys.stderr.write(f"\rcalibration: [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
                    if done == total:
                        sys.stderr.write("\n")
                    sys.stderr.flush()
            proc.wait()
        finally:
            timer.cancel()
            proc.stdout.close()
    with open(err_path) as f:
        stderr = f.read()
    if fired:
        raise ExportError(f"TFLite conversion of '{name}' did not finish in {timeout} s.")
    return _Finished(proc.returncode, stderr)


def _conversion_error(proc, workdir, model):
    err_file = os.path.join(workdir, "error.txt")
    detail = ""
    if os.path.exists(err_file):
        with open(err_file) as f:
            detail = f.read().strip()
    text = detail + "\n" + (proc.stderr or "")
    names = _layer_names_in(text, model)
    if proc.returncode < 0:
        try:
            sig = signal.Signals(-proc.returncode).name
        except ValueError:
            sig = f"signal {-proc.returncode}"
        cause = f"the TFLite converter crashed ({sig})"
        if not names:
            names = _risky_layers(model)
    else:
        last = [ln for ln in detail.splitlines() if ln.strip()]
        cause = "the TFLite converter failed: " + (last[-1][:400] if last else (proc.stderr or "").strip()[-400:])
    where = f" at layer(s) {_describe_layers(names, model)}" if names else ""
    return ExportError(f"Export of '{model.name}' failed{where}: {cause}.")


# ----------------------------------------------------------------------------------------------
# 3. The public entry point
# ----------------------------------------------------------------------------------------------


def export_tflite(qat_model, representative_dataset, *, int8_io=False, max_samples=None, timeout=600, progress=False):
    """Export a QAT (or float) tf-keras model to a fully-integer TFLite flatbuffer; returns `bytes`.

    `representative_dataset`: a numpy array (samples on axis 0), a list of arrays (one per model
    input), or a generator function in TFLite's convention (yields a list with one array per input,
    each of batch 1 or without the batch axis). Used to calibrate activation ranges (see the module
    docs); `max_samples` caps how many samples are used.

    LSTM -> `UNIDIRECTIONAL_SEQUENCE_LSTM` (Bidirectional: two of them); GRU and SimpleRNN ->
    unrolled integer ops (the time dimension must be fixed). The int8 weights equal the QAT model's
    fake-quantized weights. Float input/output by default, int8 with `int8_io=True`. `progress=True`
    draws a calibration progress bar; `timeout` (seconds) bounds the conversion.
    Raises `ExportError` naming the layer and the cause when conversion fails or crashes.
    """
    check_model(qat_model, "qat_model")
    if representative_dataset is None:
        raise ValueError("export_tflite needs a representative_dataset to calibrate activation ranges.")
    from lstm_transforms.tflite_utils import float_islands

    float_model = baked_float_model(qat_model)
    uses_qat_ranges = any(isinstance(layer, (FakeQuant, WithFakeQuant)) for layer in float_model.layers)
    kwargs = dict(int8_io=int8_io, max_samples=max_samples, timeout=timeout, progress=progress)
    try:
        flatbuffer = convert(float_model, representative_dataset, float_model=float_model, **kwargs)
        problem = float_islands(flatbuffer)
        if not problem or not uses_qat_ranges:
            _warn_islands(qat_model, problem)
            return flatbuffer
        problem = f"float tensors {problem} between integer ops"
    except ExportError as e:
        if "stateful op" not in str(e) or not uses_qat_ranges:
            raise
        problem = "the converter rejected them around a fused LSTM"
    # The converter could not honour a fixed QAT range next to a fused LSTM here: calibrate every
    # activation range instead (the weights stay the QAT weights).
    warnings.warn(f"'{qat_model.name}': QAT activation ranges not usable ({problem}); exporting with every "
                  "activation range calibrated instead.", stacklevel=2)
    float_model = baked_float_model(qat_model, qat_ranges=False)
    flatbuffer = convert(float_model, representative_dataset, float_model=float_model, **kwargs)
    _warn_islands(qat_model, float_islands(flatbuffer))
    return flatbuffer


def _warn_islands(qat_model, islands):
    if islands:
        warnings.warn(f"'{qat_model.name}': the exported model computes {islands} in float (DEQUANTIZE inside "
                      "the graph); it is not fully integer.", stacklevel=3)
