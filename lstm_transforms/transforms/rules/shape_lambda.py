"""`Lambda` computing a pure shape op (K.squeeze, tf.reshape, tf.transpose, ...) -> native layer.

The function is traced on a symbolic input; see `lstm_transforms.transforms.shape_ops`.
A `Lambda` that is not a pure shape op does not match and stays in the model (in float).
"""

from lstm_transforms.transforms.rules._shape_rule import shape_rule

RULE = shape_rule("shape_lambda", {"Lambda"})
