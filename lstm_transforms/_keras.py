"""Keras 2 (tf-keras) set-up shared by every module: tfmot only works with it."""

import importlib
import os
import sys

_tf_module = sys.modules.get("tensorflow")
#: TensorFlow was imported before lstm_transforms without TF_USE_LEGACY_KERAS: `tf.keras` and
#: `from tensorflow.keras import layers` are Keras 3 in this process (lstm_transforms uses `tf_keras`).
TF_KERAS_IS_KERAS3 = _tf_module is not None and not getattr(_tf_module, "_tf_uses_legacy_keras", True)

if not TF_KERAS_IS_KERAS3:
    # Before TensorFlow is first imported: `tf.keras` becomes Keras 2 as well.
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402


_TFMOT_COMPAT = "tensorflow_model_optimization.python.core.keras.compat"


def _keep_tf_keras_as_imported():
    """Keep `tf.keras` what TensorFlow was imported with (Keras 3), like `tensorflow.keras.*` already is.

    `tf.keras` (and `from tensorflow import keras`) is a lazy module that picks Keras 2 or 3 from
    TF_USE_LEGACY_KERAS when first *used*, and tfmot sets that variable to 1 when imported: a model
    written with `from tensorflow.keras import layers` (Keras 3) and `keras.Input` (first used after
    that import) would mix both Kerases and fail to build. So: resolve `tf.keras` now, import tfmot's
    Keras selector (it picks tf_keras for itself), and put the variable back as it was.
    """
    before = os.environ.get("TF_USE_LEGACY_KERAS")
    getattr(tf.keras, "version", None)
    importlib.import_module(_TFMOT_COMPAT)
    if before is None:
        os.environ.pop("TF_USE_LEGACY_KERAS", None)
    else:
        os.environ["TF_USE_LEGACY_KERAS"] = before


if TF_KERAS_IS_KERAS3 and _TFMOT_COMPAT not in sys.modules:  # once tfmot is imported, `tf.keras` is decided
    _keep_tf_keras_as_imported()

__all__ = ["tf", "keras", "check_model"]


def _is_keras3_object(obj):
    module = type(obj).__module__ or ""
    return module.startswith("keras") and not module.startswith("keras.src.legacy") and not isinstance(
        obj, keras.layers.Layer
    )


def check_model(model, what="model"):
    """Raise ValueError unless `model` is a built tf-keras functional or Sequential model."""
    if model is None:
        raise ValueError(f"`{what}` is None: only tf-keras functional and Sequential models are accepted.")
    if _is_keras3_object(model):
        raise ValueError(
            f"`{what}` is a Keras 3 model ({type(model).__module__}.{type(model).__name__}); this function needs "
            "the tf-keras model lstm_transforms works on. lstm_transforms.quantize_model (and tfmot's, after "
            "install()) accepts Keras 3 models and returns a tf-keras QAT model: pass that one here. To convert "
            "a Keras 3 model yourself: lstm_transforms.to_tf_keras(model)."
        )
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"`{what}` must be a tf-keras functional or Sequential model; got {type(model).__name__}. "
            "Only functional and Sequential models are accepted (wrap a single layer in a model first)."
        )
    if not isinstance(model, keras.Sequential) and not getattr(model, "_is_graph_network", False):
        raise ValueError(
            f"`{what}` is a subclassed model ({type(model).__name__}); only functional and Sequential "
            "models are accepted. Rebuild it with keras.Input(...) and layer calls."
        )
    if not model.built:
        raise ValueError(f"`{what}` is not built: call `model.build(input_shape)` or give it an Input first.")
    return model
