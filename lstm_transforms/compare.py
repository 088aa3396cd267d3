"""Where does the int8 flatbuffer depart from the QAT model? Per layer, in output LSBs.

`compare(qat_model, flatbuffer, data)` runs both on `data` (the flatbuffer in `tf.lite.Interpreter`
with `experimental_preserve_all_tensors=True`, state reset before every sequence), reads each Keras
layer's output from the QAT model and the corresponding tensor from the flatbuffer, and reports the
absolute difference in units of that tensor's int8 scale (1 LSB = one step of the deployed tensor):
mean, 99th percentile and max, plus the class agreement of the model outputs. Each layer's error is
given twice: end to end (errors of earlier layers included) and its own (the QAT layer fed the
flatbuffer's own input tensors), which singles out the layer where the flatbuffer departs.

How layers are matched to flatbuffer tensors, in this order:

1. A layer whose output is a model output: the flatbuffer's output tensor at the same position; the
   `QuantizeLayer` on a model input: that input if it is int8, else the QUANTIZE op's output.
2. By name: the converter names tensors after the ops that made them (`model/dense_1/MatMul;...`);
   the last tensor produced by an op whose name has a path segment equal to the layer's name (inside a
   quantize wrapper: the wrapped layer's name), with as many elements as the layer's output.
3. By its consumer: some tensors carry no layer name (the fused LSTM writes `tfl.unidirectional_sequence_lstm`,
   its last step `tfl.strided_slice`): then the tensor that the ops of the layer's consumer read, not
   made by those ops, with as many elements as the layer's output.

A stripped flatbuffer (`flatbuffer_size.strip_strings`) has no tensor names: only rule 1 applies, so
only the model inputs and outputs are compared (the other layers are listed as unmatched). Compare the unstripped
file: stripping changes no value, tensor indices stay the same.

The QAT model is run as it would be at inference (`training=False`): call `calibrate` (or train) first.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from lstm_transforms._keras import check_model, keras, tf

__all__ = ["compare", "plot", "CompareReport", "LayerError"]


@dataclasses.dataclass(frozen=True)
class LayerError:
    """The flatbuffer's tensor against the QAT model's layer output. Errors in LSBs of `scale`
    (None when the tensor is not quantized: then in the tensor's own units).

    `mean` / `p99` / `max`: against the QAT model run end to end (errors of earlier layers included).
    `own_*`: against the QAT layer fed the flatbuffer's own input tensors, i.e. the error this layer
    adds by itself (None where an input tensor was not matched, or for the input `QuantizeLayer`).
    """

    layer: str
    class_name: str
    tensor: str
    tensor_index: int
    scale: float | None
    mean: float
    p99: float
    max: float
    how: str  # "output", "input", "name" or "consumer": which matching rule found the tensor
    own_mean: float | None = None
    own_p99: float | None = None
    own_max: float | None = None


@dataclasses.dataclass(frozen=True)
class CompareReport:
    """`layers`: a `LayerError` per matched layer, in graph order; `unmatched`: {layer: why}.
    `agreement`: share of samples (and positions) where both predict the same class (argmax of the
    first output); `samples`: how many were run."""

    layers: tuple
    unmatched: dict
    agreement: float
    samples: int

    def first_divergent(self, p99_lsb=2.0):
        """The first layer, in graph order, that by itself adds more than `p99_lsb` (p99 of its own
        error; the end-to-end p99 where the own error is unknown); None if none does.

        End-to-end errors grow downstream (a Dense over 464 inputs that each differ by one LSB can differ
        by tens of its own LSBs), so the own error is what singles out the layer that departs from QAT.
        """
        for row in self.layers:
            if (row.own_p99 if row.own_p99 is not None else row.p99) > p99_lsb:
                return row
        return None

    def summary(self):
        width = max([len(r.layer) for r in self.layers] + [len(k) for k in self.unmatched] + [5])
        lines = [f"{'':{width}}  {'':18} {'end to end (LSB)':^23}  {'own (LSB)':^23}",
                 f"{'layer':{width}}  {'class':18} {'mean':>7} {'p99':>7} {'max':>7}  {'mean':>7} {'p99':>7} "
                 f"{'max':>7}  tensor"]

        def own(value):
            return f"{value:7.2f}" if value is not None else f"{'-':>7}"

        for r in self.layers:
            unit = "" if r.scale is not None else " (float units)"
            lines.append(f"{r.layer:{width}}  {r.class_name[:18]:18} {r.mean:7.2f} {r.p99:7.2f} {r.max:7.2f}  "
                         f"{own(r.own_mean)} {own(r.own_p99)} {own(r.own_max)}  "
                         f"#{r.tensor_index} {r.tensor[:40]}{unit}")
        for name, why in self.unmatched.items():
            lines.append(f"{name:{width}}  not compared: {why}")
        lines.append(f"class agreement: {100 * self.agreement:.2f}% of {self.samples} samples")
        return "\n".join(lines)


def _is_wrapper(layer):
    from tensorflow_model_optimization.python.core.quantization.keras import quantize_wrapper

    return isinstance(layer, quantize_wrapper.QuantizeWrapper)


def _is_quantize_layer(layer):
    from tensorflow_model_optimization.python.core.quantization.keras import quantize_layer

    return isinstance(layer, quantize_layer.QuantizeLayer)


def _flatbuffer_name(layer):
    return layer.layer.name if _is_wrapper(layer) else layer.name


def _class_name(layer):
    return type(layer.layer if _is_wrapper(layer) else layer).__name__


def _layer_nodes(model):
    """(layer, output tensors, input layers, input tensors) for every layer call of `model`'s own graph, in graph order.

    Taken from the model's nodes (not `layer.output`): a layer of a QAT model may also keep nodes of
    the graphs it was cloned from, and tensors from those would not connect to `model.inputs`.
    """
    order = {id(layer): i for i, layer in enumerate(model.layers)}
    found = []
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in sorted(model._nodes_by_depth[depth], key=lambda n: order.get(id(n.layer), -1)):
            if isinstance(node.layer, keras.layers.InputLayer):
                continue
            inputs = tf.nest.flatten(node.input_tensors)
            parents = [t._keras_history.layer for t in inputs if getattr(t, "_keras_history", None) is not None]
            found.append((node.layer, tf.nest.flatten(node.outputs), parents, inputs))
    return found


class _Flatbuffer:
    """The flatbuffer's ops and tensors, and a way to run it keeping every intermediate tensor."""

    def __init__(self, flatbuffer):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated")
            self.it = tf.lite.Interpreter(
                model_content=bytes(flatbuffer), experimental_preserve_all_tensors=True,
                experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        self.it.allocate_tensors()
        self.details = {d["index"]: d for d in self.it.get_tensor_details()}
        self.ops = self.it._get_ops_details()
        self.inputs = self.it.get_input_details()
        self.outputs = self.it.get_output_details()
        self.has_names = any(d["name"] for d in self.details.values())
        self.producer = {}
        for k, op in enumerate(self.ops):
            for t in op["outputs"]:
                self.producer[int(t)] = k

    def size(self, index):
        return int(np.prod(self.details[index]["shape"]))

    def scale(self, index):
        scale, _ = self.details[index]["quantization"]
        return float(scale) if scale else None

    def by_name(self, name, size):
        """The last op-made tensor whose name has `name` as a path segment, with `size` elements."""
        best = None
        for index, k in self.producer.items():
            segments = {s for part in self.details[index]["name"].split(";") for s in part.split("/")}
            if name in segments and self.size(index) == size and (best is None or k >= self.producer[best]):
                best = index
        return best

    def quantized_input(self, position):
        """The model input at `position` if it is integer, else the tensor the op reading it makes (QUANTIZE)."""
        detail = self.inputs[position]
        if np.issubdtype(np.dtype(detail["dtype"]), np.integer):
            return detail["index"]
        for op in self.ops:
            if op["op_name"] == "QUANTIZE" and detail["index"] in [int(t) for t in op["inputs"]]:
                return int(op["outputs"][0])
        return None

    def read_by(self, name, size):
        """The tensor of `size` elements that ops named after `name` read without making it themselves."""
        region = [k for k, op in enumerate(self.ops)
                  if any(name in {s for part in self.details[int(t)]["name"].split(";") for s in part.split("/")}
                         for t in op["outputs"])]
        made = {int(t) for k in region for t in self.ops[k]["outputs"]}
        graph_inputs = {d["index"] for d in self.inputs}
        read = {int(t) for k in region for t in self.ops[k]["inputs"] if int(t) >= 0}
        external = [t for t in read - made if (t in self.producer or t in graph_inputs) and self.size(t) == size]
        return external[0] if len(external) == 1 else None

    def run(self, samples, indices):
        """{tensor index: float64 array (n, elements)} for `indices`, one sample at a time, state reset."""
        values = {i: [] for i in indices}
        for sample in samples:
            self.it.reset_all_variables()
            for a, d in zip(sample, self.inputs):
                self.it.set_tensor(d["index"], _quantize(a[None], d))
            self.it.invoke()
            for i in indices:
                values[i].append(self._dequantized(i).reshape(-1))
        return {i: np.stack(v) for i, v in values.items()}

    def _dequantized(self, index):
        value = self.it.get_tensor(index)
        scale, zero = self.details[index]["quantization"]
        if not scale:
            return value.astype(np.float64)
        return (value.astype(np.float64) - zero) * scale


def _quantize(x, detail):
    dtype = np.dtype(detail["dtype"])
    scale, zero = detail["quantization"]
    if np.issubdtype(dtype, np.integer) and scale:
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)
    return x.astype(dtype)


def _match(model, nodes, fb):
    """{layer name: (tensor index, rule)} and {layer name: why not} for the layer calls in `nodes`."""
    output_ids = [id(t) for t in model.outputs]
    consumers = {}
    for layer, _, parents, _ in nodes:
        for p in parents:
            consumers.setdefault(id(p), []).append(layer)
    matched, unmatched = {}, {}
    input_ids = [id(t) for t in model.inputs]
    for layer, outputs, _, inputs in nodes:
        size = int(np.prod(outputs[0].shape[1:]))
        name = _flatbuffer_name(layer)
        if id(outputs[0]) in output_ids:
            matched[layer.name] = (fb.outputs[output_ids.index(id(outputs[0]))]["index"], "output")
            continue
        if _is_quantize_layer(layer) and len(inputs) == 1 and id(inputs[0]) in input_ids:
            index = fb.quantized_input(input_ids.index(id(inputs[0])))
            if index is not None:
                matched[layer.name] = (index, "input")
                continue
        index = fb.by_name(name, size)
        if index is not None:
            matched[layer.name] = (index, "name")
            continue
        for consumer in consumers.get(id(layer), []):
            index = fb.read_by(_flatbuffer_name(consumer), size)
            if index is not None:
                matched[layer.name] = (index, "consumer")
                break
        else:
            hint = "" if fb.has_names else " (the flatbuffer is stripped of tensor names: compare the unstripped one)"
            unmatched[layer.name] = f"no tensor of {size} elements named after '{name}' or read by its consumer{hint}"
    return matched, unmatched


def _as_samples(data, n_inputs, max_samples):
    arrays = data if isinstance(data, (list, tuple)) else [data]
    arrays = [np.asarray(a, np.float32) for a in arrays]
    if len(arrays) != n_inputs:
        raise ValueError(f"data has {len(arrays)} arrays; the model has {n_inputs} inputs")
    if max_samples is not None:
        arrays = [a[:max_samples] for a in arrays]
    return arrays


def _lsb_stats(tfl_value, qat_value, scale):
    tfl_value = np.asarray(tfl_value, np.float64)
    diff = np.abs(tfl_value - np.asarray(qat_value, np.float64).reshape(tfl_value.shape))
    diff = diff / scale if scale else diff
    return float(diff.mean()), float(np.percentile(diff, 99)), float(diff.max())


def _own_output(model, layer, inputs, arrays, matched, tfl_values):
    """The QAT layer's output when fed the flatbuffer's own input tensors (None if one is not matched)."""
    if _is_quantize_layer(layer):
        return None
    fed, input_ids = [], [id(t) for t in model.inputs]
    for tensor in inputs:
        if id(tensor) in input_ids:
            fed.append(arrays[input_ids.index(id(tensor))])
            continue
        source = tensor._keras_history.layer.name
        if source not in matched:
            return None
        value = tfl_values[matched[source][0]]
        fed.append(value.reshape((len(value),) + tuple(tensor.shape[1:])).astype(np.float32))
    try:
        out = layer(fed if len(fed) > 1 else fed[0], training=False)
    except Exception:  # noqa: BLE001 - a layer that cannot run alone: no own error, the total still stands
        return None
    out = tf.nest.flatten(out)[0]
    return np.asarray(out, np.float64).reshape(len(fed[0]), -1)


def compare(qat_model, flatbuffer, data, *, max_samples=None, plot=None):
    """Per layer, the flatbuffer's tensor against the QAT model's output, in the tensor's int8 LSBs.

    `data`: an array with samples on axis 0 (or a list, one per model input); `max_samples` caps it.
    Returns a `CompareReport` (`print(report.summary())`); `report.first_divergent()` names the first
    layer that departs from QAT. `plot="out.png"` also draws it (needs matplotlib: the `plot` extra).
    """
    check_model(qat_model, "qat_model")
    for tensor in qat_model.inputs:
        if None in tuple(tensor.shape[1:]):
            raise ValueError(
                f"compare() needs fixed input shapes: '{qat_model.name}' input '{tensor.name}' has shape "
                f"{tuple(tensor.shape)}. Build the same model with a fixed shape (e.g. Input((T, F))), copy the "
                "weights with set_weights, and export and compare that one.")
    arrays = _as_samples(data, len(qat_model.inputs), max_samples)
    if not len(arrays[0]):
        raise ValueError("data is empty: give at least one sample")
    fb = _Flatbuffer(flatbuffer)
    if len(fb.inputs) != len(arrays):
        raise ValueError(f"the flatbuffer has {len(fb.inputs)} inputs; the QAT model has {len(arrays)}")
    nodes = _layer_nodes(qat_model)
    matched, unmatched = _match(qat_model, nodes, fb)
    tensors = [outputs[0] for layer, outputs, _, _ in nodes if layer.name in matched]
    probe = keras.Model(qat_model.inputs, tensors)
    qat_values = probe.predict(arrays if len(arrays) > 1 else arrays[0], batch_size=64, verbose=0)
    qat_values = qat_values if isinstance(qat_values, list) else [qat_values]
    indices = sorted({index for index, _ in matched.values()} | {d["index"] for d in fb.outputs})
    samples = [[a[i] for a in arrays] for i in range(len(arrays[0]))]
    tfl_values = fb.run(samples, indices)
    rows = []
    for (layer, outputs, _, inputs), qat_value in zip([n for n in nodes if n[0].name in matched], qat_values):
        index, how = matched[layer.name]
        scale = fb.scale(index)
        total = _lsb_stats(tfl_values[index], qat_value, scale)
        own = _own_output(qat_model, layer, inputs, arrays, matched, tfl_values)
        own = _lsb_stats(tfl_values[index], own, scale) if own is not None else (None, None, None)
        rows.append(LayerError(layer.name, _class_name(layer), fb.details[index]["name"], index, scale, *total, how,
                               *own))
    output_index = [id(t) for t in tensors].index(id(qat_model.outputs[0]))
    qat_first = np.asarray(qat_values[output_index])
    tfl_first = tfl_values[fb.outputs[0]["index"]].reshape(qat_first.shape)
    agreement = float(np.mean(np.argmax(qat_first, -1) == np.argmax(tfl_first, -1)))
    report = CompareReport(tuple(rows), unmatched, agreement, len(samples))
    if plot is not None:
        _draw(report, plot)
    return report


def plot(report, path):
    """Draw `report` (mean / p99 / max error per layer, in LSBs, log scale) to an image file at `path`."""
    return _draw(report, path)


def _draw(report, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("plotting needs matplotlib: pip install lstm-transforms[plot]") from e
    layers = list(report.layers)
    x = np.arange(len(layers))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(layers) + 2), 4.5))
    width = 0.2
    floor = 1e-3
    bars = (("mean", "mean"), ("p99", "p99"), ("max", "max"), ("own p99 (layer fed the flatbuffer's input)", "own_p99"))
    for k, (label, key) in enumerate(bars):
        values = [getattr(r, key) for r in layers]
        ax.bar(x + (k - 1.5) * width, [max(v if v is not None else 0.0, floor) for v in values], width, label=label)
    ax.set_yscale("log")
    ax.axhline(1.0, color="gray", linewidth=0.8, linestyle="--")
    ax.set_xticks(x)
    ax.set_xticklabels([r.layer for r in layers], rotation=40, ha="right")
    ax.set_ylabel("|flatbuffer - QAT| in output LSBs")
    ax.set_title(f"flatbuffer vs QAT per layer; class agreement {100 * report.agreement:.2f}% "
                 f"({report.samples} samples)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
