"""Keras 2 (tf-keras) set-up shared by every module: tfmot only works with it."""

import os

# Must happen before TensorFlow is first imported so that `tf.keras` is Keras 2 as well.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

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
            f"`{what}` is a Keras 3 model ({type(model).__module__}.{type(model).__name__}); tfmot and "
            "lstm_transforms need Keras 2. Build it with tf-keras: `import tf_keras as keras` (or set "
            "TF_USE_LEGACY_KERAS=1 before importing TensorFlow and use tf.keras)."
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
