"""Every recurrent layer form quantizes; each test fails if the layer stays in float."""

import numpy as np
import pytest

import lstm_transforms as lt
from lstm_transforms._keras import keras
from tests.helpers import assert_recurrent_quantized, calibrate

L = keras.layers
T, F = 6, 5


def _x(n=8, t=T, f=F):
    return np.random.default_rng(1).standard_normal((n, t, f)).astype("float32")


def _quantize_and_check(model, x, expected_layers=1, tolerance=0.15):
    float_y = model(x, training=False)
    qat = lt.quantize_model(model)
    calibrate(qat, x)
    assert_recurrent_quantized(qat, x, expected_layers)
    ys = float_y if isinstance(float_y, list) else [float_y]
    qs = qat(x, training=False)
    qs = qs if isinstance(qs, list) else [qs]
    for a, b in zip(ys, qs):
        assert np.max(np.abs(np.asarray(a) - np.asarray(b))) < tolerance
    return qat


def _functional(layer_fn, t=T):
    inputs = keras.Input((t, F))
    return keras.Model(inputs, layer_fn(inputs))


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: L.LSTM(8, return_sequences=True), id="lstm"),
        pytest.param(lambda: L.GRU(8, reset_after=True), id="gru-reset_after"),
        pytest.param(lambda: L.GRU(8, reset_after=False, return_sequences=True), id="gru-reset_before"),
        pytest.param(lambda: L.SimpleRNN(8), id="simplernn-tanh"),
        pytest.param(lambda: L.SimpleRNN(8, activation="relu"), id="simplernn-relu"),
        pytest.param(lambda: L.RNN(L.LSTMCell(8)), id="rnn-lstmcell"),
        pytest.param(lambda: L.RNN(L.GRUCell(8)), id="rnn-grucell"),
        pytest.param(lambda: L.RNN(L.SimpleRNNCell(8), return_sequences=True), id="rnn-simplernncell"),
        pytest.param(
            lambda: L.RNN(L.StackedRNNCells([L.LSTMCell(8), L.GRUCell(6), L.SimpleRNNCell(4)])), id="stacked-mixed"
        ),
        pytest.param(lambda: L.LSTM(8, go_backwards=True), id="lstm-go_backwards"),
    ],
)
def test_single_recurrent_layer(make):
    _quantize_and_check(_functional(lambda x: make()(x)), _x())


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "ave", "mul"])
@pytest.mark.parametrize("return_sequences", [True, False])
def test_bidirectional(merge_mode, return_sequences):
    model = _functional(lambda x: L.Bidirectional(L.LSTM(6, return_sequences=return_sequences), merge_mode=merge_mode)(x))
    qat = _quantize_and_check(model, _x())
    assert type(qat.layers[-1].layer).__name__ == "Bidirectional"


def test_bidirectional_gru():
    _quantize_and_check(_functional(lambda x: L.Bidirectional(L.GRU(6))(x)), _x())


def test_return_state_used_downstream():
    inputs = keras.Input((T, F))
    seq, h, c = L.LSTM(8, return_sequences=True, return_state=True)(inputs)
    decoded = L.GRU(8)(seq, initial_state=h)
    model = keras.Model(inputs, L.Dense(3)(L.Concatenate()([decoded, c])))
    _quantize_and_check(model, _x(), expected_layers=2)


def test_masking_with_embedding():
    inputs = keras.Input((None,), dtype="int32")
    embedded = L.Embedding(30, F, mask_zero=True)(inputs)
    model = keras.Model(inputs, L.LSTM(8)(embedded))
    x = np.random.default_rng(2).integers(1, 30, (8, 7))
    x[:, :3] = 0  # pre-padding
    qat = lt.quantize_model(model)
    calibrate(qat, x)
    assert_recurrent_quantized(qat, x)
    # Masked steps are skipped: padded and unpadded sequences agree to a few int8 steps of h
    # (float round-off can flip a rounding), and both agree with the float model.
    padded, unpadded = qat(x, training=False).numpy(), qat(x[:, 3:], training=False).numpy()
    np.testing.assert_allclose(padded, unpadded, atol=0.01)
    np.testing.assert_allclose(padded, model(x).numpy(), atol=0.05)


def test_none_time_dimension():
    model = _functional(lambda x: L.GRU(8)(x), t=None)
    qat = _quantize_and_check(model, _x())
    assert qat(_x(t=11), training=False).shape == (8, 8)


def test_shared_layer_two_inputs():
    a, b = keras.Input((T, F)), keras.Input((T, F))
    shared = L.LSTM(8)
    model = keras.Model([a, b], L.Concatenate()([shared(a), shared(b)]))
    x = [_x(), _x()[::-1].copy()]
    qat = lt.quantize_model(model)
    calibrate(qat, x)
    assert_recurrent_quantized(qat, x)


def test_stacked_layers_sequential():
    model = keras.Sequential(
        [keras.Input((T, F)), L.LSTM(8, return_sequences=True), L.GRU(8, return_sequences=True), L.SimpleRNN(4), L.Dense(2)]
    )
    _quantize_and_check(model, _x(), expected_layers=3)


def test_time_distributed_dense_after_recurrent():
    model = _functional(lambda x: L.TimeDistributed(L.Dense(3))(L.LSTM(8, return_sequences=True)(x)))
    qat = _quantize_and_check(model, _x())
    td = qat.layers[-1]
    assert "QuantizeWrapper" in type(td).__name__ and isinstance(td.layer, L.TimeDistributed)
    assert td._weight_vars, "TimeDistributed(Dense) kernel is not quantized"


def test_qat_model_trains_and_loss_falls():
    x = _x(64)
    y = (x.sum(axis=(1, 2)) > 0).astype("float32")
    model = _functional(lambda t: L.Dense(1, activation="sigmoid")(L.LSTM(8)(t)))
    qat = lt.quantize_model(model)
    qat.compile(keras.optimizers.Adam(0.02), "binary_crossentropy")
    history = qat.fit(x, y, epochs=8, batch_size=16, verbose=0).history["loss"]
    assert history[-1] < history[0] * 0.9
