"""A tf-keras functional model as a `networkx.DiGraph`, and back.

Nodes are layer *calls* (a layer called twice is two nodes sharing one layer), edges are the
tensors between them. Node attributes:

- ``layer``: the original layer object (never mutated, never called again);
- ``class_name``: ``type(layer).__name__``, what patterns match on;
- ``kind``: ``"input"`` for an `InputLayer`, else ``"call"``;
- ``name``: the name the rebuilt layer gets (the original name unless a rule renames it);
- ``call``: a `CallTemplate`, the call's arguments with every Keras tensor left out;
- ``node``: the original `keras` Node of the call (its input tensors' shapes and dtypes);
- ``new_layer``: set by rules; a fresh layer used as-is instead of a clone of ``layer``.

Edge ``(u, v)`` has ``tensors``: a list of ``(output_index, argument_position)`` pairs, one per
tensor of ``u`` that ``v`` consumes (``output_index`` into ``tf.nest.flatten`` of u's outputs,
``argument_position`` into the flat argument list of v's call). The graph attributes ``inputs``
(input node ids, in model order), ``outputs`` (``(node, output_index)`` pairs) and
``output_structure`` describe the model's signature.

`to_model` rebuilds a functional model: each original layer is cloned once from its config (a
`Lambda` is constructed from its function object, never deserialized) and gets its original
weights, so the result shares nothing with the source model.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import networkx as nx

from lstm_transforms._keras import keras, tf

__all__ = ["CallTemplate", "from_model", "to_model", "clone_layer", "replace_layer", "inline_model"]

_KerasTensor = type(keras.Input(shape=(1,)))


@dataclasses.dataclass(frozen=True)
class CallTemplate:
    """How a node calls its layer: ``layer(*args, **kwargs)`` with the Keras tensors left out."""

    structure: Any  # (args, [kwarg values]) as the layer was called; only its nesting is used
    kwarg_names: tuple
    flat: tuple  # flattened arguments, None where an input tensor goes

    @classmethod
    def single_input(cls):
        return cls(structure=((None,), []), kwarg_names=(), flat=(None,))

    def bind(self, tensors_by_position):
        flat = list(self.flat)
        for position, tensor in tensors_by_position:
            flat[position] = tensor
        args, kwarg_values = tf.nest.pack_sequence_as(self.structure, flat)
        return tuple(args), dict(zip(self.kwarg_names, kwarg_values))


def _is_functional(layer):
    return isinstance(layer, keras.Model) and getattr(layer, "_is_graph_network", False)


def from_model(model, graph=None, id_counter=None) -> nx.DiGraph:
    """The call graph of a functional or Sequential tf-keras model (linear in its size)."""
    if not _is_functional(model):
        raise ValueError(f"{model.name}: only functional and Sequential models can be rewritten.")
    g = nx.DiGraph() if graph is None else graph
    ids = id_counter if id_counter is not None else itertools.count()
    g.graph.setdefault("ids", ids)
    source = {}  # id(KerasTensor) -> (node id, output index)
    order = []
    for depth in sorted(model._nodes_by_depth, reverse=True):  # noqa: SLF001  inputs first
        for node in model._nodes_by_depth[depth]:  # noqa: SLF001
            nid = next(ids)
            layer = node.layer
            is_input = isinstance(layer, keras.layers.InputLayer)
            attrs = dict(layer=layer, class_name=type(layer).__name__, name=layer.name,
                         kind="input" if is_input else "call", node=node)
            if not is_input:
                flat = list(node._flat_arguments)  # noqa: SLF001
                for _, position in node._keras_inputs_ids_and_indices:  # noqa: SLF001
                    flat[position] = None
                attrs["call"] = CallTemplate(
                    structure=(node.call_args, list(node.call_kwargs.values())),
                    kwarg_names=tuple(node.call_kwargs),
                    flat=tuple(flat),
                )
            g.add_node(nid, **attrs)
            order.append(nid)
            if not is_input:
                for _, position in node._keras_inputs_ids_and_indices:  # noqa: SLF001
                    src, out_index = source[id(node._flat_arguments[position])]  # noqa: SLF001
                    if g.has_edge(src, nid):
                        g.edges[src, nid]["tensors"].append((out_index, position))
                    else:
                        g.add_edge(src, nid, tensors=[(out_index, position)])
            for out_index, tensor in enumerate(tf.nest.flatten(node.outputs)):
                source[id(tensor)] = (nid, out_index)
    g.graph["inputs"] = [source[id(t)][0] for t in model.inputs]
    g.graph["outputs"] = [source[id(t)] for t in model.outputs]
    g.graph["output_structure"] = model._nested_outputs  # noqa: SLF001
    g.graph["name"] = model.name
    g.graph["order"] = order  # a topological order, kept current by the edit helpers below
    return g


def clone_layer(layer, name=None):
    """A fresh copy of `layer` (no weights yet). A `Lambda` reuses its function object."""
    config = layer.get_config()
    if name is not None:
        config["name"] = name
    if isinstance(layer, keras.layers.Lambda):
        # Never deserialize a Python function: build the copy from the live objects.
        return keras.layers.Lambda(
            layer.function, output_shape=layer._output_shape, mask=layer.mask,  # noqa: SLF001
            arguments=layer.arguments, name=config["name"], dtype=layer.dtype_policy,
            trainable=layer.trainable)
    from lstm_transforms.serialization import custom_objects

    with keras.utils.custom_object_scope(custom_objects()):
        return layer.__class__.from_config(config)


def _make_input(layer, name):
    return keras.Input(batch_shape=layer._batch_input_shape, dtype=layer.dtype, name=name,  # noqa: SLF001
                       sparse=layer.sparse, ragged=layer.ragged)


def to_model(g: nx.DiGraph) -> keras.Model:
    """Rebuild a functional model from `g`, with fresh layers holding the original weights."""
    clones = {}  # id(original layer) -> (original, clone)
    tensors = {}
    order = [n for n in g.graph["order"] if n in g]
    for n in order:
        attrs = g.nodes[n]
        if attrs["kind"] == "input":
            tensors[n, 0] = _make_input(attrs["layer"], attrs["name"])
            continue
        layer = attrs.get("new_layer")
        if layer is None:
            original = attrs["layer"]
            if id(original) not in clones:
                clones[id(original)] = (original, clone_layer(original, attrs["name"]))
            layer = clones[id(original)][1]
        bound = [(pos, tensors[u, out]) for u in g.predecessors(n) for out, pos in g.edges[u, n]["tensors"]]
        args, kwargs = attrs["call"].bind(bound)
        outputs = layer(*args, **kwargs)
        for i, t in enumerate(tf.nest.flatten(outputs)):
            tensors[n, i] = t
    inputs = [tensors[n, 0] for n in g.graph["inputs"]]
    outputs = tf.nest.pack_sequence_as(g.graph["output_structure"], [tensors[o] for o in g.graph["outputs"]])
    model = keras.Model(inputs[0] if len(inputs) == 1 else inputs, outputs, name=g.graph["name"])
    for original, clone in clones.values():
        clone.set_weights(original.get_weights())
    return model


# --- edit helpers used by rules -------------------------------------------------------------


def replace_layer(g, n, new_layer):
    """Make single-input node `n` call `new_layer` on its one input tensor."""
    (src,) = g.predecessors(n)
    ((out_index, _),) = g.edges[src, n]["tensors"]
    g.edges[src, n]["tensors"] = [(out_index, 0)]
    g.nodes[n].update(new_layer=new_layer, class_name=type(new_layer).__name__, name=new_layer.name,
                      call=CallTemplate.single_input())


def inline_model(g, n):
    """Replace node `n`, a call of a functional model, by that model's own layer calls."""
    inner_model = g.nodes[n]["layer"]
    sub = from_model(inner_model, graph=nx.DiGraph(), id_counter=g.graph["ids"])
    for m in sub.nodes:
        sub.nodes[m]["name"] = f"{inner_model.name}_{sub.nodes[m]['name']}"
    # Outer tensors that feed the inner model's inputs, in the inner model's input order.
    feeds = sorted((pos, (u, out)) for u in g.predecessors(n) for out, pos in g.edges[u, n]["tensors"])
    feeds = [src for _, src in feeds]
    inner_inputs = {m: feeds[k] for k, m in enumerate(sub.graph["inputs"])}

    def resolve(node, out):  # an inner tensor, as (outer node, output index)
        return inner_inputs[node] if node in inner_inputs else (node, out)

    for m in sub.nodes:
        if m not in inner_inputs:
            g.add_node(m, **sub.nodes[m])
    for u, v, data in sub.edges(data=True):
        for out, pos in data["tensors"]:
            _add_tensor(g, *resolve(u, out), v, pos)
    for v in list(g.successors(n)):
        for out, pos in g.edges[n, v]["tensors"]:
            _add_tensor(g, *resolve(*sub.graph["outputs"][out]), v, pos)
    g.graph["outputs"] = [resolve(*sub.graph["outputs"][out]) if node == n else (node, out)
                          for node, out in g.graph["outputs"]]
    # Keep a valid topological order: the inner calls take the outer node's place.
    inner_order = [m for m in sub.graph["order"] if m not in inner_inputs]
    order = g.graph["order"]
    at = order.index(n)
    g.graph["order"] = order[:at] + inner_order + order[at + 1:]
    g.remove_node(n)


def _add_tensor(g, u, out, v, pos):
    if g.has_edge(u, v):
        g.edges[u, v]["tensors"].append((out, pos))
    else:
        g.add_edge(u, v, tensors=[(out, pos)])
