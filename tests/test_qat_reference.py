"""The quantized recurrent layers compute the values recorded in `tests/data/qat_reference.npz`.

The reference holds, for fixed weights, ranges and inputs: the inference output, the training-mode
output, the learned ranges after one training-mode call, and the gradients of a fixed loss with
respect to the input and every weight, for LSTM, GRU (both `reset_after`), SimpleRNN and
`RNN(StackedRNNCells)`, with padded (masked) heads and tails, ragged inputs, `go_backwards`,
`unroll`, `zero_output_for_mask` and a masked Bidirectional LSTM: every way the loop's masking can
add the zeros of padded steps to the learned ranges. It was recorded from the loop and cells before their
speed-ups (recorded with ``python -m tests.test_qat_reference --write`` at commit a144f5c); a change
to the loop or the cells must keep every value within float round-off (on the machine that recorded
it, the speed-ups of the loop and the LSTM cell kept every value bit for bit).
"""

import os
import sys

import numpy as np
import pytest

import lstm_transforms as lt
from lstm_transforms import recurrent
from lstm_transforms._keras import keras, tf
from lstm_transforms.walk import cells_of

L = keras.layers
REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "qat_reference.npz")
BATCH, T, F, UNITS = 4, 9, 5, 8

PADDED_TAIL = ("lstm_masked", "bidirectional_masked", "simple_rnn_zero_output", "positive_rnn_masked_tail",
               "positive_lstm_zero_output")
PADDED_HEAD = ("lstm_prepadded", "lstm_unrolled_masked", "simple_rnn_zero_output", "positive_rnn_prepadded")
PADDED = PADDED_TAIL + PADDED_HEAD
RAGGED = ("lstm_ragged", "gru_ragged_backwards", "positive_gru_ragged", "positive_gru_ragged_backwards")
CASES = {
    "lstm": lambda: L.LSTM(UNITS, return_sequences=True),
    "lstm_masked": lambda: L.LSTM(UNITS, return_sequences=True),
    "lstm_prepadded": lambda: L.LSTM(UNITS, return_sequences=True),
    "lstm_backwards_state": lambda: L.LSTM(UNITS, go_backwards=True, return_state=True),
    "lstm_unrolled_last": lambda: L.LSTM(UNITS, unroll=True),
    "lstm_unrolled_masked": lambda: L.LSTM(UNITS, unroll=True, return_sequences=True),
    "lstm_ragged": lambda: lt.QuantizedLSTM(UNITS, return_sequences=True),
    "lstm_clipped": lambda: L.LSTM(UNITS, return_sequences=True),
    "bidirectional_masked": lambda: L.Bidirectional(L.LSTM(UNITS, return_sequences=True)),
    "gru": lambda: L.GRU(UNITS, return_sequences=True),
    "gru_reset_before": lambda: L.GRU(UNITS, return_sequences=True, reset_after=False),
    "gru_ragged_backwards": lambda: lt.QuantizedGRU(UNITS, go_backwards=True),
    "simple_rnn": lambda: L.SimpleRNN(UNITS, return_sequences=True),
    "simple_rnn_zero_output": lambda: L.SimpleRNN(UNITS, return_sequences=True, zero_output_for_mask=True),
    # Outputs that never reach 0: whether the zeros of padded steps enter the ranges shows.
    "positive_rnn_masked_tail": lambda: L.SimpleRNN(UNITS, activation="sigmoid", return_sequences=True),
    "positive_rnn_prepadded": lambda: L.SimpleRNN(UNITS, activation="sigmoid", return_sequences=True),
    "positive_lstm_zero_output": lambda: L.LSTM(
        UNITS, activation="sigmoid", return_sequences=True, zero_output_for_mask=True
    ),
    "positive_gru_ragged": lambda: lt.QuantizedGRU(UNITS, activation="sigmoid", return_sequences=True),
    "positive_gru_ragged_backwards": lambda: lt.QuantizedGRU(UNITS, activation="sigmoid", go_backwards=True),
    "stacked": lambda: L.RNN(
        L.StackedRNNCells([L.LSTMCell(UNITS), L.GRUCell(UNITS), L.SimpleRNNCell(UNITS)]), return_sequences=True
    ),
}
# Learned ranges narrower than the values, so that the fake quant clamps some of them.
RANGES = {"quant_output_min": -0.45, "quant_output_max": 0.55, "quant_cell_max_abs": 0.7, "quant_observed": 1.0}
# ... and of every intermediate of a GRU / SimpleRNN step (the deployed graph's tensors).
STEP_POINTS = set(lt.QuantizedGRUCell.STATISTICS) | {"input", "recurrent", "pre"}
RANGES.update({f"quant_{point}_{end}": value for point in sorted(STEP_POINTS - {"output"})
               for end, value in (("min", -1.2), ("max", 1.3))})
