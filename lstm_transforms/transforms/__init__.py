"""Graph rewrites that run before tfmot annotation, so that stock tfmot can quantize the model.

`rewrite(model)` returns a new float model computing the same outputs with the same weights (or
`model` itself when no rule applies):

- a `Lambda` / `TFOpLambda` / `SlicingOpLambda` that only moves elements (squeeze, expand_dims,
  reshape, transpose, identity, one-index slice) becomes `Reshape`, `Permute` or `IndexSlice`;
- a nested functional model is flattened into the outer graph;
- a single-input `TFOpLambda` that computes (``tf.nn.relu(x)``) is wrapped in a `Lambda`, so that
  it gets the same treatment as a non-shape `Lambda` (below) instead of tfmot's "not supported".

**Non-shape `Lambda` layers (decision).** A `Lambda` (or `TFOpLambda`) that computes with its
values (``x * 2``, ``tf.nn.relu``) is kept, cloned from its live function object (nothing is ever
deserialized from bytecode, and safe mode is never turned off), and left in float: `rewrite`
emits a `FloatLambdaWarning` naming it and saying why. tfmot already skips `Lambda` layers at
annotation, so the rest of the model still quantizes; wrap `quantize_annotate_model` /
`quantize_apply` in `clone_scope(model)` so tfmot's internal clones can copy that `Lambda`. To
quantize such a computation, make it a custom layer and give it a QuantizeConfig
(`quantize_annotate_layer`). We warn rather than raise because a float island costs accuracy
fidelity only locally, while an error would block every model with, e.g., a custom normalization.
"""

from __future__ import annotations

import contextlib
import threading
import warnings

from lstm_transforms._keras import check_model, keras
from lstm_transforms.keras3 import ensure_tf_keras
from lstm_transforms.transforms import graph
from lstm_transforms.transforms.pattern import Rule, apply_rules, find_matches
from lstm_transforms.transforms.rules import float_op_lambda, nested_model, shape_lambda, tf_op_lambda
from lstm_transforms.transforms.rules._shape_rule import node_analysis

__all__ = ["rewrite", "clone_scope", "RULES", "Rule", "FloatLambdaWarning", "needs_rewrite", "find_matches",
           "apply_rules"]

#: The rules `rewrite` applies, in order (data: add or reorder freely).
RULES = (nested_model.RULE, shape_lambda.RULE, tf_op_lambda.RULE, float_op_lambda.RULE)

_REWRITABLE = (keras.layers.Lambda, keras.Model)


class FloatLambdaWarning(UserWarning):
    """A Lambda/TFOpLambda layer is not a pure shape op: it is kept and not quantized."""


def _op_lambda_class():
    from tf_keras.src.layers.core.tf_op_layer import TFOpLambda

    return TFOpLambda


def needs_rewrite(model) -> bool:
    """Whether `model` has a layer some rule could touch (a quick scan of its top-level layers)."""
    kinds = _REWRITABLE + (_op_lambda_class(),)
    return any(isinstance(layer, kinds) for layer in model.layers)


def rewrite(model, rules=RULES) -> keras.Model:
    """The rewritten float model: a new functional model with fresh layers holding the original
    weights, computing the same outputs. `model` itself is never modified.

    When no rule applies, `model` itself is returned (nothing is rebuilt: rebuilding a tf-keras
    model costs ~8 ms per layer, and tfmot's annotation clones it anyway). Callers that need a
    private copy in that case should clone it; `needs_rewrite(model)` is the quick pre-check.
    A Keras 3 model is converted to its tf-keras twin first (`lstm_transforms.to_tf_keras`).
    """
    model = ensure_tf_keras(model)
    check_model(model)
    if not needs_rewrite(model):
        return model
    g = graph.from_model(model)
    counts = apply_rules(g, rules)
    leftovers = [(n, d) for n, d in g.nodes(data=True)
                 if d["class_name"] in ("Lambda", "TFOpLambda", "SlicingOpLambda")
                 and ("new_layer" not in d or d.get("float_fallback"))]
    for n, d in leftovers:
        warnings.warn(
            f"{d['class_name']} layer '{d['name']}' is not a pure shape operation "
            f"({node_analysis(g, n).reason}); it is kept in float and will not be quantized. To quantize it, "
            "replace it by a custom layer and give that a QuantizeConfig (quantize_annotate_layer).",
            FloatLambdaWarning, stacklevel=2)
    if not any(counts.values()):
        return model
    return graph.to_model(g)


