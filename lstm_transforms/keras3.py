"""Keras 3 model -> equivalent tf-keras model (`to_tf_keras`), by walking the Keras 3 graph.

tfmot, and so lstm_transforms' QAT, works on tf-keras (Keras 2) models. Since TensorFlow 2.16,
`tf.keras` is Keras 3 unless TF_USE_LEGACY_KERAS=1 is set before TensorFlow is first imported, so
many models arrive as Keras 3 models. `to_tf_keras` replays a Keras 3 functional or Sequential model
node by node (the same walk Keras 3's own `Function` does) and builds the tf-keras twin of every
operation:

- a built-in layer: the tf-keras class of the same name, built from the Keras 3 config with the
  differences mapped (dtype policies, initializers / regularizers / constraints as Keras 3
  serializes them, activations whose Keras 3 and tf-keras definitions agree, Keras-3-only keys at
  their neutral values); wrappers (`Bidirectional`, `TimeDistributed`, `RNN(cell)`,
  `StackedRNNCells`) convert what they wrap; a nested functional / Sequential model converts
  recursively; a `Lambda` keeps the same Python function object. Weights are then copied exactly;
- a Keras 3 operation called on a symbolic tensor (`keras.ops.squeeze`, `x[:, -1]`, `x + y`, ...):
  the tf-keras layer or TF op that computes the same (`_OPS`);
- anything else: `UnsupportedLayerError`, naming it and the fix (a `Lambda`, or a tf-keras twin
  registered with `register_keras3_layer`).

Keras 3 itself is imported only when a Keras 3 object is handed in.
"""

from __future__ import annotations

import inspect
import math
import sys

from lstm_transforms._keras import keras as tf_keras
from lstm_transforms._keras import tf
from lstm_transforms.registry import UnsupportedLayerError

__all__ = [
    "to_tf_keras",
    "ensure_tf_keras",
    "is_keras3",
    "register_keras3_layer",
    "unregister_keras3_layer",
    "SUPPORTED_LAYERS",
    "SUPPORTED_OPS",
    "SAME_ACTIVATIONS",
]

_TWINS = {}  # {Keras 3 layer class: tf-keras layer class}, from register_keras3_layer

#: Built-in Keras 3 layers converted from their config to the tf-keras class of the same name
#: (each is checked against Keras 3's outputs by tests/test_keras3.py).
SUPPORTED_LAYERS = frozenset({
    "Dense", "Conv1D", "Conv2D", "DepthwiseConv2D", "BatchNormalization", "LayerNormalization",
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "Flatten", "Reshape", "Permute", "RepeatVector",
    "MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D", "GlobalAveragePooling1D",
    "GlobalMaxPooling1D", "GlobalAveragePooling2D", "GlobalMaxPooling2D", "ZeroPadding1D", "Cropping1D",
    "UpSampling1D", "Embedding", "Masking", "Activation", "ReLU", "LeakyReLU", "Softmax", "Add", "Subtract",
    "Multiply", "Average", "Maximum", "Minimum", "Concatenate", "LSTM", "GRU", "SimpleRNN", "LSTMCell",
    "GRUCell", "SimpleRNNCell",
    # converted by a builder of their own (`_BUILDERS`)
    "Bidirectional", "TimeDistributed", "RNN", "StackedRNNCells", "Lambda",
})

#: Activation names whose tf-keras function computes the same as Keras 3's (checked by a test).
#: Not here: Keras 3's `hard_sigmoid` (relu6(x + 3) / 6; tf-keras' is clip(0.2 x + 0.5)) and the
#: activations tf-keras lacks (`hard_silu`, `celu`, `glu`, `sparsemax`, ...).
SAME_ACTIVATIONS = frozenset({
    "linear", "relu", "relu6", "sigmoid", "tanh", "softmax", "log_softmax", "elu", "selu", "gelu", "silu",
    "swish", "softplus", "softsign", "exponential", "leaky_relu", "mish",
})

