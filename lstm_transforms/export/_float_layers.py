"""Quantize wrappers and plain layers -> fresh stock float layers holding the QAT weights (for `bake`)."""

from __future__ import annotations

import numpy as np

from lstm_transforms._keras import keras
from lstm_transforms.export import _graph
from lstm_transforms.export.errors import ExportError

__all__ = ["float_layer", "baked_weights", "qat_weight_values"]


# ------------------------------------------------------------------------------------------------


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


def qat_weight_values(wrapper):
    """[(variable, value as the QAT layer uses it at inference)] of one quantize wrapper, in order."""
    return [(var, np.asarray(wrapper._make_quantizer_fn(quantizer, var, False, quantizer_vars)()))
            for var, quantizer, quantizer_vars in getattr(wrapper, "_weight_vars", [])]


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


def _folds_to_depthwise(source):
    """Whether `source` is a BatchNormalization over the channels of a 4-D tensor, which export runs as a
    1x1 `DepthwiseConv2D` computing x * factor + offset (`_folded_batch_norm`).

    TFLite would run it as MUL then ADD, two int8 roundings where QAT has one (its output); the
    depthwise convolution has one. Its per-channel int8 weight is each channel's own max |factor|, so
    the factor is stored exactly (code +-127), the offset as an int32 bias.
    """
    inner = _graph.inner(source)
    if type(inner) is not keras.layers.BatchNormalization or len(source.input_shape) != 4:
        return False
    return [a % 4 for a in (inner.axis if isinstance(inner.axis, (list, tuple)) else [inner.axis])] == [3]


def _folded_batch_norm(source):
    """[depthwise kernel, bias] of the 1x1 `DepthwiseConv2D` that computes `source`'s inference
    BatchNormalization (`_folds_to_depthwise`)."""
    inner = _graph.inner(source)
    mean, variance = inner.moving_mean.numpy(), inner.moving_variance.numpy()
    gamma = inner.gamma.numpy() if inner.scale else np.ones_like(mean)
    beta = inner.beta.numpy() if inner.center else np.zeros_like(mean)
    factor = gamma / np.sqrt(variance + inner.epsilon)
    return [factor.reshape(1, 1, -1, 1).astype(np.float32), (beta - mean * factor).astype(np.float32)]


def baked_weights(source, new_layer):
    """Weights for `new_layer` (float) from `source` (QAT wrapper or plain layer), matched by name."""
    if _folds_to_depthwise(source):
        return _folded_batch_norm(source)
    inner = _graph.inner(source)
    qvalues = {var.ref(): value for var, value in qat_weight_values(source)} if source is not inner else {}
    candidates = {}
    for var in _all_variables(source):
        candidates.setdefault(_relative(var.name, inner.name), []).append(var)
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
        values.append(qvalues[var.ref()] if var.ref() in qvalues else var.numpy())
    return values


def _set_unroll(config, time_dim):
    """unroll=True on an RNN config with a user cell: its own call is converted op by op."""
    if config.get("class_name") in ("RNN", "Bidirectional"):
        config = dict(config, config=dict(config["config"]))
        if config["class_name"] == "Bidirectional":
            config["config"]["layer"] = _set_unroll(config["config"]["layer"], time_dim)
            if config["config"].get("backward_layer"):
                config["config"]["backward_layer"] = _set_unroll(config["config"]["backward_layer"], time_dim)
        else:
            config["config"]["unroll"] = True
    return config


def float_layer(layer):
    """A fresh stock float layer equivalent to `layer` (a QAT wrapper or a plain layer); a BatchNormalization
    that `_folds_to_depthwise`: a 1x1 `DepthwiseConv2D`."""
    inner = _graph.inner(layer)
    if _folds_to_depthwise(layer):
        return keras.layers.DepthwiseConv2D(1, use_bias=True, name=inner.name)
    config = {"class_name": type(inner).__name__, "config": inner.get_config()}
    if getattr(inner, "activation", None) is not None and "activation" in config["config"]:
        config["config"]["activation"] = keras.activations.serialize(_plain_activation(inner.activation))
    config = _clean_config(config, _float_class_map(inner))
    if _graph.is_recurrent(inner):
        config = _set_unroll(config, _graph.time_steps(layer))
    try:
        if config["class_name"] == type(inner).__name__:
            return type(inner).from_config(config["config"])
        return keras.layers.deserialize(config)
    except Exception:
        if not inner.weights and inner is layer:
            return inner  # e.g. a Lambda of a Python lambda: weightless, safe to share
        raise
