"""`load_model`: open a `.keras` / `.h5` file saved by Keras 3 or by tf-keras, as a tf-keras model.

The file says which Keras wrote it (`metadata.json` in a `.keras` zip, the `keras_version`
attribute of an HDF5 file): Keras 3 files are loaded with Keras 3 and converted with
`to_tf_keras`; tf-keras files (QAT models included) are loaded with tf-keras inside
`lstm_transforms.quantize_scope()`. A tf-keras SavedModel directory is loaded with tf-keras.

Safe by default: a `Lambda` whose Python bytecode would run on loading is refused before any
loader sees the file (tf-keras' HDF5 loader would run it even with ``safe_mode=True``).
"""

from __future__ import annotations

import json
import os
import zipfile

from lstm_transforms._keras import keras as tf_keras

__all__ = ["load_model", "saved_by_keras3"]


def load_model(path, *, safe_mode=True, custom_objects=None):
    """A tf-keras model from a `.keras` / `.h5` file (or SavedModel directory) saved by either Keras.

    Not compiled (`compile=False`): compile the returned model yourself with tf-keras objects.
    With ``safe_mode=True`` (the default) a file holding a `Lambda` with Python bytecode is refused
    with a ValueError naming the layers; pass ``safe_mode=False`` only for files you trust.
    `custom_objects` ({name: class}) goes to the loader, for your own layers.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file or directory: {path}")
    kind, keras3, config = _describe(path)
    if safe_mode and config is not None:
        lambdas = _bytecode_lambdas(config)
        if lambdas:
            raise ValueError(
                f"{path} holds Lambda layer(s) {', '.join(repr(n) for n in lambdas)} whose Python bytecode would "
                "run while loading; load_model refuses that by default. If you trust the file, load it with "
                "lstm_transforms.load_model(path, safe_mode=False) (CLI: --unsafe-lambda), or replace the Lambda "
                "by a built-in or registered layer before saving."
            )
    if keras3:
        import keras

        from lstm_transforms.keras3 import to_tf_keras

        model = keras.saving.load_model(path, custom_objects=custom_objects, compile=False, safe_mode=safe_mode)
        return to_tf_keras(model)
    from lstm_transforms.serialization import quantize_scope

    kwargs = {} if kind == "savedmodel" else {"safe_mode": safe_mode}
    with quantize_scope(custom_objects or {}):
        return tf_keras.models.load_model(path, compile=False, **kwargs)


def saved_by_keras3(path) -> bool:
    """Whether the `.keras` / `.h5` file at `path` was written by Keras 3."""
    return _describe(os.fspath(path))[1]


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


def _bytecode_lambdas(config):
    """Names of the Lambda layers in a saved config whose function is serialized Python bytecode."""
    found = []
    stack = [config]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("class_name") == "Lambda" and isinstance(item.get("config"), dict):
                layer = item["config"]
                function = layer.get("function")
                keras3_bytecode = isinstance(function, dict) and function.get("class_name") == "__lambda__"
                if layer.get("function_type") == "lambda" or keras3_bytecode:
                    found.append(layer.get("name", "?"))
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return sorted(found)
