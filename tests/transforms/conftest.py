"""Helpers for the transforms tests: a tfmot scheme that asks `extra_quantize_config` first."""

import numpy as np
import pytest
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
    default_8bit_quantize_registry,
    default_8bit_quantize_scheme,
)

from lstm_transforms.layer_configs import extra_quantize_config


class ExtraRegistry(default_8bit_quantize_registry.Default8BitQuantizeRegistry):
    """tfmot's contract: `quantize_apply` calls supports(layer), then get_quantize_config(layer)."""

    def supports(self, layer):
        return extra_quantize_config(layer) is not None or super().supports(layer)

    def get_quantize_config(self, layer):
        return extra_quantize_config(layer) or super().get_quantize_config(layer)


class ExtraScheme(default_8bit_quantize_scheme.Default8BitQuantizeScheme):
    def get_quantize_registry(self):
        return ExtraRegistry()


@pytest.fixture
def extra_scheme():
    return ExtraScheme()


def assert_same_outputs(a, b, x, atol=1e-6):
    import tensorflow as tf

    ya, yb = a(x, training=False), b(x, training=False)
    tf.nest.assert_same_structure(ya, yb)
    ya, yb = tf.nest.flatten(ya), tf.nest.flatten(yb)
    assert len(ya) == len(yb)
    for u, v in zip(ya, yb):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), atol=atol, rtol=0)


def snapshot(model):
    """What 'untouched' means: same layers (objects and classes), same weights."""
    return [(id(layer), type(layer), [w.copy() for w in layer.get_weights()]) for layer in model.layers]


def assert_untouched(model, before):
    after = snapshot(model)
    assert [(i, t) for i, t, _ in after] == [(i, t) for i, t, _ in before]
    for (_, _, wa), (_, _, wb) in zip(after, before):
        for u, v in zip(wa, wb):
            np.testing.assert_array_equal(u, v)


class _Checks:
    same_outputs = staticmethod(assert_same_outputs)
    snapshot = staticmethod(snapshot)
    untouched = staticmethod(assert_untouched)


@pytest.fixture
def checks():
    """`checks.same_outputs(a, b, x)`, `checks.snapshot(model)`, `checks.untouched(model, snap)`."""
    return _Checks
