import networkx as nx
import numpy as np

from lstm_transforms._keras import keras
from lstm_transforms.transforms import graph
from lstm_transforms.transforms.pattern import Rule, apply_rules, find_matches

L = keras.layers


def _dense_relu_pattern():
    p = nx.DiGraph()
    p.add_node("dense", class_name="Dense", where=lambda a: a["layer"].activation.__name__ == "linear")
    p.add_node("relu", class_name="ReLU")
    p.add_edge("dense", "relu")
    return p


def _fuse(g, match):
    """Dense -> ReLU becomes Dense(activation='relu') (a rule for these tests only)."""
    dense, relu = match["dense"], match["relu"]
    layer = g.nodes[dense]["layer"]
    fused = L.Dense.from_config({**layer.get_config(), "activation": "relu"})
    fused.build(layer.input_shape)
    fused.set_weights(layer.get_weights())
    (src,) = g.predecessors(dense)
    for v in list(g.successors(relu)):
        g.add_edge(dense, v, tensors=g.edges[relu, v]["tensors"])
    g.graph["outputs"] = [(dense, o) if n == relu else (n, o) for n, o in g.graph["outputs"]]
    g.remove_node(relu)
    graph.replace_layer(g, dense, fused)


FUSE = Rule(name="dense_relu", pattern=_dense_relu_pattern(), replace=_fuse)


def _chain(n_blocks, tap=None):
    i = keras.Input((4,))
    x, outputs = i, []
    for k in range(n_blocks):
        d = L.Dense(4, name=f"d{k}")(x)
        if k == tap:
            outputs.append(d)  # the interior of this block also feeds a model output
        x = L.ReLU(name=f"r{k}")(d)
    return keras.Model(i, outputs + [x])


def test_finds_every_block_and_rewrites_with_equal_outputs(checks):
    model = _chain(3)
    g = graph.from_model(model)
    assert len(find_matches(g, FUSE)) == 3
    assert apply_rules(g, [FUSE]) == {"dense_relu": 3}
    rebuilt = graph.to_model(g)
    assert not [layer for layer in rebuilt.layers if isinstance(layer, L.ReLU)]
    checks.same_outputs(model, rebuilt, np.random.randn(5, 4).astype("float32"))


def test_match_whose_interior_feeds_outside_is_rejected():
    g = graph.from_model(_chain(3, tap=1))
    matched = {g.nodes[m["dense"]]["name"] for m in find_matches(g, FUSE)}
    assert matched == {"d0", "d2"}


def test_near_miss_by_predicate_and_by_class():
    i = keras.Input((4,))
    x = L.ReLU()(L.Dense(4, activation="tanh")(i))  # `where` rejects
    y = L.Activation("relu")(L.Dense(4)(i))  # class does not match
    g = graph.from_model(keras.Model(i, [x, y]))
    assert find_matches(g, FUSE) == []


def test_symmetric_matches_are_deduplicated():
    p = nx.DiGraph()
    p.add_node("a", class_name="Dense")
    p.add_node("b", class_name="Dense")
    p.add_node("add", class_name="Add")
    p.add_edges_from([("a", "add"), ("b", "add")])
    i = keras.Input((4,))
    out = L.Add()([L.Dense(4)(i), L.Dense(4)(i)])
    g = graph.from_model(keras.Model(i, out))
    assert len(find_matches(g, Rule("pair", p, replace=lambda g, m: None))) == 1


def test_filter_vetoes_and_nothing_is_applied():
    g = graph.from_model(_chain(2))
    veto = Rule("veto", _dense_relu_pattern(), replace=_fuse, filter=lambda g, m: False)
    assert apply_rules(g, [veto]) == {"veto": 0}