ROW_LENGTHS = [9, 5, 7, 2]
# A cell clip inside the cell-state range, so that both the clip and the fake quant act.
CLIPPED = {"lstm_clipped": ({"cell_clip": 1.5}, {"quant_cell_max_abs": 3.0})}


def _inputs(name):
    x = np.random.default_rng(11).standard_normal((BATCH, T, F)).astype("float32") * 1.5
    if name in PADDED_TAIL:
        x[1, 6:] = 0.0  # padded tail, skipped through the Masking layer
        x[3, 3:] = 0.0
    if name in PADDED_HEAD:
        x[0, :4] = 0.0  # padded head: the masked first steps output zeros
        x[2, :1] = 0.0
    if name in RAGGED:
        return np.concatenate([x[row, :length] for row, length in enumerate(ROW_LENGTHS)])
    return x


def _as_model_input(name, values):
    return tf.RaggedTensor.from_row_lengths(values, ROW_LENGTHS) if name in RAGGED else values


def _qat_model(name):
    inputs = keras.Input((None, F), ragged=True) if name in RAGGED else keras.Input((T, F))
    h = L.Masking(0.0)(inputs) if name in PADDED else inputs
    out = CASES[name]()(h)
    model = keras.Model(inputs, out)
    rng = np.random.default_rng(5)
    model.set_weights([rng.uniform(-0.9, 0.9, w.shape).astype("float32") for w in model.get_weights()])
    if name in CLIPPED:  # input and forget gates open: c accumulates past the clip
        kernel, recurrent_kernel, bias = model.layers[-1].get_weights()
        bias[: 2 * UNITS] += 3.0
        model.layers[-1].set_weights([kernel, recurrent_kernel, bias])
    # tfmot cannot quantize a model with a ragged input: the quantized layer runs on its own there
    # (float weights, quantized activations).
    scheme, ranges = CLIPPED.get(name, ({}, {}))
    qat = model if name in RAGGED else lt.quantize_model(model, scheme=lt.RNNQuantizeScheme(**scheme))
    cells = [c for layer in qat.layers for c in cells_of(layer) if hasattr(c, "quant_output_min")]
    assert cells, name
    for cell in cells:
        for attr, value in {**RANGES, **ranges}.items():
            if hasattr(cell, attr):
                getattr(cell, attr).assign(value)
    return qat, cells


def _flat(y):
    y = y if isinstance(y, (list, tuple)) else [y]
    return [t.flat_values if isinstance(t, tf.RaggedTensor) else t for t in y]