def _lambdas(model):
    found = {}
    for layer in model.layers:
        inner = getattr(layer, "layer", None)  # a wrapper (QuantizeAnnotate, TimeDistributed, ...)
        if isinstance(inner, keras.layers.Lambda):
            layer = inner
        if isinstance(layer, keras.layers.Lambda):
            found[layer.name] = layer
        elif isinstance(layer, keras.Model):
            found.update(_lambdas(layer))
    return found


_LAMBDA_FROM_CONFIG = keras.layers.Lambda.__dict__["from_config"]
_patch_lock = threading.Lock()
_patch_users = 0
_scopes = threading.local()  # .known: this thread's open scopes, innermost last


def _known_lambda(config):
    for known in reversed(getattr(_scopes, "known", ())):
        entry = known.get(config.get("name"))
        if entry is not None and _code(config.get("function")) == entry[1]:
            return entry[0]
    return None


def _lambda_from_config(cls, config, custom_objects=None):
    layer = _known_lambda(config)
    if layer is None:
        return _LAMBDA_FROM_CONFIG.__func__(cls, config, custom_objects)
    kwargs = {k: v for k, v in config.items() if k not in _LAMBDA_FUNCTION_KEYS}
    return cls(layer.function, output_shape=layer._output_shape, mask=layer.mask,  # noqa: SLF001
               arguments=layer.arguments, **kwargs)


def _use_patch(delta):
    """Reference-counted install / removal of `_lambda_from_config` as `Lambda.from_config`."""
    global _patch_users
    with _patch_lock:
        _patch_users += delta
        if delta > 0 and _patch_users == 1:
            keras.layers.Lambda.from_config = classmethod(_lambda_from_config)
        elif delta < 0 and _patch_users == 0:
            keras.layers.Lambda.from_config = _LAMBDA_FROM_CONFIG


@contextlib.contextmanager
def clone_scope(model):
    """Let `keras.models.clone_model` / `Model.from_config` copy the `Lambda` layers of `model`.

    While active, `Lambda.from_config` recognizes a config whose name and serialized function code
    are those of a `Lambda` in `model`, and builds the copy from that layer's live function object
    (no code from the config is ever run). Every other Lambda config goes through the stock path
    (so safe mode still refuses unknown Python lambdas). A no-op when `model` has no `Lambda`.

    Thread-safe: the `Lambda.from_config` hook is installed under a lock while any scope is open
    (reference-counted), and each thread only recognizes the Lambdas of the scopes it opened itself.
    """
    known = {name: (layer, _code(layer.get_config()["function"])) for name, layer in _lambdas(model).items()}
    if not known:
        yield
        return
    if not hasattr(_scopes, "known"):
        _scopes.known = []
    _scopes.known.append(known)
    _use_patch(+1)
    try:
        yield
    finally:
        _use_patch(-1)
        _scopes.known.pop()


def _code(function_config):
    """The serialized bytecode (or registered name) of a Lambda's function, without its closure.

    Closure values are copied along with configs (so they never compare equal); the copy is built
    from the live function anyway, so name + code identify it without running any of the config.
    """
    if isinstance(function_config, (list, tuple)) and function_config:
        return function_config[0]
    return function_config


_LAMBDA_FUNCTION_KEYS = frozenset({
    "function", "module", "function_type", "output_shape", "output_shape_module", "output_shape_type",
    "mask", "mask_module", "mask_type", "arguments",
})
