"""Quantizer arithmetic against numpy references."""

import numpy as np
import pytest

from lstm_transforms._keras import tf
from lstm_transforms.quantizers import (
    PerGateWeightQuantizer,
    fake_quant_fixed_unit,
    fake_quant_per_gate,
    fake_quant_power_of_two,
    power_of_two_bound,
)


@pytest.mark.parametrize("num_gates,bits", [(4, 8), (3, 8), (1, 8), (4, 4)])
def test_per_gate_scale_is_max_abs_of_each_block(num_gates, bits):
    rng = np.random.default_rng(0)
    units = 5
    kernel = rng.standard_normal((7, num_gates * units)).astype("float32")
    kernel[:, :units] *= 10.0  # gate 0 has a much larger range than the others
    q = PerGateWeightQuantizer(num_gates, bits)(tf.constant(kernel), True, {}).numpy()
    levels = 2 ** (bits - 1) - 1
    for g in range(num_gates):
        block = kernel[:, g * units : (g + 1) * units]
        scale = np.abs(block).max() / levels
        expected = np.clip(np.round(block / scale), -levels, levels) * scale
        np.testing.assert_allclose(q[:, g * units : (g + 1) * units], expected, rtol=1e-5, atol=1e-6 * scale)
    if num_gates > 1 and bits == 8:
        # One shared scale would have flattened the small gates: per-gate keeps them distinct.
        assert len(np.unique(q[:, units : 2 * units])) > 10


@pytest.mark.parametrize("seed", range(4))
def test_per_gate_fake_quant_equals_tensorflows_per_channel_op_bit_for_bit(seed):
    rng = np.random.default_rng(seed)
    for trial in range(25):
        rows, units, gates = int(rng.integers(1, 70)), int(rng.integers(1, 70)), int(rng.choice([1, 3, 4]))
        bits = int(rng.integers(2, 9))
        scale = 10 ** rng.uniform(-4, 2)
        kernel = (rng.standard_normal((rows, gates * units)) * scale).astype("float32")
        if trial % 2:  # values on and next to grid points, where rounding is decided
            kernel = (np.round(kernel / scale * 21) * scale / 21).astype("float32")
        if trial % 5 == 0:
            kernel[:, :units] = 0.0  # an all-zero gate block
        bound = np.repeat(np.maximum(np.abs(kernel.reshape(rows, gates, units)).max(axis=(0, 2)), 1e-8), units)
        dy = rng.standard_normal(kernel.shape).astype("float32")
        w = tf.constant(kernel)
        with tf.GradientTape() as tape:
            tape.watch(w)
            ours = fake_quant_per_gate(w, gates, bits)
        grad = tape.gradient(ours, w, output_gradients=tf.constant(dy))
        theirs = tf.quantization.fake_quant_with_min_max_vars_per_channel(
            kernel, -bound, bound, num_bits=bits, narrow_range=True
        )
        their_grad = tf.quantization.fake_quant_with_min_max_vars_per_channel_gradient(
            dy, kernel, -bound, bound, num_bits=bits, narrow_range=True
        )[0]
        np.testing.assert_array_equal(ours.numpy().view(np.int32), theirs.numpy().view(np.int32))
        np.testing.assert_array_equal(grad.numpy().view(np.int32), their_grad.numpy().view(np.int32))


def test_per_gate_gradient_is_straight_through():
    kernel = tf.Variable(np.random.default_rng(1).standard_normal((3, 8)).astype("float32"))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(PerGateWeightQuantizer(4)(kernel, True, {}) * 2.0)
    np.testing.assert_allclose(tape.gradient(loss, kernel).numpy(), 2.0)


def test_per_gate_rejects_indivisible_kernel():
    with pytest.raises(ValueError, match="gate blocks"):
        PerGateWeightQuantizer(4).build((3, 10), "kernel", tf.keras.layers.Layer(name="lstm"))


def test_fixed_unit_grid_is_power_of_two():
    x = tf.constant(np.linspace(-1.2, 1.2, 1001, dtype="float32"))
    q = fake_quant_fixed_unit(x, 16).numpy()
    np.testing.assert_allclose(q * 2**15, np.round(q * 2**15), atol=1e-3)
    assert q.min() == -1.0 and q.max() == pytest.approx(1 - 2**-15)


@pytest.mark.parametrize("max_abs,bound", [(0.3, 0.5), (1.0, 1.0), (3.7, 4.0), (10.0, 16.0)])
def test_power_of_two_bound(max_abs, bound):
    assert float(power_of_two_bound(tf.constant(max_abs))) == bound


@pytest.mark.parametrize("bits", [16, 8, 3])
@pytest.mark.parametrize("clip", [0.0, 10.0, 1.5])
def test_clipped_power_of_two_fake_quant_equals_clip_then_tensorflows_op(bits, clip):
    rng = np.random.default_rng(bits)
    for max_abs in (0.3, 1.0, 3.7, 12.0, 40.0):
        top = power_of_two_bound(tf.constant(max_abs)).numpy()
        c = (rng.standard_normal(4000) * max_abs * 1.5).astype("float32")
        c[:8] = [top, -top, clip, -clip, top * (1 - 2.0 ** (1 - bits)), 0.0, np.nextafter(top, 0), -np.nextafter(top, 0)]
        x, dy = tf.constant(c), tf.constant(rng.standard_normal(c.shape).astype("float32"))
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            ours = fake_quant_power_of_two(x, tf.constant(max_abs), bits, clip=clip)
            lo, hi = -top, top * (1 - 2.0 ** (1 - bits))
            clipped = tf.clip_by_value(x, -clip, clip) if clip else x
            theirs = tf.quantization.fake_quant_with_min_max_vars(clipped, lo, hi, num_bits=bits)
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
        np.testing.assert_array_equal(
            tape.gradient(ours, x, output_gradients=dy).numpy(), tape.gradient(theirs, x, output_gradients=dy).numpy()
        )


def test_power_of_two_cell_state_quantization():
    c = tf.constant(np.linspace(-5, 5, 999, dtype="float32"))
    q = fake_quant_power_of_two(c, tf.constant(3.0), 16).numpy()
    scale = 4.0 / 2**15
    np.testing.assert_allclose(q / scale, np.round(q / scale), atol=1e-3)
    assert q.max() <= 4.0 and q.min() >= -4.0