#: Keras-3-only config keys (or (class name, key)) -> the value at which dropping them changes nothing
#: (_ANY: always).
_ANY = object()
_KERAS3_ONLY_KEYS = {
    "quantization_config": None,
    "lora_rank": None,
    "lora_alpha": _ANY,  # only used with lora_rank
    "seed": _ANY,  # dropout seeds: which units drop, not what the layer computes
    "use_cudnn": _ANY,  # an implementation choice
    "rms_scaling": False,
    "optional": False,
    ("ZeroPadding1D", "data_format"): "channels_last",
}
_RENAMED_KEYS = {("LeakyReLU", "negative_slope"): "alpha"}


def is_keras3(obj) -> bool:
    """Whether `obj` is a Keras 3 layer, model or operation (without importing Keras 3)."""
    keras3 = sys.modules.get("keras")
    operation = getattr(keras3, "Operation", None)
    return operation is not None and isinstance(obj, operation)


def ensure_tf_keras(model):
    """`model` itself, or its tf-keras equivalent (`to_tf_keras`) when it is a Keras 3 model."""
    return to_tf_keras(model) if is_keras3(model) else model


def register_keras3_layer(keras3_class, tf_keras_class):
    """Convert instances of the Keras 3 layer class `keras3_class` to `tf_keras_class`.

    `to_tf_keras` builds the twin with ``tf_keras_class.from_config(config)``, where `config` is
    the Keras 3 layer's ``get_config()`` with dtype policies, initializers, regularizers,
    constraints and activations translated to tf-keras, then copies the weights in
    ``get_weights()`` order: the twin must compute the same with weights of the same shapes in
    the same order. For a custom RNN cell, register the cell class (and, to quantize it,
    `lstm_transforms.register_cell` its tf-keras twin).
    """
    import keras as keras3

    if not (isinstance(keras3_class, type) and issubclass(keras3_class, keras3.layers.Layer)):
        raise TypeError(f"register_keras3_layer expects a Keras 3 Layer subclass first, got {keras3_class!r}")
    if not (isinstance(tf_keras_class, type) and issubclass(tf_keras_class, tf_keras.layers.Layer)):
        raise TypeError(
            f"register_keras3_layer({keras3_class.__name__}, ...) expects a tf-keras Layer subclass second, "
            f"got {tf_keras_class!r}"
        )
    _TWINS[keras3_class] = tf_keras_class


def unregister_keras3_layer(keras3_class):
    """Undo `register_keras3_layer(keras3_class, ...)`; unknown classes are ignored."""
    _TWINS.pop(keras3_class, None)


def to_tf_keras(model):
    """The tf-keras twin of a Keras 3 functional or Sequential model.

    Same layer names, the same weights bit for bit, the same outputs (up to float round-off);
    a Sequential model gives a tf-keras Sequential model. A tf-keras model is returned as is.
    Raises `UnsupportedLayerError` for a subclassed model, a custom layer without a registered
    twin (`register_keras3_layer`), or a Keras 3 operation with no tf-keras equivalent.
    """
    if isinstance(model, tf_keras.Model):
        return model
    import keras as keras3

    if not isinstance(model, keras3.Model):
        raise TypeError(f"to_tf_keras expects a Keras 3 functional or Sequential model, got {type(model).__name__}")
    if isinstance(model, keras3.Sequential):
        return _Converter(keras3).sequential(model)
    if not isinstance(model, keras3.src.models.functional.Functional):
        raise UnsupportedLayerError(
            f"Model '{model.name}' is a subclassed Keras 3 model ({_class_path(model)}); lstm_transforms "
            "converts only functional and Sequential Keras 3 models to tf-keras (it walks their layer graph). "
            "Rebuild it functionally, with keras.Input(...) and layer calls (or build it with tf-keras: "
            "`import tf_keras as keras`)."
        )
    return _Converter(keras3).functional(model)


