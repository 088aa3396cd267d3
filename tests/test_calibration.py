"""`lstm_transforms.calibrate`: ranges from data (min / max), nothing else changed."""

import numpy as np
import pytest

import lstm_transforms as lt
from lstm_transforms._keras import keras, tf
from lstm_transforms.walk import cells_of

L = keras.layers
T, F = 8, 5


def _model():
    inputs = keras.Input((T, F))
    x = L.Conv1D(6, 3, padding="same", activation="relu", name="front")(inputs)
    x = L.BatchNormalization(name="bn")(x)
    x = L.LSTM(8, return_sequences=True, dropout=0.2, name="lstm")(x)
    x = L.Dropout(0.3)(L.Flatten()(x))
    return keras.Model(inputs, L.Dense(3, name="head")(x))


def _data(n=96):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((n, T, F)) * 3.0).astype("float32")


def _var(model, suffix):
    (v,) = [w for w in model.weights if w.name.endswith(suffix)]
    return float(v.numpy())


def test_ranges_are_the_extremes_of_the_data_and_nothing_else_changes():
    model, x = _model(), _data()
    bn = model.get_layer("bn")
    bn.set_weights([w + 0.5 for w in bn.get_weights()])  # non-trivial moving statistics
    qat = lt.quantize_model(model)
    trainable_before = [w.numpy().copy() for w in qat.trainable_weights]
    bn_stats_before = [w.numpy().copy() for w in qat.weights if "moving_" in w.name]

    assert lt.calibrate(qat, x, batch_size=32) is qat

    # tfmot's Conv1D ReLU output range: the float layer's extremes (it sees the 8-bit input).
    front = keras.Model(model.input, model.get_layer("front").output)(x).numpy()
    assert abs(front.max() - 6.0) > 1.0  # far from tfmot's initial range [-6, 6]: the range must have learned
    assert _var(qat, "front/post_activation_max:0") == pytest.approx(front.max(), rel=0.03)
    assert _var(qat, "front/post_activation_min:0") == 0.0
    # The standalone BatchNormalization output range: its inference-mode output, not batch statistics.
    bn_out = keras.Model(model.input, bn.output)(x, training=False).numpy()
    assert _var(qat, "bn/output_max:0") == pytest.approx(bn_out.max(), rel=0.03)
    assert _var(qat, "bn/output_min:0") == pytest.approx(bn_out.min(), rel=0.03)
    # The LSTM output range: extremes of h over every step and sample.
    h = keras.Model(model.input, model.get_layer("lstm").output)(x, training=False).numpy()
    (cell,) = cells_of(qat.get_layer("quant_lstm").layer)
    assert float(cell.quant_output_max.numpy()) == pytest.approx(h.max(), abs=0.02)
    assert float(cell.quant_output_min.numpy()) == pytest.approx(h.min(), abs=0.02)

    for a, w in zip(trainable_before, qat.trainable_weights):
        np.testing.assert_array_equal(a, w.numpy())
    for a, b in zip(bn_stats_before, [w.numpy() for w in qat.weights if "moving_" in w.name]):
        np.testing.assert_array_equal(a, b)
    # Dropout and BatchNormalization settings are restored.
    assert qat.get_layer("quant_bn").layer.trainable
    assert cell.dropout == pytest.approx(0.2)


def test_calibration_is_deterministic_and_brings_qat_close_to_float():
    model, x = _model(), _data()
    float_y = model(x, training=False).numpy()
    qat = lt.quantize_model(model)
    qat.get_layer("quantize_layer")(x, training=True)  # tfmot's input range starts at [0, 0]
    uncalibrated = np.abs(qat(x, training=False).numpy() - float_y).max()
    lt.calibrate(qat, x)
    ranges = [w.numpy().copy() for w in qat.weights if w.shape.rank == 0]
    calibrated = np.abs(qat(x, training=False).numpy() - float_y).max()
    lt.calibrate(qat, x)  # no dropout noise: the same ranges again (up to the quantized inputs they saw)
    for a, w in zip(ranges, [w for w in qat.weights if w.shape.rank == 0]):
        np.testing.assert_allclose(a, w.numpy(), rtol=1e-2)
    scale = np.abs(float_y).max()
    assert calibrated < 0.05 * scale, (calibrated, scale)
    assert calibrated < uncalibrated, (calibrated, uncalibrated)