def compute(name, jit_compile=False, input_range=None):
    """{key: array} of everything the reference pins for one case (computed by XLA with `jit_compile`;
    `input_range` (lo, hi) set on the model's input QuantizeLayer, which is otherwise at tfmot's [0, 0])."""
    qat, cells = _qat_model(name)
    if input_range is not None:
        _set_input_range(qat, input_range)
    x = tf.constant(_inputs(name))
    weights = qat.trainable_weights
    probe = np.random.default_rng(2)

    def run(x):
        inferred = _flat(qat(_as_model_input(name, x), training=False))
        with tf.GradientTape() as tape:
            tape.watch(x)
            outputs = _flat(qat(_as_model_input(name, x), training=True))
            loss = tf.add_n(
                [tf.reduce_sum(o * probe.standard_normal(o.shape[1:]).astype("float32")) for o in outputs]
            )
        return inferred, outputs, tape.gradient(loss, [x] + weights)

    if jit_compile:
        run = tf.function(run, jit_compile=True)
    inferred, outputs, grads = run(x)
    values = {f"infer_{k}": np.asarray(y) for k, y in enumerate(inferred)}
    for k, y in enumerate(outputs):
        values[f"train_{k}"] = np.asarray(y)
    values["grad_input"] = np.asarray(tf.convert_to_tensor(grads[0]))  # dense, also for ragged inputs
    for k, (w, g) in enumerate(zip(weights, grads[1:])):
        values[f"grad_{k}_{w.name.split('/')[-1].split(':')[0]}"] = np.asarray(g)
    for k, cell in enumerate(cells):
        for attr in RANGES:
            if hasattr(cell, attr):
                values[f"range_{k}_{attr}"] = getattr(cell, attr).numpy()
    return values


def _set_input_range(qat, input_range):
    for var in qat.variables:
        for end, value in zip(("_min:", "_max:"), input_range):
            if "quantize_layer" in var.name and end in var.name:
                var.assign(value)


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
        _assert_matches(values[key], expected, f"{name}: {key}")


# XLA (`compile(jit_compile=True)`): its tanh / sigmoid round differently in the last bits, which moves
# values at fake-quant boundaries by one step, and the recurrence carries those steps on.
XLA_CASES = ("lstm", "lstm_clipped", "gru", "gru_reset_before", "simple_rnn", "stacked", "lstm_masked",
             "bidirectional_masked", "lstm_prepadded")


@pytest.mark.parametrize("name", ["lstm", "gru", "gru_reset_before", "simple_rnn", "stacked", "stacked_widths"])
def test_xla_extremes_per_unit_give_the_ranges_of_extremes_per_row(name, monkeypatch):
    """Under XLA without a mask the loop keeps its statistics' extremes per unit, not per batch row
    (`recurrent._extremes_per_row`): every value, the learned ranges included, is exactly the same."""
    monkeypatch.setitem(CASES, "stacked_widths", lambda: L.RNN(  # cells of different widths
        L.StackedRNNCells([L.LSTMCell(6), L.GRUCell(UNITS), L.SimpleRNNCell(3)]), return_sequences=True))
    per_unit = compute(name, jit_compile=True, input_range=(-4.0, 4.0))
    monkeypatch.setattr(recurrent, "_extremes_per_row", lambda mask, row_lengths: True)
    per_row = compute(name, jit_compile=True, input_range=(-4.0, 4.0))
    assert sorted(per_unit) == sorted(per_row)
    assert any(key.startswith("range_") and key.endswith("_min") for key in per_row)
    for key, value in per_row.items():
        np.testing.assert_array_equal(per_unit[key], value, err_msg=f"{name}: {key}")
    moved = [key for key, value in per_row.items()
             if key.startswith("range_") and value != RANGES[key.split("_", 2)[2]]]
    assert len(moved) > len(per_row) // 4  # the ranges learned from the statistics, not the preset ones


def test_extremes_are_kept_per_unit_only_under_xla_without_a_mask():
    """The per-unit extremes of the test above are what an unmasked loop under XLA uses."""
    mask = tf.ones((2, 3), tf.bool)
    in_xla = tf.function(lambda: [recurrent._extremes_per_row(None, None), recurrent._extremes_per_row(mask, None),
                                  recurrent._extremes_per_row(None, tf.constant([3, 2]))], jit_compile=True)
    assert [bool(flag) for flag in in_xla()] == [False, True, True]
    assert recurrent._extremes_per_row(None, None)
    assert tf.function(lambda: tf.constant(recurrent._extremes_per_row(None, None)))()