def _class_path(obj):
    cls = type(obj)
    return f"{cls.__module__}.{cls.__name__}"


class _Converter:
    """One conversion: Keras 3 layer -> its tf-keras twin, memoized so shared layers stay shared."""

    def __init__(self, keras3):
        self.keras3 = keras3
        self.twins = {}  # id(Keras 3 layer) -> tf-keras layer, weights copied once it is built
        self.copied = set()

    # ----------------------------------------------------------------------------------------------
    # models

    def sequential(self, model):
        if not model.built or getattr(model, "_functional", None) is None:
            raise ValueError(
                f"`model` ('{model.name}') is an unbuilt Keras 3 Sequential model: give it keras.Input(...) "
                "first or call model.build(input_shape)."
            )
        (k3_input,) = model._functional.inputs  # noqa: SLF001
        twin = tf_keras.Sequential([self.input(k3_input)], name=model.name)
        for layer in model.layers:
            tf_layer = self.layer(layer)
            twin.add(tf_layer)
            self.copy_weights(layer, tf_layer)
        return twin

    def functional(self, model):
        if not model.built:
            raise ValueError(f"`model` ('{model.name}') is not built.")
        tree = self.keras3.tree
        tensors = {id(x): self.input(x) for x in model.inputs}
        needed = _needed_nodes(model.outputs)
        for depth in sorted(model._nodes_by_depth, reverse=True):  # noqa: SLF001  Keras 3's own walk order
            for node in model._nodes_by_depth[depth]:  # noqa: SLF001
                if node.is_input or not node.operation or id(node) not in needed:
                    continue
                args, kwargs = tree.map_structure(
                    lambda x: tensors[id(x)] if isinstance(x, self.keras3.KerasTensor) else x, _call_arguments(node)
                )
                outputs = tf.nest.flatten(self.call(node, args, kwargs))
                for x, y in zip(node.outputs, outputs):
                    tensors[id(x)] = y
        inputs = tree.map_structure(lambda x: tensors[id(x)], model._inputs_struct)  # noqa: SLF001
        outputs = tree.map_structure(lambda x: tensors[id(x)], model._outputs_struct)  # noqa: SLF001
        return tf_keras.Model(inputs, outputs, name=model.name)

    def input(self, keras_tensor):
        layer = keras_tensor._keras_history.operation  # noqa: SLF001
        return tf_keras.Input(
            batch_shape=tuple(keras_tensor.shape), dtype=keras_tensor.dtype, sparse=bool(keras_tensor.sparse),
            name=layer.name,
        )

    def call(self, node, args, kwargs):
        operation = node.operation
        if not isinstance(operation, self.keras3.layers.Layer):
            return _convert_op(node, args, kwargs)
        tf_layer = self.twins.get(id(operation))
        if tf_layer is None:
            tf_layer = self.twins[id(operation)] = self.layer(operation)
        outputs = tf_layer(*args, **kwargs)
        self.copy_weights(operation, tf_layer)
        return outputs

    # ----------------------------------------------------------------------------------------------
    # layers

    def layer(self, layer, name=None):
        """The unbuilt tf-keras twin of a Keras 3 layer (a built model for a nested model)."""
        twin = _registered_twin(type(layer))
        if twin is not None:
            return self.from_config(layer, twin, name)
        if isinstance(layer, self.keras3.Model):
            return to_tf_keras(layer)
        class_name = type(layer).__name__
        builtin = getattr(self.keras3.layers, class_name, None)
        if type(layer) is not builtin:
            raise UnsupportedLayerError(
                f"Layer '{layer.name}' is a custom Keras 3 layer ({_class_path(layer)}), which lstm_transforms "
                "cannot convert to tf-keras. Register a tf-keras twin first: "
                f"lstm_transforms.register_keras3_layer({class_name}, TfKeras{class_name}), where "
                f"TfKeras{class_name} is a tf-keras layer built from the same config with the same weights; or "
                "build the model with tf-keras (`import tf_keras as keras`)."
            )
        if class_name not in SUPPORTED_LAYERS:
            raise UnsupportedLayerError(
                f"Layer '{layer.name}' ({class_name}) is a Keras 3 layer lstm_transforms does not convert to "
                f"tf-keras yet (supported: {', '.join(sorted(SUPPORTED_LAYERS))}). Register a tf-keras twin: "
                f"lstm_transforms.register_keras3_layer(keras.layers.{class_name}, tf_keras.layers.{class_name}) "
                "if tf-keras has one that computes the same, or build the model with tf-keras."
            )
        builder = _BUILDERS.get(class_name)
        if builder is not None:
            return builder(self, layer, name)
        return self.from_config(layer, getattr(tf_keras.layers, class_name), name)

    def from_config(self, layer, tf_class, name=None, drop=()):
        config = tf_keras_config(layer)
        for key in drop:
            config.pop(key, None)
        if name is not None:
            config["name"] = name
        try:
            return tf_class.from_config(config)
        except (TypeError, ValueError) as err:
            raise UnsupportedLayerError(
                f"Layer '{layer.name}' ({type(layer).__name__}): tf-keras' {tf_class.__name__} cannot be built from "
                f"its Keras 3 config ({type(err).__name__}: {err}). Register a tf-keras twin that can "
                "(lstm_transforms.register_keras3_layer), or build the model with tf-keras."
            ) from err

    def copy_weights(self, layer, tf_layer):
        """Keras 3 weights -> tf-keras twin, once, after the twin is built (same order, same shapes)."""
        if id(layer) in self.copied or isinstance(tf_layer, tf_keras.Model):
            return  # a nested model's layers were copied one by one when it was converted
        values = layer.get_weights()
        targets = tf_layer.weights
        shapes = [tuple(v.shape) for v in values]
        wanted = [tuple(w.shape) for w in targets]
        if shapes != wanted:
            raise UnsupportedLayerError(
                f"Layer '{layer.name}' ({type(layer).__name__}): its tf-keras twin {type(tf_layer).__name__} has "
                f"weights of shapes {wanted}, the Keras 3 layer {shapes}; they cannot be copied. A registered twin "
                "(register_keras3_layer) must create the same weights in the same order."
            )
        tf_layer.set_weights(values)
        self.copied.add(id(layer))


