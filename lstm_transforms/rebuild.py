"""A model whose layers carry only the graph nodes of that model.

tfmot's `quantize_apply` and our layout transform clone the model several times and reuse layer
objects between the clones, so a layer of the returned model can keep inbound nodes of the
intermediate graphs. Its `layer.output` is then a tensor of a graph that no longer exists, and
`keras.Model(qat.inputs, layer.output)` fails with "Graph disconnected". `rebuilt` makes fresh
copies of every layer, wired as the model is, with the same weights.
"""

from __future__ import annotations

from tensorflow_model_optimization.python.core.quantization.keras import quantize_wrapper as tfmot_wrapper

from lstm_transforms._keras import keras
from lstm_transforms.wrappers import QuantizeWrapperV2

__all__ = ["stale_layers", "rebuilt"]


def stale_layers(model) -> list:
    """Names of the layers of `model` that have inbound nodes outside `model`'s graph."""
    in_graph = set(model._network_nodes)  # noqa: SLF001 - keys "<layer name>_ib-<node index>"
    return [
        layer.name
        for layer in model.layers
        if any(f"{layer.name}_ib-{k}" not in in_graph for k in range(len(layer._inbound_nodes)))  # noqa: SLF001
    ]


def _copy(layer):
    """A fresh layer from `layer`'s config. tfmot's QuantizeWrapperV2 becomes ours, which builds the
    wrapped layer the way the original was built: same weight order, same variable names."""
    cls = QuantizeWrapperV2 if type(layer) is tfmot_wrapper.QuantizeWrapperV2 else type(layer)
    return cls.from_config(layer.get_config())


def rebuilt(model):
    """A copy of `model` built from its layers' configs, with the same weights, variable names and graph.

    Call it inside the scopes the layers' classes need (`quantize_scope`, `clone_scope`).
    """
    copy = keras.models.clone_model(model, clone_function=_copy)
    for old, new in zip(model.layers, copy.layers):
        shapes = [tuple(w.shape) for w in old.weights]
        if shapes != [tuple(w.shape) for w in new.weights]:
            raise RuntimeError(
                f"Layer '{old.name}' ({type(old).__name__}) has weights of shapes {shapes}, but a copy built "
                f"from its config has {[tuple(w.shape) for w in new.weights]}."
            )
        new.set_weights(old.get_weights())
    return copy
