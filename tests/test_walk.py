"""The one walker: which sublayers count, in which order, and only built ones."""

import numpy as np
import pytest

import lstm_transforms as lt
from lstm_transforms._keras import keras
from lstm_transforms.walk import cells_of, children, walk

L = keras.layers


def _x():
    return np.random.default_rng(0).standard_normal((4, 6, 5)).astype("float32")


def test_bidirectional_gives_its_two_directions_not_the_template():
    layer = L.Bidirectional(L.LSTM(3, name="lstm"), backward_layer=L.LSTM(3, go_backwards=True, name="back"))
    inputs = keras.Input((6, 5))
    keras.Model(inputs, layer(inputs))
    assert children(layer) == [layer.forward_layer, layer.backward_layer]
    assert layer.layer not in list(walk(layer))  # the template copy, never built
    assert cells_of(layer) == [layer.forward_layer.cell, layer.backward_layer.cell]


def test_order_and_nesting():
    inner_inputs = keras.Input((6, 5))
    stack = L.RNN(L.StackedRNNCells([L.GRUCell(4, name="g"), L.SimpleRNNCell(3, name="s")]), name="stack")
    inner = keras.Model(inner_inputs, stack(inner_inputs), name="inner")
    inputs = keras.Input((6, 5))
    td = L.TimeDistributed(L.Dense(2, name="d"), name="td")
    h = L.LSTM(4, return_sequences=True, name="lstm")(inputs)
    model = keras.Model(inputs, [td(h), inner(inputs)])
    names = [layer.name for layer in walk(model)]
    assert names[0] == model.name
    assert names.index("lstm") < names.index("lstm_cell") < names.index("td") < names.index("d")
    assert names.index("inner") < names.index("stack") < names.index("stacked_rnn_cells") < names.index("g")
    assert names.index("g") < names.index("s")
    assert [c.name for c in cells_of(model)] == ["lstm_cell", "g", "s"]
    assert cells_of(stack.cell.cells[0]) == [stack.cell.cells[0]]  # a cell on its own
    assert cells_of(L.Dense(3)) == []


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: L.Bidirectional(L.LSTM(4, return_sequences=True)), id="bidirectional"),
        pytest.param(lambda: L.RNN(L.StackedRNNCells([L.LSTMCell(4), L.GRUCell(3)])), id="stacked"),
        pytest.param(lambda: L.GRU(4), id="gru"),
    ],
)
def test_every_sublayer_of_a_qat_model_is_built(make):
    inputs = keras.Input((6, 5))
    qat = lt.quantize_model(keras.Model(inputs, make()(inputs)))
    qat(_x(), training=True)
    found = list(walk(qat))
    assert all(layer.built for layer in found), [layer.name for layer in found if not layer.built]
    cells = cells_of(qat)
    assert cells and all(isinstance(c, lt.QuantizedLSTMCell | lt.QuantizedGRUCell) for c in cells)
    assert all(hasattr(c, "quant_observed") for c in cells)