def _call_arguments(node):
    """The node's recorded (args, kwargs), less what Keras 3 filled in by itself.

    Keras 3 records `training=False` on every call that takes `training` and the incoming tensor's
    mask as `mask=`; its `Functional.call` overrides the first whenever the model is called with a
    training value. tf-keras propagates both itself, so both are left out (a mask that is not the
    incoming tensor's own is kept).
    """
    args, kwargs = node.arguments.args, dict(node.arguments.kwargs)
    kwargs.pop("training", None)
    first = args[0] if args else None
    if "mask" in kwargs and (kwargs["mask"] is None or kwargs["mask"] is getattr(first, "_keras_mask", None)):
        del kwargs["mask"]
    return args, kwargs


def _needed_nodes(outputs):
    """ids of the nodes the outputs depend on, through `_call_arguments` (auto-filled masks excluded)."""
    import keras as keras3

    needed, stack = set(), list(outputs)
    while stack:
        operation, node_index, _ = stack.pop()._keras_history  # noqa: SLF001
        node = operation._inbound_nodes[node_index]  # noqa: SLF001
        if id(node) in needed:
            continue
        needed.add(id(node))
        stack.extend(x for x in keras3.tree.flatten(_call_arguments(node)) if isinstance(x, keras3.KerasTensor))
    return needed


def _registered_twin(cls):
    for klass in cls.__mro__:
        if klass in _TWINS:
            return _TWINS[klass]
    return None


