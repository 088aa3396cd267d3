"""A single-input `TFOpLambda` that is not a pure shape op (``tf.nn.relu(x)``, ``x * 2``) -> `Lambda`.

Stock tfmot annotates a `TFOpLambda` and then rejects it ("not supported"), while it skips a
`Lambda` and leaves it in float. Wrapping the same call in a `Lambda` (same name, same function,
same arguments) gives every non-shape op the one documented behaviour: kept in float, with a
`FloatLambdaWarning`, and the rest of the model quantizes. Multi-input ops are left unchanged.
"""

import networkx as nx

from lstm_transforms._keras import keras
from lstm_transforms.transforms import graph as graph_mod
from lstm_transforms.transforms.pattern import Rule
from lstm_transforms.transforms.rules._shape_rule import node_analysis


def _float_only(g, match):
    (n,) = match.values()
    attrs = g.nodes[n]
    return len(attrs["node"].keras_inputs) == 1 and node_analysis(g, n).layer_spec is None


def _as_lambda(op_layer, template, position):
    def call_op(x):
        args, kwargs = template.bind([(position, x)])
        return op_layer.call(*args, **kwargs)

    call_op.__name__ = op_layer.name.replace(".", "_")
    return keras.layers.Lambda(call_op, name=op_layer.name)


def _replace(g, match):
    (n,) = match.values()
    attrs = g.nodes[n]
    ((_, position),) = attrs["node"]._keras_inputs_ids_and_indices  # noqa: SLF001
    graph_mod.replace_layer(g, n, _as_lambda(attrs["layer"], attrs["call"], position))
    attrs["float_fallback"] = True


_pattern = nx.DiGraph()
_pattern.add_node("op", class_name=frozenset({"TFOpLambda", "SlicingOpLambda"}), where=lambda a: a["kind"] == "call")

RULE = Rule(name="float_op_lambda", pattern=_pattern, replace=_replace, filter=_float_only)
