import networkx as nx
import numpy as np

from lstm_transforms._keras import keras
from lstm_transforms.transforms import graph

L = keras.layers


def _branchy():
    a = keras.Input((6,), name="a")
    b = keras.Input((6,), name="b")
    shared = L.Dense(4, name="shared")
    x, y = shared(a), shared(b)
    s = L.Add(name="add")([x, y])
    c = L.Concatenate(name="cat")([s, x])
    return keras.Model([a, b], {"sum": s, "cat": c})


def test_graph_nodes_are_calls_and_edges_carry_tensor_indices():
    model = _branchy()
    g = graph.from_model(model)
    assert isinstance(g, nx.DiGraph)
    names = sorted(d["name"] for _, d in g.nodes(data=True))
    assert names == ["a", "add", "b", "cat", "shared", "shared"]  # the shared layer: two calls
    (add,) = [n for n, d in g.nodes(data=True) if d["name"] == "add"]
    positions = sorted(pos for u in g.predecessors(add) for _, pos in g.edges[u, add]["tensors"])
    assert positions == [0, 1]
    assert [g.nodes[n]["name"] for n in g.graph["inputs"]] == ["a", "b"]
    assert nx.is_directed_acyclic_graph(g)


def test_round_trip_keeps_outputs_weights_sharing_and_leaves_original_alone(checks):
    model = _branchy()
    before = checks.snapshot(model)
    rebuilt = graph.to_model(graph.from_model(model))
    x = [np.random.rand(3, 6).astype("float32"), np.random.rand(3, 6).astype("float32")]
    checks.same_outputs(model, rebuilt, x)
    assert set(rebuilt.output_names) == set(model.output_names)
    assert len(rebuilt.get_layer("shared")._inbound_nodes) == 2  # still one shared layer
    # Fresh weights: changing the copy does not change the original.
    rebuilt.get_layer("shared").kernel.assign_add(np.ones((6, 4), "float32"))
    checks.untouched(model, before)


def test_round_trip_of_a_sequential_model(checks):
    model = keras.Sequential([keras.Input((5,)), L.Dense(3, activation="relu"), L.Dense(2)])
    rebuilt = graph.to_model(graph.from_model(model))
    checks.same_outputs(model, rebuilt, np.random.rand(4, 5).astype("float32"))


def test_round_trip_keeps_call_arguments():
    i = keras.Input((4, 3))
    x = L.LSTM(5, return_sequences=True, name="lstm")(i)
    d = L.Dropout(0.5, name="drop")(x, training=False)  # a keyword argument of the call
    model = keras.Model(i, d)
    g = graph.from_model(model)
    (drop,) = [n for n, d in g.nodes(data=True) if d["name"] == "drop"]
    _, kwargs = g.nodes[drop]["call"].bind([(0, "x")])
    assert kwargs == {"training": False}
    rebuilt = graph.to_model(g)
    x = np.random.rand(2, 4, 3).astype("float32")
    np.testing.assert_allclose(model(x, training=True), rebuilt(x, training=True), atol=1e-6)


def test_rewrite_returns_the_model_itself_when_nothing_applies():
    from lstm_transforms.transforms import needs_rewrite, rewrite

    model = _branchy()
    assert not needs_rewrite(model)
    assert rewrite(model) is model
