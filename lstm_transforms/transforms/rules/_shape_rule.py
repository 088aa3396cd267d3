"""Shared by the shape-op rules: trace a single-input layer call and swap in the native layer."""

from __future__ import annotations

import networkx as nx

from lstm_transforms.transforms import graph as graph_mod
from lstm_transforms.transforms.pattern import Rule
from lstm_transforms.transforms.shape_ops import ShapeOpAnalysis, analyze


def node_analysis(g, n) -> ShapeOpAnalysis:
    """The (cached) shape-op analysis of call node `n`."""
    attrs = g.nodes[n]
    if "shape_op" not in attrs:
        node = attrs["node"]
        if len(node.keras_inputs) != 1:
            attrs["shape_op"] = ShapeOpAnalysis(False, f"takes {len(node.keras_inputs)} input tensors")
        else:
            (kt,) = node.keras_inputs
            ((_, position),) = node._keras_inputs_ids_and_indices  # noqa: SLF001
            layer, template = attrs["layer"], attrs["call"]

            def call(x):
                args, kwargs = template.bind([(position, x)])
                return layer.call(*args, **kwargs)

            attrs["shape_op"] = analyze(call, kt.shape, kt.dtype)
    return attrs["shape_op"]


def _replaceable(g, match):
    (n,) = match.values()
    return node_analysis(g, n).layer_spec is not None


def _replace(g, match):
    (n,) = match.values()
    graph_mod.replace_layer(g, n, node_analysis(g, n).make_layer(g.nodes[n]["name"]))


def shape_rule(name, class_names):
    pattern = nx.DiGraph()
    pattern.add_node("op", class_name=frozenset(class_names), where=lambda attrs: attrs["kind"] == "call")
    return Rule(name=name, pattern=pattern, replace=_replace, filter=_replaceable)