# --------------------------------------------------------------------------------------------------
# Config translation


def tf_keras_config(layer):
    """The Keras 3 layer's config, translated key by key into what tf-keras' same class accepts."""
    class_name = type(layer).__name__
    config = {}
    for key, value in layer.get_config().items():
        only = next((k for k in ((class_name, key), key) if k in _KERAS3_ONLY_KEYS), None)
        if only is not None:
            neutral = _KERAS3_ONLY_KEYS[only]
            if neutral is _ANY or value == neutral:
                continue
            raise UnsupportedLayerError(
                f"Layer '{layer.name}' ({class_name}) sets {key}={value!r}, which tf-keras' {class_name} does not "
                f"have. Build it without {key} (or with tf-keras) to quantize it."
            )
        if key == "dtype":
            value = _dtype(value, layer)
        elif key.endswith(("_initializer", "_regularizer", "_constraint")):
            value = _keras_object(key, value, layer)
        elif key in ("activation", "recurrent_activation"):
            value = _activation(key, value, layer)
        config[_RENAMED_KEYS.get((class_name, key), key)] = value
    return config


def _dtype(value, layer):
    if isinstance(value, dict):
        class_name = value.get("class_name")
        if class_name not in ("DTypePolicy", "FloatDTypePolicy"):
            raise UnsupportedLayerError(
                f"Layer '{layer.name}' ({type(layer).__name__}) has dtype policy {class_name} "
                f"({value.get('config')}); only float policies convert to tf-keras. Quantize the float model "
                "(before Keras 3's own model.quantize())."
            )
        return value["config"]["name"]
    return value


_OBJECT_MODULES = {
    "_initializer": tf_keras.initializers,
    "_regularizer": tf_keras.regularizers,
    "_constraint": tf_keras.constraints,
}


def _keras_object(key, value, layer):
    """A Keras 3 serialized initializer / regularizer / constraint -> the tf-keras object."""
    if value is None:
        return None
    module = next(m for suffix, m in _OBJECT_MODULES.items() if key.endswith(suffix))
    if isinstance(value, str):
        value = {"class_name": value, "config": {}}
    class_name, config = value.get("class_name"), dict(value.get("config") or {})
    try:
        tf_class = type(module.get(class_name))
    except (TypeError, ValueError) as err:
        raise UnsupportedLayerError(
            f"Layer '{layer.name}' ({type(layer).__name__}): {key} is {class_name}, which has no tf-keras "
            f"equivalent ({err}). Use a built-in {key.rsplit('_', 1)[-1]} or build the model with tf-keras."
        ) from err
    accepted = inspect.signature(tf_class.__init__).parameters
    dropped = {k: v for k, v in config.items() if k not in accepted}
    if any(v is not None for v in dropped.values()):
        raise UnsupportedLayerError(
            f"Layer '{layer.name}' ({type(layer).__name__}): {key} {class_name} sets {dropped}, which tf-keras' "
            f"{tf_class.__name__} does not have. Leave those at their defaults or build the model with tf-keras."
        )
    return tf_class(**{k: v for k, v in config.items() if k in accepted})


def _activation(key, value, layer):
    if value is None or (isinstance(value, str) and value in SAME_ACTIVATIONS):
        return value
    shown = value.get("config", value) if isinstance(value, dict) else value
    raise UnsupportedLayerError(
        f"Layer '{layer.name}' ({type(layer).__name__}): {key}={shown!r} has no tf-keras activation that computes "
        f"the same (convertible: {', '.join(sorted(SAME_ACTIVATIONS))}). Use one of those, or build the model "
        "with tf-keras."
    )


# --------------------------------------------------------------------------------------------------
# Layers with a builder of their own


def _lambda(converter, layer, name):
    return tf_keras.layers.Lambda(
        layer.function, output_shape=layer._output_shape, mask=layer.mask, arguments=layer.arguments,  # noqa: SLF001
        name=name or layer.name, trainable=layer.trainable,
    )


