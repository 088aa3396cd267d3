"""A functional (or Sequential) model used as a layer -> its layer calls inlined in the outer graph.

Inner layers are renamed ``<inner model name>_<layer name>``. A nested call that passes extra
arguments (``base(x, training=False)``) is not flattened: inlining would drop them.
"""

import networkx as nx

from lstm_transforms._keras import keras
from lstm_transforms.transforms import graph as graph_mod
from lstm_transforms.transforms.pattern import Rule


def _is_plain_functional_call(attrs):
    layer = attrs["layer"]
    if attrs["kind"] != "call" or not isinstance(layer, keras.Model):
        return False
    if not getattr(layer, "_is_graph_network", False):
        return False
    node = attrs["node"]
    extra = [v for v in node.call_kwargs.values() if v is not None]
    return not extra and len(node.call_args) == 1


def _replace(g, match):
    (n,) = match.values()
    graph_mod.inline_model(g, n)


_pattern = nx.DiGraph()
_pattern.add_node("model", class_name=frozenset({"Functional", "Sequential", "Model"}), where=_is_plain_functional_call)

RULE = Rule(name="nested_model", pattern=_pattern, replace=_replace)
