"""Load a saved tf-keras model without running the Python bytecode of its `Lambda` layers.

A `Lambda` built from a Python `lambda` is saved as bytecode; loading it runs that code. Keras
refuses it only in its own `.keras` format (`safe_mode=True`); `.h5` and SavedModel loading run it
unless a safe-mode scope is open. `load_model` opens one (thread-local: nothing is switched off or
on for other code) unless the caller opts in with `unsafe_lambda=True`.

`model_with_placeholders` rebuilds such a model for inspection: each refused `Lambda` becomes a
placeholder producing zeros of the Lambda's output shape, when the file records that shape (a
`.keras` file, a SavedModel, or a Lambda with an explicit `output_shape`).
"""

from __future__ import annotations

import json
import os
import zipfile

from tf_keras.src.saving import serialization_lib

from lstm_transforms._keras import keras, tf
from lstm_transforms.serialization import quantize_scope

__all__ = ["UnsafeLambdaError", "load_model", "model_config", "model_with_placeholders"]

_REFUSAL = "Requested the deserialization of a Lambda layer with a Python `lambda`"


class UnsafeLambdaError(ValueError):
    """The model holds Lambda layers with Python bytecode, and loading them was not allowed."""

    def __init__(self, path, names):
        self.path, self.names = path, list(names)
        which = ", ".join(f"'{n}'" for n in self.names) or "(names not readable)"
        super().__init__(
            f"{path} has Lambda layer(s) {which} saved as Python bytecode; loading them would run that code, so "
            "they are refused (Keras safe mode). If you trust the file, pass --unsafe-lambda "
            "(in Python: load_model(path, unsafe_lambda=True), Keras's safe_mode=False)."
        )


def _is_python_lambda(layer_config):
    config = layer_config.get("config", {})
    return layer_config.get("class_name") == "Lambda" and "lambda" in (
        config.get("function_type"), config.get("output_shape_type"), config.get("mask_type")
    )


def python_lambdas(config) -> list:
    """Names of the Lambda layers saved as Python bytecode anywhere in a model config."""
    found = []

    def visit(node):
        if isinstance(node, dict):
            if _is_python_lambda(node):
                found.append(node.get("config", {}).get("name", "?"))
            for value in node.values():
                visit(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                visit(value)

    visit(config)
    return found


def model_config(path):
    """The model config stored in a `.h5` or `.keras` file ({"class_name", "config"}), or None."""
    if os.path.isdir(path):
        return None
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("config.json"))
    import h5py

    with h5py.File(path, "r") as f:
        raw = f.attrs.get("model_config")
    if raw is None:
        return None
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)


def _revived_lambdas(model):
    """Lambda layers a SavedModel revived from its graph instead of their bytecode (safe mode)."""
    return [
        layer for layer in model.layers
        if type(layer).__name__ == "Lambda" and not isinstance(layer, keras.layers.Lambda)
    ]


def load_model(path, unsafe_lambda=False):
    """`keras.models.load_model(path, compile=False)` inside `quantize_scope`, in Keras safe mode
    unless `unsafe_lambda`. Raises `UnsafeLambdaError` naming the refused Lambda layers."""
    with quantize_scope(), serialization_lib.SafeModeScope(not unsafe_lambda):
        try:
            model = keras.models.load_model(path, compile=False, safe_mode=not unsafe_lambda)
        except ValueError as e:
            if _REFUSAL not in str(e):
                raise
            config = model_config(path)
            raise UnsafeLambdaError(path, python_lambdas(config) if config else []) from e
    revived = _revived_lambdas(model)
    if revived:
        raise UnsafeLambdaError(path, [layer.name for layer in revived])
    return model


def not_loaded(inputs, shape):
    """A placeholder for a Lambda that was not loaded: zeros of its output shape."""
    first = tf.nest.flatten(inputs)[0]
    return tf.zeros(tf.concat([tf.shape(first)[:1], tf.constant(shape, tf.int32)], 0), first.dtype)


def _strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _strings(value)


def _output_shapes(layers, sequential, known):
    """{Lambda name: its output shape without the batch axis}, where the config records it."""
    shapes = {}
    for k, layer in enumerate(layers):
        if not _is_python_lambda(layer):
            continue
        name = layer["config"]["name"]
        own = layer["config"].get("output_shape")
        if name in known:
            shapes[name] = known[name]
        elif layer["config"].get("output_shape_type") == "raw" and isinstance(own, (list, tuple)) and own:
            shapes[name] = tuple(own)
        else:
            consumers = layers[k + 1 : k + 2] if sequential else [
                other for other in layers if name in set(_strings(other.get("inbound_nodes", [])))
            ]
            for consumer in consumers:
                shape = (consumer.get("build_config") or {}).get("input_shape")
                if shape and not isinstance(shape[0], (list, tuple)):
                    shapes[name] = tuple(shape[1:])
                    break
    return shapes


def model_with_placeholders(path):
    """`(model, names)`: the model in `path` with every Python-bytecode Lambda replaced by a
    placeholder (see `not_loaded`), and the names of the replaced layers. Raises
    `UnsafeLambdaError` when the file does not record a refused Lambda's output shape. The weights
    are not loaded (the model is for inspection)."""
    known = {}
    if os.path.isdir(path):  # SavedModel: the graph gives every layer's output shape
        with quantize_scope(), serialization_lib.SafeModeScope(True):
            revived_model = keras.models.load_model(path, compile=False, safe_mode=True)
        config = {"class_name": type(revived_model).__name__, "config": revived_model.get_config()}
        known = {layer.name: tuple(layer.output_shape[1:]) for layer in _revived_lambdas(revived_model)}
    else:
        config = model_config(path)
    if config is None:
        raise UnsafeLambdaError(path, [])
    inner = config["config"]
    sequential = config.get("class_name") == "Sequential"
    layers = inner["layers"]
    shapes = _output_shapes(layers, sequential, known)
    names = [layer["config"]["name"] for layer in layers if _is_python_lambda(layer)]
    missing = [n for n in names if n not in shapes]
    if missing or not names or python_lambdas(inner) != names:  # unknown shapes, or Lambdas in nested models
        raise UnsafeLambdaError(path, python_lambdas(inner))
    for layer in layers:
        if _is_python_lambda(layer):
            name = layer["config"]["name"]
            layer.update({"module": "keras.layers", "class_name": "Lambda", "registered_name": None})
            layer["config"] = {
                "name": name, "trainable": False, "dtype": layer["config"].get("dtype", "float32"),
                "function": "not_loaded", "function_type": "function", "module": __name__,
                "output_shape": None, "output_shape_type": "raw", "output_shape_module": None,
                "arguments": {"shape": list(shapes[name])},
            }
    cls = keras.Sequential if sequential else keras.Model
    with quantize_scope({"not_loaded": not_loaded}), serialization_lib.SafeModeScope(True):
        return cls.from_config(inner, custom_objects={"not_loaded": not_loaded}), names
