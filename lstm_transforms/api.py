"""Public entry points: quantize_model, and install()/uninstall() into stock tfmot."""

import contextlib
import threading

from tensorflow_model_optimization.python.core.api.quantization import keras as tfmot_keras_api
from tensorflow_model_optimization.python.core.quantization.keras import quantize as tfmot_quantize
from tensorflow_model_optimization.python.core.quantization.keras import quantize_layer as tfmot_quantize_layer
from tensorflow_model_optimization.python.core.quantization.keras import quantize_scheme as tfmot_quantize_scheme
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import default_8bit_quantize_scheme

from lstm_transforms._keras import check_model
from lstm_transforms.keras3 import ensure_tf_keras
from lstm_transforms.rebuild import rebuilt, stale_layers
from lstm_transforms.registry import check_layer
from lstm_transforms.scheme import RNNQuantizeScheme
from lstm_transforms.serialization import quantize_scope
from lstm_transforms.transforms import clone_scope, rewrite
from lstm_transforms.walk import walk
from lstm_transforms.wrappers import is_quantize_wrapper

__all__ = ["quantize_model", "quantize_annotate_model", "quantize_apply", "install", "uninstall", "is_installed"]

_PATCHED = ("quantize_model", "quantize_annotate_model", "quantize_apply", "quantize_scope")
_MODULES = (tfmot_quantize, tfmot_keras_api)
# tfmot's own functions, captured before any install(): ours always call these.
_STOCK = {name: getattr(tfmot_quantize, name) for name in _PATCHED}
_lock = threading.Lock()
_installed = {}


@contextlib.contextmanager
def _cloning(model):
    """Everything tfmot's clone_model calls need: our classes, and the model's remaining Lambdas."""
    with quantize_scope(), clone_scope(model):
        yield


def _check_not_quantized(model, what):
    """ValueError if `model` already holds quantize wrappers or QuantizeLayers (it is a QAT model)."""
    found = [
        layer.name
        for layer in walk(model)
        if is_quantize_wrapper(layer) or isinstance(layer, tfmot_quantize_layer.QuantizeLayer)
    ]
    if found:
        more = f" and {len(found) - 3} more" if len(found) > 3 else ""
        raise ValueError(
            f"`{what}` is already quantized: it has quantize layers ({', '.join(repr(n) for n in found[:3])}{more}). "
            "Quantize the float model it was made from, or keep training this QAT model as it is."
        )


def _scheme_for(scheme):
    """None or tfmot's default 8-bit scheme -> RNNQuantizeScheme; any other scheme is kept."""
    if scheme is None:
        return RNNQuantizeScheme()
    if not isinstance(scheme, tfmot_quantize_scheme.QuantizeScheme):
        raise TypeError(
            "scheme must be a tfmot QuantizeScheme (for example lstm_transforms.RNNQuantizeScheme()), "
            f"got {type(scheme).__name__}"
        )
    if type(scheme) is default_8bit_quantize_scheme.Default8BitQuantizeScheme:
        return RNNQuantizeScheme(disable_per_axis=getattr(scheme, "_disable_per_axis", False))
    return scheme


def quantize_annotate_model(to_annotate):
    """tfmot's `quantize_annotate_model`, after lstm_transforms' graph rewrites (Keras 3 models: tf-keras twin)."""
    to_annotate = ensure_tf_keras(to_annotate)
    check_model(to_annotate, "to_annotate")
    _check_not_quantized(to_annotate, "to_annotate")
    for layer in to_annotate.layers:  # fail before tfmot's clone can fail on an unknown cell class
        check_layer(layer)
    rewritten = rewrite(to_annotate)
    with _cloning(rewritten):
        return _STOCK["quantize_annotate_model"](rewritten)


def quantize_apply(model, scheme=None, quantized_layer_name_prefix="quant_"):
    """tfmot's `quantize_apply` with `RNNQuantizeScheme` in place of the default 8-bit scheme.

    Every layer of the returned model has exactly its graph nodes in that model (`layer.output`
    and sub-models built from it work).
    """
    model = ensure_tf_keras(model)
    check_model(model, "model")
    _check_not_quantized(model, "model")
    with _cloning(model):
        qat = _STOCK["quantize_apply"](
            model, scheme=_scheme_for(scheme), quantized_layer_name_prefix=quantized_layer_name_prefix
        )
        return rebuilt(qat) if stale_layers(qat) else qat


def quantize_model(model, quantized_layer_name_prefix="quant_", scheme=None):
    """Quantization-aware copy of a tf-keras functional or Sequential model, recurrent layers included.

    Same contract as `tfmot.quantization.keras.quantize_model`: returns a new model with the
    original weights; `model` itself is not modified. `scheme` defaults to `RNNQuantizeScheme()`.

    A Keras 3 functional or Sequential model is accepted too: it is converted first
    (`lstm_transforms.to_tf_keras`). The QAT model returned is always a **tf-keras** model: compile and
    fit it with tf-keras (or string) optimizers, losses, metrics and callbacks, not Keras 3 objects.
    """
    model = ensure_tf_keras(model)
    check_model(model, "model")
    _check_not_quantized(model, "model")
    annotated = quantize_annotate_model(model)
    return quantize_apply(annotated, scheme=scheme, quantized_layer_name_prefix=quantized_layer_name_prefix)


def _installed_quantize_model(to_quantize, quantized_layer_name_prefix="quant_"):
    return quantize_model(to_quantize, quantized_layer_name_prefix=quantized_layer_name_prefix)


def _installed_quantize_apply(model, scheme=default_8bit_quantize_scheme.Default8BitQuantizeScheme(), quantized_layer_name_prefix="quant_"):
    return quantize_apply(model, scheme=scheme, quantized_layer_name_prefix=quantized_layer_name_prefix)


_REPLACEMENTS = {
    "quantize_model": _installed_quantize_model,
    "quantize_annotate_model": quantize_annotate_model,
    "quantize_apply": _installed_quantize_apply,
    "quantize_scope": quantize_scope,
}
for _name, _fn in _REPLACEMENTS.items():
    _fn.__doc__ = (_fn.__doc__ or "") + f"\n\n(Installed by lstm_transforms in place of tfmot's `{_name}`.)"


def install():
    """Make stock `tfmot.quantization.keras.quantize_model` & co. handle recurrent models. Idempotent."""
    with _lock:
        if _installed:
            return
        for module in _MODULES:
            for name in _PATCHED:
                _installed[(module, name)] = getattr(module, name)
                setattr(module, name, _REPLACEMENTS[name])


def uninstall():
    """Restore tfmot's own functions exactly. Idempotent."""
    with _lock:
        for (module, name), original in _installed.items():
            setattr(module, name, original)
        _installed.clear()


def is_installed():
    return bool(_installed)
