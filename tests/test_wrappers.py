"""The quantize wrapper around mask-carrying layers."""

import numpy as np

from lstm_transforms._keras import tf
from lstm_transforms.wrappers import snap_to_mask_value


def test_snap_moves_only_round_off_of_the_mask_value_and_passes_the_gradient():
    scale = 8.0 / 255  # an int8 grid over [-4, 4]
    grid = np.array([[-4.0, -scale, 1e-8, -3e-8, scale, 4.0]], np.float32)
    x = tf.constant(grid)
    with tf.GradientTape() as tape:
        tape.watch(x)
        snapped = snap_to_mask_value(x, 0.0)
    np.testing.assert_array_equal(snapped.numpy(), np.float32([[-4.0, -scale, 0.0, 0.0, scale, 4.0]]))
    np.testing.assert_array_equal(tape.gradient(snapped, x).numpy(), np.ones_like(grid))
    shifted = snap_to_mask_value(tf.constant([[-1.0 + 2e-7, -1.0 + scale, 2.0]]), -1.0).numpy()
    np.testing.assert_array_equal(shifted, np.float32([[-1.0, -1.0 + scale, 2.0]]))


def test_snap_leaves_integer_inputs_alone():
    ids = tf.constant([[0, 3, 0]], tf.int32)
    np.testing.assert_array_equal(snap_to_mask_value(ids, 0).numpy(), ids.numpy())