def _time_distributed(converter, layer, name):
    inner = converter.layer(layer.layer)
    return converter.from_config(layer, _Prebuilt(tf_keras.layers.TimeDistributed, inner), name, drop=("layer",))


def _rnn(converter, layer, name):
    cell = converter.layer(layer.cell)
    return converter.from_config(layer, _Prebuilt(tf_keras.layers.RNN, cell), name, drop=("cell",))


def _stacked_cells(converter, layer, name):
    cells = [converter.layer(cell) for cell in layer.cells]
    return converter.from_config(layer, _Prebuilt(tf_keras.layers.StackedRNNCells, cells), name, drop=("cells",))


def _bidirectional(converter, layer, name):
    """tf-keras names the wrapped layers "forward_<name>" / "backward_<name>" itself."""
    forward, backward = layer.forward_layer, layer.backward_layer
    tf_forward = converter.layer(forward, name=_strip(forward.name, "forward_"))
    tf_backward = None
    if not _mirrors(forward, backward):
        tf_backward = converter.layer(backward, name=_strip(backward.name, "backward_"))
    wrapped = _Prebuilt(tf_keras.layers.Bidirectional, tf_forward, backward_layer=tf_backward)
    return converter.from_config(layer, wrapped, name, drop=("layer", "backward_layer"))


def _strip(name, prefix):
    return name[len(prefix):] if name.startswith(prefix) else name


def _mirrors(forward, backward):
    """Whether `backward` is what Bidirectional derives from `forward` by itself (go_backwards flipped)."""
    if type(forward) is not type(backward) or forward.go_backwards == backward.go_backwards:
        return False
    ignore = ("name", "go_backwards", "zero_output_for_mask")
    f, b = forward.get_config(), backward.get_config()
    return {k: v for k, v in f.items() if k not in ignore} == {k: v for k, v in b.items() if k not in ignore}


class _Prebuilt:
    """``from_config`` for a wrapper whose wrapped layer(s) are already converted."""

    def __init__(self, tf_class, *args, **kwargs):
        self.tf_class, self.args, self.kwargs = tf_class, args, kwargs
        self.__name__ = tf_class.__name__

    def from_config(self, config):
        return self.tf_class(*self.args, **self.kwargs, **config)


_BUILDERS = {
    "Lambda": _lambda,
    "TimeDistributed": _time_distributed,
    "RNN": _rnn,
    "StackedRNNCells": _stacked_cells,
    "Bidirectional": _bidirectional,
}


# --------------------------------------------------------------------------------------------------
# Keras 3 operations (graph nodes without a layer)


def _is_tensor(x):
    from tf_keras.src.engine.keras_tensor import KerasTensor

    return isinstance(x, KerasTensor)


def _node_name(node):
    return node.operation.name


def _reshape_to_output(node, x):
    """`Reshape` to the node's (batch-preserving) output shape, or None when it cannot say."""
    out_shape = tuple(node.outputs[0].shape)
    target = [-1 if d is None else int(d) for d in out_shape[1:]]
    if target.count(-1) > 1 or x.shape[0] is not None or out_shape[0] is not None:
        return None
    return tf_keras.layers.Reshape(target, name=_node_name(node))(x)


def _axes(axis, rank):
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    return {a % rank for a in axes}


def _squeeze(node, x):
    axis = node.operation.axis
    if axis is not None and 0 not in _axes(axis, x.shape.rank):
        y = _reshape_to_output(node, x)
        if y is not None:
            return y
    return tf.squeeze(x, axis)


def _expand_dims(node, x):
    axis = node.operation.axis
    if 0 not in _axes(axis, x.shape.rank + 1):
        y = _reshape_to_output(node, x)
        if y is not None:
            return y
    return tf.expand_dims(x, axis)