@pytest.mark.parametrize("name", XLA_CASES)
def test_xla_computes_what_tensorflow_computes_up_to_rounding_steps(name):
    """Inference, training outputs and range updates under `jit_compile=True`: every value within a tenth
    of the largest (a few quantization steps; a different computation moves values by far more);
    gradients within a quarter in norm (a value that crosses a range's edge switches its straight-through
    gradient off; these cases clamp on purpose, and the GRU's gradients differ by up to 18%). The input range is set first: a fresh QuantizeLayer's [0, 0] is degenerate, and XLA's fake
    quant maps it differently from TensorFlow's (neither is meaningful)."""
    expected = compute(name, input_range=(-4.0, 4.0))
    actual = compute(name, jit_compile=True, input_range=(-4.0, 4.0))
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        if key.startswith("grad_"):
            assert np.linalg.norm(actual[key] - value) <= 0.25 * np.linalg.norm(value) + 1e-6, f"{name} (XLA): {key}"
        else:
            bound = 0.1 * float(np.max(np.abs(value))) + 1e-6
            assert np.max(np.abs(actual[key] - value)) <= bound, f"{name} (XLA): {key}"


@pytest.mark.parametrize("name", ("lstm_masked", "lstm_prepadded"))
def test_masking_still_masks_under_xla(name):
    """XLA's fake quant maps 0 to about 1e-8 (TensorFlow's: exactly 0); the Masking layer's wrapper
    snaps it back, so padded steps stay masked: a padded tail repeats the last real output, a padded
    head outputs zeros, as without XLA."""
    qat, _ = _qat_model(name)
    _set_input_range(qat, (-4.0, 4.0))
    out = np.asarray(tf.function(lambda x: qat(x, training=False), jit_compile=True)(tf.constant(_inputs(name))))
    if name in PADDED_TAIL:
        for row, length in ((1, 6), (3, 3)):
            padded = out[row, length:]
            np.testing.assert_array_equal(padded, np.broadcast_to(out[row, length - 1], padded.shape))
    else:
        np.testing.assert_array_equal(out[0, :4], 0.0)
        np.testing.assert_array_equal(out[2, :1], 0.0)
        assert np.all(np.abs(out[0, 4]) > 0), "the first real step computes"


def _assert_matches(actual, expected, what):
    """Equal within float round-off, up to rare fake-quant rounding flips.

    Another CPU may round a matmul differently in the last bit; a value that sits on a rounding
    boundary of a fake quant then moves by one quantization step. So: every value within round-off
    except at most 1% of them (and at most 2), which may be off by up to a tenth of the largest
    value (one step of the coarsest quantizer in these cases). A change to the computation moves far
    more values than that. Ranges move by 1% of a batch extreme per step: compared tightly.
    """
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, what
    close = np.isclose(actual, expected, rtol=1e-5 if not what.split(": ")[-1].startswith("range_") else 2e-6,
                       atol=1e-6)
    allowed = max(2, int(0.01 * close.size)) if close.size > 2 else 0
    far = np.abs(actual - expected)[~close]
    bound = 0.1 * float(np.max(np.abs(expected))) if expected.size else 0.0
    assert (~close).sum() <= allowed and (far.size == 0 or far.max() <= bound), (
        f"{what}: {(~close).sum()} of {close.size} values differ (allowed {allowed}); largest difference "
        f"{far.max() if far.size else 0:.3g} (bound {bound:.3g})"
    )


def _write(names=()):
    """Record every case, or only `names` (the other cases keep their stored values)."""
    tf.random.set_seed(0)
    stored = {}
    if names:
        unknown = set(names) - set(CASES)
        if unknown:
            raise SystemExit(f"unknown cases {sorted(unknown)}")
        stored = {key: value for key, value in _reference().items() if key.split("/", 1)[0] not in names}
    for name in sorted(names or CASES):
        for key, value in compute(name).items():
            stored[f"{name}/{key}"] = value
        keras.backend.clear_session()
    os.makedirs(os.path.dirname(REFERENCE), exist_ok=True)
    np.savez_compressed(REFERENCE, **stored)
    print(f"wrote {len(stored)} arrays to {REFERENCE}")


if __name__ == "__main__" and "--write" in sys.argv:
    _write([a for a in sys.argv[1:] if a != "--write"])
