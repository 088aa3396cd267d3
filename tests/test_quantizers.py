"""Quantizer arithmetic against numpy references."""

import numpy as np
import pytest

import lstm_transforms as lt
from lstm_transforms import quantizers
from lstm_transforms._keras import keras, tf
from lstm_transforms.quantizers import (
    PerGateWeightQuantizer,
    asymmetric_bounds,
    fake_quant_asymmetric,
    fake_quant_fixed_unit,
    fake_quant_logistic,
    fake_quant_per_gate,
    fake_quant_power_of_two,
    fake_quant_tanh,
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


def _op_types(concrete):
    """Op types of a concrete function's graph and of every function it calls (loop bodies)."""
    graph_def = concrete.graph.as_graph_def()
    types = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        types |= {node.op for node in function.node_def}
    return types


def _fake_quant_gradient_ops(op_types):
    return {t for t in op_types if t.startswith("FakeQuant") and t.endswith("Gradient")}


def _activation_quantizers():
    """(name, fake quant of x) for every activation quantizer the quantized cells run in a step."""
    lo, hi = asymmetric_bounds(tf.constant(-0.73), tf.constant(2.9))  # nudged: 0 moves onto the grid
    return [
        ("asymmetric", lambda x: fake_quant_asymmetric(x, None, None, 8, bounds=(lo, hi))),
        ("asymmetric_4bit", lambda x: fake_quant_asymmetric(x, tf.constant(-3.1), tf.constant(0.45), 4)),
        ("gate_int16", lambda x: fake_quant_fixed_unit(x, 16)),
        ("tanh", fake_quant_tanh),
        ("logistic", fake_quant_logistic),
        ("cell_state", lambda x: fake_quant_power_of_two(x, tf.constant(2.2), 16, clip=3.0)),
    ]


@pytest.mark.parametrize("name,quantize", _activation_quantizers(), ids=lambda v: v if isinstance(v, str) else "")
def test_activation_fake_quant_under_xla_has_tensorflows_gradient(name, quantize, monkeypatch):
    """Under jit_compile the gradient comes from a mask made in the forward pass, not from
    TensorFlow's gradient op: the values are XLA's fake quant, the gradients exactly TensorFlow's."""
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.uniform(-5, 5, 4000), np.linspace(-4, 4, 8001)]).astype("float32")
    values = np.concatenate([values, [-1.0, 0.0, 1.0 - 2.0**-8, 1.0 - 2.0**-7, 1.0, 3.0, -3.0]]).astype("float32")
    x, dy = tf.constant(values), tf.constant(rng.standard_normal(values.shape).astype("float32"))

    def value_and_gradient(v):
        with tf.GradientTape() as tape:
            tape.watch(v)
            y = quantize(v)
        return y, tape.gradient(y, v, output_gradients=dy)

    compiled = tf.function(value_and_gradient, jit_compile=True)
    xla_y, xla_grad = compiled(x)
    assert not _fake_quant_gradient_ops(_op_types(compiled.get_concrete_function(x)))
    _, eager_grad = value_and_gradient(x)
    monkeypatch.setattr(quantizers, "under_xla", lambda: False)  # TensorFlow's ops and gradient ops
    stock_xla_y, stock_xla_grad = tf.function(value_and_gradient, jit_compile=True)(x)
    np.testing.assert_array_equal(xla_y.numpy(), stock_xla_y.numpy())
    np.testing.assert_array_equal(xla_grad.numpy(), eager_grad.numpy())
    np.testing.assert_array_equal(xla_grad.numpy(), stock_xla_grad.numpy())
    assert 0 < np.count_nonzero(eager_grad.numpy() == 0) < values.size  # both sides of the range are exercised


@pytest.mark.parametrize("jit_compile", [True, False])
def test_recurrent_loop_uses_the_masked_gradient_only_under_xla(jit_compile):
    """Inside the loop of a quantized GRU (a while body) the fake quants see that XLA compiles them."""
    inputs = keras.Input((5, 3))
    qat = lt.quantize_model(keras.Model(inputs, keras.layers.GRU(4)(inputs)))
    x = tf.constant(np.random.default_rng(0).standard_normal((2, 5, 3)).astype("float32"))

    def gradients(v):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(qat(v, training=True))
        return tape.gradient(loss, qat.trainable_weights)

    types = _op_types(tf.function(gradients, jit_compile=jit_compile).get_concrete_function(x))
    assert "FakeQuantWithMinMaxVars" in types and {"While", "StatelessWhile"} & types
    gradient_ops = _fake_quant_gradient_ops(types)
    assert bool(gradient_ops) is not jit_compile, gradient_ops