def _reshape(node, x):
    newshape = list(node.operation.newshape)
    rest = newshape[1:]
    known = x.shape[1:].is_fully_defined() and -1 not in rest and None not in rest
    if known and newshape[0] in (-1, None) and math.prod(x.shape[1:]) == math.prod(rest):
        return tf_keras.layers.Reshape(rest, name=_node_name(node))(x)  # the leading -1 is the batch
    return tf.reshape(x, newshape)


def _transpose(node, x):
    axes = node.operation.axes
    if axes is not None and axes[0] == 0:
        return tf_keras.layers.Permute(tuple(axes[1:]), name=_node_name(node))(x)
    return tf.transpose(x, axes)


def _get_item(node, x, key):
    return x[key]


def _concatenate(node, xs):
    return tf_keras.layers.Concatenate(axis=node.operation.axis, name=_node_name(node))(list(xs))


def _activation_op(activation):
    def convert(node, x):
        return tf_keras.layers.Activation(activation, name=_node_name(node))(x)

    return convert


def _softmax(node, x):
    return tf_keras.layers.Softmax(axis=node.operation.axis, name=_node_name(node))(x)


def _binary(merge_layer, tf_op):
    """Between two tensors: the tf-keras merge layer; with a constant: the TF op (a float TFOpLambda)."""

    def convert(node, a, b):
        if merge_layer is not None and _is_tensor(a) and _is_tensor(b):
            return merge_layer(name=_node_name(node))([a, b])
        if _is_tensor(a) and _is_tensor(b):
            raise _unsupported_op(node, "between two tensors")
        return tf_op(a, b)

    return convert


#: Keras 3 operation class name -> converter(node, *mapped args) giving the tf-keras output.
_OPS = {
    "Squeeze": _squeeze,
    "ExpandDims": _expand_dims,
    "Reshape": _reshape,
    "Transpose": _transpose,
    "GetItem": _get_item,
    "Concatenate": _concatenate,
    "Add": _binary(tf_keras.layers.Add, tf.math.add),
    "Subtract": _binary(tf_keras.layers.Subtract, tf.math.subtract),
    "Multiply": _binary(tf_keras.layers.Multiply, tf.math.multiply),
    "Maximum": _binary(tf_keras.layers.Maximum, tf.math.maximum),
    "Minimum": _binary(tf_keras.layers.Minimum, tf.math.minimum),
    "Divide": _binary(None, tf.math.truediv),
    "TrueDivide": _binary(None, tf.math.truediv),
    "Negative": lambda node, x: tf.math.negative(x),
    "Relu": _activation_op("relu"),
    "Relu6": _activation_op("relu6"),
    "Sigmoid": _activation_op("sigmoid"),
    "Tanh": _activation_op("tanh"),
    "Softmax": _softmax,
}
SUPPORTED_OPS = frozenset(_OPS)


def _convert_op(node, args, kwargs):
    operation = node.operation
    convert = _OPS.get(type(operation).__name__)
    if convert is None or not type(operation).__module__.startswith("keras.src.ops"):
        raise _unsupported_op(node)
    return convert(node, *args, **kwargs)


def _unsupported_op(node, how=""):
    operation = node.operation
    sources = [t._keras_history.operation.name for t in node.input_tensors]  # noqa: SLF001
    where = f"applied to the output of {', '.join(repr(s) for s in sources)}" if sources else "without tensor inputs"
    return UnsupportedLayerError(
        f"Keras 3 operation '{operation.name}' ({_class_path(operation)}{', ' + how if how else ''}) {where} has "
        f"no tf-keras equivalent in lstm_transforms.to_tf_keras (supported: {', '.join(sorted(SUPPORTED_OPS))}). "
        "Wrap the computation in a keras.layers.Lambda (its function is reused as is) or in a custom layer "
        "with a registered tf-keras twin (lstm_transforms.register_keras3_layer)."
    )
