"""The quantized recurrent layers compute the values recorded in `tests/data/qat_reference.npz`.

The reference holds, for fixed weights, ranges and inputs: the inference output, the training-mode
output, the learned ranges after one training-mode call, and the gradients of a fixed loss with
respect to the input and every weight, for LSTM, GRU (both `reset_after`), SimpleRNN, a masked LSTM,
a backwards LSTM and `RNN(StackedRNNCells)`. It was recorded from the loop and cells before their
speed-ups (recorded with ``python -m tests.test_qat_reference --write`` at commit a144f5c); a change
to the loop or the cells must keep every value within float round-off.
"""

import os
import sys

import numpy as np
import pytest

import lstm_transforms as lt
from lstm_transforms._keras import keras, tf
from lstm_transforms.walk import cells_of

L = keras.layers
REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "qat_reference.npz")
BATCH, T, F, UNITS = 4, 9, 5, 8

CASES = {
    "lstm": lambda: L.LSTM(UNITS, return_sequences=True),
    "lstm_masked": lambda: L.LSTM(UNITS, return_sequences=True),
    "lstm_backwards_state": lambda: L.LSTM(UNITS, go_backwards=True, return_state=True),
    "gru": lambda: L.GRU(UNITS, return_sequences=True),
    "gru_reset_before": lambda: L.GRU(UNITS, return_sequences=True, reset_after=False),
    "simple_rnn": lambda: L.SimpleRNN(UNITS, return_sequences=True),
    "stacked": lambda: L.RNN(
        L.StackedRNNCells([L.LSTMCell(UNITS), L.GRUCell(UNITS), L.SimpleRNNCell(UNITS)]), return_sequences=True
    ),
}
# Learned ranges narrower than the values, so that the fake quant clamps some of them.
RANGES = {"quant_output_min": -0.45, "quant_output_max": 0.55, "quant_cell_max_abs": 0.7, "quant_observed": 1.0}


def _inputs(name):
    x = np.random.default_rng(11).standard_normal((BATCH, T, F)).astype("float32") * 1.5
    if name == "lstm_masked":
        x[1, 6:] = 0.0  # padded tail, skipped through the Masking layer
        x[3, 3:] = 0.0
    return x


def _qat_model(name):
    inputs = keras.Input((T, F))
    h = L.Masking(0.0)(inputs) if name == "lstm_masked" else inputs
    out = CASES[name]()(h)
    model = keras.Model(inputs, out)
    rng = np.random.default_rng(5)
    model.set_weights([rng.uniform(-0.9, 0.9, w.shape).astype("float32") for w in model.get_weights()])
    qat = lt.quantize_model(model)
    cells = [c for layer in qat.layers for c in cells_of(layer) if hasattr(c, "quant_output_min")]
    assert cells, name
    for cell in cells:
        for attr, value in RANGES.items():
            if hasattr(cell, attr):
                getattr(cell, attr).assign(value)
    return qat, cells


def _flat(y):
    return [np.asarray(t) for t in (y if isinstance(y, (list, tuple)) else [y])]


def compute(name):
    """{key: array} of everything the reference pins for one case."""
    qat, cells = _qat_model(name)
    x = tf.constant(_inputs(name))
    values = {}
    for k, y in enumerate(_flat(qat(x, training=False))):
        values[f"infer_{k}"] = y
    weights = qat.trainable_weights
    with tf.GradientTape() as tape:
        tape.watch(x)
        outputs = qat(x, training=True)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        probe = np.random.default_rng(2)
        loss = tf.add_n(
            [tf.reduce_sum(o * probe.standard_normal(o.shape[1:]).astype("float32")) for o in outputs]
        )
    grads = tape.gradient(loss, [x] + weights)
    for k, y in enumerate(outputs):
        values[f"train_{k}"] = np.asarray(y)
    values["grad_input"] = np.asarray(grads[0])
    for k, (w, g) in enumerate(zip(weights, grads[1:])):
        values[f"grad_{k}_{w.name.split('/')[-1].split(':')[0]}"] = np.asarray(g)
    for k, cell in enumerate(cells):
        for attr in RANGES:
            if hasattr(cell, attr):
                values[f"range_{k}_{attr}"] = getattr(cell, attr).numpy()
    return values


def _reference():
    if not os.path.exists(REFERENCE):
        pytest.fail(f"{REFERENCE} is missing (it is part of the repository)")
    stored = np.load(REFERENCE)
    return {key: stored[key] for key in stored.files}


@pytest.mark.parametrize("name", sorted(CASES))
def test_qat_values_match_the_reference(name):
    reference = {k.split("/", 1)[1]: v for k, v in _reference().items() if k.startswith(name + "/")}
    assert reference, f"no reference values for {name}"
    values = compute(name)
    assert sorted(values) == sorted(reference)
    for key, expected in reference.items():
        np.testing.assert_allclose(values[key], expected, rtol=1e-5, atol=1e-6, err_msg=f"{name}: {key}")


def _write():
    tf.random.set_seed(0)
    stored = {}
    for name in sorted(CASES):
        for key, value in compute(name).items():
            stored[f"{name}/{key}"] = value
        keras.backend.clear_session()
    os.makedirs(os.path.dirname(REFERENCE), exist_ok=True)
    np.savez_compressed(REFERENCE, **stored)
    print(f"wrote {len(stored)} arrays to {REFERENCE}")


if __name__ == "__main__" and "--write" in sys.argv:
    _write()