def test_fine_tuning_continues_with_moving_averages():
    model, x = _model(), _data()
    qat = lt.quantize_model(model)
    lt.calibrate(qat, x)
    (cell,) = cells_of(qat.get_layer("quant_lstm").layer)
    before = float(cell.quant_output_max.numpy())
    qat.compile("adam", "mse")
    qat.train_on_batch(x * 0.0, np.zeros((len(x), 3), "float32"))  # all-zero batch: range shrinks by EMA only
    after = float(cell.quant_output_max.numpy())
    assert 0.9 * before < after < before


def test_bad_arguments():
    qat = lt.quantize_model(_model())
    with pytest.raises(ValueError, match="batch_size and passes must be >= 1"):
        lt.calibrate(qat, _data(), batch_size=0)
    with pytest.raises(ValueError, match="sample shape"):
        lt.calibrate(qat, np.zeros((4, T + 1, F), "float32"))
    with pytest.raises(ValueError, match="only tf-keras functional and Sequential"):
        lt.calibrate(None, _data())


# --- Every recurrent kind -------------------------------------------------------------------------


class _CellStateProbe(L.LSTMCell):
    """An LSTMCell whose output is its cell state c (to read c at every step from a float RNN)."""

    def call(self, inputs, states, training=None):
        _, (h, c) = super().call(inputs, states, training=training)
        return c, [h, c]


def _sequences(rnn, x):
    """The float h sequence (and c for LSTM cells) of every cell of a float RNN layer on input `x`."""
    cells = rnn.cell.cells if isinstance(rnn.cell, L.StackedRNNCells) else [rnn.cell]
    found = []
    for cell in cells:
        weights = cell.get_weights()
        probes = {"output": type(cell).from_config(cell.get_config())}
        if isinstance(cell, L.LSTMCell):
            probes["cell_state"] = _CellStateProbe.from_config(cell.get_config())
        values = {}
        for key, probe in probes.items():
            layer = L.RNN(probe, return_sequences=True, go_backwards=rnn.go_backwards)
            layer(x[:1])
            probe.set_weights(weights)
            values[key] = layer(x).numpy()
        found.append(values)
        x = values["output"] if not rnn.go_backwards else values["output"][:, ::-1]
    return found


def _float_cell_sequences(layer, x):
    if isinstance(layer, L.Bidirectional):
        return _sequences(layer.forward_layer, x) + _sequences(layer.backward_layer, x)
    return _sequences(layer, x)


_KINDS = {
    "lstm": lambda: L.LSTM(6, return_sequences=True, name="rnn"),
    "gru": lambda: L.GRU(6, return_sequences=True, name="rnn"),
    "simplernn": lambda: L.SimpleRNN(6, return_sequences=True, name="rnn"),
    "rnn-lstmcell": lambda: L.RNN(L.LSTMCell(6), return_sequences=True, name="rnn"),
    "rnn-stacked": lambda: L.RNN(L.StackedRNNCells([L.LSTMCell(6), L.GRUCell(5), L.SimpleRNNCell(4)]),
                                 return_sequences=True, name="rnn"),
    **{
        f"bidirectional-{mode}": (lambda mode=mode: L.Bidirectional(L.LSTM(5, return_sequences=True),
                                                                    merge_mode=mode, name="rnn"))
        for mode in ("concat", "sum", "ave", "mul", None)
    },
    "bidirectional-gru": lambda: L.Bidirectional(L.GRU(5, return_sequences=True), name="rnn"),
}


def _kind_model(make):
    inputs = keras.Input((T, F))
    h = make()(inputs)
    if isinstance(h, list):  # Bidirectional(merge_mode=None)
        h = L.Concatenate()(h)
    return keras.Model(inputs, L.Dense(3, name="head")(L.Flatten()(h)))


def _generator(x):
    def samples():
        for k in range(len(x)):
            yield x[k]

    return samples


