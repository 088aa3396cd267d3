"""`load_model`: open a `.keras` / `.h5` file (or SavedModel directory) saved by Keras 3 or by tf-keras,
as a tf-keras model, without running the Python bytecode of its `Lambda` layers.

The file says which Keras wrote it (`metadata.json` in a `.keras` zip, the `keras_version`
attribute of an HDF5 file): Keras 3 files are loaded with Keras 3 and converted with
`to_tf_keras`; tf-keras files (QAT models included) are loaded with tf-keras inside
`lstm_transforms.quantize_scope()`.

Safe by default. A `Lambda` built from a Python `lambda` is saved as bytecode, and loading it runs
that code: Keras refuses it only in its own `.keras` format (`safe_mode=True`), while `.h5` and
SavedModel loading run it unless a safe-mode scope is open. `load_model` refuses such a file before
any loader sees it, and loads inside a (thread-local) safe-mode scope, unless the caller passes
`safe_mode=False`.

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

__all__ = ["UnsafeLambdaError", "load_model", "saved_by_keras3", "model_config", "model_with_placeholders",
           "python_lambdas"]

_REFUSAL = "Requested the deserialization of a Lambda layer with a Python `lambda`"


class UnsafeLambdaError(ValueError):
    """The model holds Lambda layers with Python bytecode, and loading them was not allowed."""

    def __init__(self, path, names):
        self.path, self.names = path, list(names)
        which = ", ".join(f"'{n}'" for n in self.names) or "(names not readable)"
        super().__init__(
            f"{path} holds Lambda layer(s) {which} whose Python bytecode would run while loading; load_model "
            "refuses that by default (Keras safe mode). If you trust the file, load it with "
            "lstm_transforms.load_model(path, safe_mode=False) (CLI: --unsafe-lambda), or replace the Lambda "
            "by a built-in or registered layer before saving."
        )


def load_model(path, *, safe_mode=True, custom_objects=None):
    """A tf-keras model from a `.keras` / `.h5` file (or SavedModel directory) saved by either Keras.

    Not compiled (`compile=False`): compile the returned model yourself with tf-keras objects.
    With ``safe_mode=True`` (the default) a file holding a `Lambda` with Python bytecode is refused
    with an `UnsafeLambdaError` (a ValueError) naming the layers; pass ``safe_mode=False`` only for
    files you trust. `custom_objects` ({name: class}) goes to the loader, for your own layers.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file or directory: {path}")
    kind, keras3, config = _describe(path)
    if safe_mode and config is not None:
        lambdas = python_lambdas(config)
        if lambdas:
            raise UnsafeLambdaError(path, lambdas)
    if keras3:
        import keras as keras3_module

        from lstm_transforms.keras3 import to_tf_keras

        model = keras3_module.saving.load_model(path, custom_objects=custom_objects, compile=False,
                                                safe_mode=safe_mode)
        return to_tf_keras(model)
    kwargs = {} if kind == "savedmodel" else {"safe_mode": safe_mode}
    with quantize_scope(custom_objects or {}), serialization_lib.SafeModeScope(safe_mode):
        try:
            model = keras.models.load_model(path, compile=False, **kwargs)
        except ValueError as e:
            if _REFUSAL not in str(e):
                raise
            raise UnsafeLambdaError(path, python_lambdas(config) if config else []) from e
    revived = _revived_lambdas(model) if safe_mode else []
    if revived:
        raise UnsafeLambdaError(path, [layer.name for layer in revived])
    return model


def saved_by_keras3(path) -> bool:
    """Whether the `.keras` / `.h5` file at `path` was written by Keras 3."""
    return _describe(os.fspath(path))[1]


def model_config(path):
    """The model config stored in a `.h5` or `.keras` file ({"class_name", "config"}), or None."""
    return _describe(os.fspath(path))[2]


def _describe(path):
    """(kind, written by Keras 3?, model config dict or None) of a model file or directory."""
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "saved_model.pb")):
            return "savedmodel", False, None
        raise ValueError(f"{path} is a directory without saved_model.pb: not a SavedModel.")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if not {"metadata.json", "config.json"} <= names:
                raise ValueError(f"{path} is a zip file without metadata.json / config.json: not a .keras model file.")
            version = json.loads(archive.read("metadata.json")).get("keras_version", "")
            return "keras", _major(version) >= 3, json.loads(archive.read("config.json"))
    import h5py

    if h5py.is_hdf5(path):
        with h5py.File(path, "r") as f:
            if "model_config" not in f.attrs:
                raise ValueError(f"{path} is an HDF5 file without a model config (weights only?): not a saved model.")
            version = f.attrs.get("keras_version", "")
            config = json.loads(_text(f.attrs["model_config"]))
            return "h5", _major(_text(version)) >= 3, config
    raise ValueError(f"{path} is not a Keras model file (a .keras zip, an .h5 HDF5 file or a SavedModel directory).")


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _major(version):
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else 0


def _is_python_lambda(layer_config):
    """A saved Lambda whose function (or output shape, or mask) is Python bytecode, in either Keras."""
    if layer_config.get("class_name") != "Lambda" or not isinstance(layer_config.get("config"), dict):
        return False
    config = layer_config["config"]
    function = config.get("function")
    keras3_bytecode = isinstance(function, dict) and function.get("class_name") == "__lambda__"
    return keras3_bytecode or "lambda" in (config.get("function_type"), config.get("output_shape_type"),
                                           config.get("mask_type"))


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


def _revived_lambdas(model):
    """Lambda layers a SavedModel revived from its graph instead of their bytecode (safe mode)."""
    return [
        layer for layer in model.layers
        if type(layer).__name__ == "Lambda" and not isinstance(layer, keras.layers.Lambda)
    ]


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
