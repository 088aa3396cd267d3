"""`TFOpLambda` / `SlicingOpLambda` doing a pure shape op -> native layer.

Covers ``tf.squeeze(x, -1)``, ``tf.expand_dims``, ``tf.reshape``, ``tf.transpose`` called on a Keras
tensor, and slices ``x[:, -1, :]`` / ``x[..., 0]`` (one index on one non-batch axis -> `IndexSlice`).
A slice that keeps several steps (``x[:, -3:]``) is not a single-index move and does not match.
"""

from lstm_transforms.transforms.rules._shape_rule import shape_rule

RULE = shape_rule("tf_op_lambda", {"TFOpLambda", "SlicingOpLambda"})