@pytest.mark.parametrize("kind", list(_KINDS))
def test_every_recurrent_kind_gets_the_extremes_of_the_data(kind):
    keras.utils.set_random_seed(0)
    model, x = _kind_model(_KINDS[kind]), _data(64)
    qat = lt.quantize_model(model)
    lt.calibrate(qat, _generator(x), batch_size=16, passes=2)

    layer = model.get_layer("rnn")
    expected = _float_cell_sequences(layer, x)
    cells = cells_of(qat.get_layer("quant_rnn").layer)
    assert len(cells) == len(expected) >= 1
    for k, (cell, sequences) in enumerate(zip(cells, expected)):
        h = sequences["output"]
        # A GRU runs its deployed int8 step in QAT (every intermediate int8), so its h, and the input
        # of a cell stacked on it, drift from float by several int8 steps over the sequence.
        tolerance = 0.12 if any(isinstance(c, lt.QuantizedGRUCell) for c in cells[: k + 1]) else 0.03
        assert float(cell.quant_output_min.numpy()) == pytest.approx(h.min(), abs=tolerance), cell.name
        assert float(cell.quant_output_max.numpy()) == pytest.approx(h.max(), abs=tolerance), cell.name
        if "cell_state" in sequences:
            c = np.abs(sequences["cell_state"]).max()
            assert c > 1.0  # not the initial clip value 10 either
            assert float(cell.quant_cell_max_abs.numpy()) == pytest.approx(c, rel=0.03), cell.name
    head = model(x).numpy()
    assert _var(qat, "quant_head/post_activation_max:0") == pytest.approx(head.max(), rel=0.05, abs=0.02)
    assert _var(qat, "quant_head/post_activation_min:0") == pytest.approx(head.min(), rel=0.05, abs=0.02)


def test_arrays_generators_and_datasets_give_the_same_ranges():
    model, x = _kind_model(_KINDS["bidirectional-concat"]), _data(40)
    y = np.zeros(len(x), "int32")
    sources = {
        "array": x,
        "generator": _generator(x),
        "dataset-xy": tf.data.Dataset.from_tensor_slices((x, y)).batch(8),
    }
    ranges = {}
    for name, source in sources.items():
        qat = lt.quantize_model(model)
        lt.calibrate(qat, source, batch_size=8)
        ranges[name] = [float(w.numpy()) for w in qat.weights if w.shape.rank == 0]
    assert len(ranges["array"]) > 10
    assert ranges["array"] == ranges["generator"] == ranges["dataset-xy"]


@pytest.mark.parametrize("reset_after", [True, False])
def test_the_ranges_of_a_gru_step_are_the_extremes_of_the_data(reset_after):
    """Every intermediate of the deployed GRU step: min / max over every sample and step (input
    projections checked against numpy; each range observed, none left at its initial [-6, 6])."""
    x = _data(64)
    inputs = keras.Input((T, F))
    model = keras.Model(inputs, L.GRU(6, return_sequences=True, reset_after=reset_after, name="gru")(inputs))
    qat = lt.quantize_model(model)
    lt.calibrate(qat, x, batch_size=16)
    wrapper = qat.get_layer("quant_gru")
    (cell,) = cells_of(wrapper.layer)
    quantized_input = qat.layers[1](x, training=False).numpy()  # the model input as QAT quantizes it
    kernel = [w for w in wrapper.weights if w.name.endswith("gru_cell/kernel:0")][0].numpy()
    kernel = lt.PerGateWeightQuantizer(3)(tf.constant(kernel), False, {}).numpy()
    bias = cell.bias.numpy()
    projection = quantized_input @ kernel + (bias[0] if reset_after else bias)
    for gate, block in zip("zrh", np.split(projection, 3, axis=-1)):
        lo, hi = (float(v.numpy()) for v in cell.learned_range(f"input_{gate}"))
        assert (lo, hi) == pytest.approx((block.min(), block.max()), abs=1e-4), gate
    for point in cell.learned_points:
        lo, hi = (float(v.numpy()) for v in cell.learned_range(point))
        assert lo < hi and lo != -6.0 and hi != 6.0, point


@pytest.mark.parametrize("layer", [L.GRU, L.SimpleRNN])
def test_one_batch_of_small_inputs_gives_every_point_its_range(layer):
    """Projections of about 0.01 round to 0 on a point's initial [-6, 6] grid: if calibration quantized on
    those grids, every point after them would see zeros and keep a [0, 0] range (which the converter
    cannot quantize). Calibration observes each point's own values instead."""
    keras.utils.set_random_seed(0)
    x = 0.001 * _data(16)
    inputs = keras.Input((T, F))
    model = keras.Model(inputs, layer(4, name="rnn")(inputs))
    qat = lt.quantize_model(model)
    lt.calibrate(qat, x)  # a single batch
    (cell,) = cells_of(qat.get_layer("quant_rnn").layer)
    widths = {point: float(hi.numpy() - lo.numpy()) for point, (lo, hi) in
              ((p, cell.learned_range(p)) for p in cell.learned_points)}
    assert len(widths) >= 3 and all(width > 1e-4 for width in widths.values()), widths
