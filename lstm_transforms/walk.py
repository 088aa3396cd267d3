"""The one walker over the *built* sublayers of a tf-keras layer or model.

Which sublayers count, in order:

- a `Bidirectional` -> its `forward_layer`, then its `backward_layer` (the two layers it runs; its
  `layer` attribute is a template that is never built or called);
- any other `keras.layers.Wrapper` (tfmot's quantize wrappers and `QuantizeAnnotate`,
  `TimeDistributed`) -> the wrapped `layer`;
- an `RNN` (LSTM, GRU, SimpleRNN, RNN(cell), ...) -> its `cell`;
- a `StackedRNNCells` -> its `cells`, in order;
- a functional or Sequential model nested as a layer -> its `layers`.

Nothing else is followed: a user's own cell or layer is a leaf, whatever it holds.
"""

from __future__ import annotations

from typing import Iterator

from lstm_transforms._keras import keras

__all__ = ["children", "walk", "cells_of", "is_cell"]

L = keras.layers


def children(layer) -> list:
    """The direct sublayers of `layer` that run when it runs (see the module docstring)."""
    if isinstance(layer, L.Bidirectional):
        return [layer.forward_layer, layer.backward_layer]
    if isinstance(layer, L.Wrapper):
        return [layer.layer]
    if isinstance(layer, L.RNN):
        return [layer.cell]
    if isinstance(layer, L.StackedRNNCells):
        return list(layer.cells)
    if isinstance(layer, keras.Model):
        return list(layer.layers)
    return []


def walk(root) -> Iterator:
    """`root` (a layer or a model) and every sublayer below it, depth first, each object once.

    A model's own layers come in `model.layers` order; a Bidirectional's forward direction
    before its backward direction, so the cells come out in the order `cells_of` gives them.
    """
    seen, stack = set(), [root]
    while stack:
        layer = stack.pop()
        if layer is None or id(layer) in seen:
            continue
        seen.add(id(layer))
        yield layer
        stack.extend(reversed(children(layer)))


def is_cell(layer) -> bool:
    """An RNN cell: a layer with a `state_size` that is not itself an RNN layer or a stack of cells."""
    return hasattr(layer, "state_size") and not isinstance(
        layer, (L.RNN, L.StackedRNNCells, L.Bidirectional, L.Wrapper, keras.Model)
    )


def cells_of(layer) -> list:
    """Every cell run by `layer` (an RNN, Bidirectional, StackedRNNCells, wrapper or model), in order.

    A cell passed directly gives `[cell]`. The order is the one `RNNQuantizeConfig` relies on:
    forward direction before backward, stacked cells bottom to top.
    """
    return [sub for sub in walk(layer) if is_cell(sub)]
