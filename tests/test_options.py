"""`QuantOptions`: validated once, and carried by the quantized cells and layers as `quant_*` keys."""

import pytest

import lstm_transforms as lt
from lstm_transforms._keras import keras

L = keras.layers

SAVED_KEYS = {  # the keys saved models carry: loading them must keep working
    "quant_mode": "full",
    "quant_activation_bits": 8,
    "quant_gate_bits": 16,
    "quant_state_bits": 16,
    "quant_cell_clip": 10.0,
    "quant_ema_decay": 0.99,
}


def test_defaults_and_config_keys():
    assert lt.QuantOptions().to_config() == SAVED_KEYS
    options = lt.QuantOptions(mode="weights", activation_bits=16, cell_clip=0)
    kwargs = {**options.to_config(), "units": 3}
    assert lt.QuantOptions.pop_from(kwargs) == options and kwargs == {"units": 3}
    assert not options.full and lt.QuantOptions().full


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "int8"}, r"mode must be 'full' or 'weights', got 'int8'"),
    ({"activation_bits": 1}, r"activation_bits must be in \[2, 16\], got 1"),
    ({"gate_bits": 17}, r"gate_bits must be in \[2, 16\], got 17"),
    ({"state_bits": 8.5}, r"state_bits must be in \[2, 16\], got 8.5"),
    ({"cell_clip": -0.5}, r"cell_clip must be >= 0, got -0.5"),
    ({"ema_decay": 0.0}, r"ema_decay must be in \(0, 1\), got 0.0"),
])
def test_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        lt.QuantOptions(**kwargs)
    with pytest.raises(ValueError, match=message):  # the same check for a cell built from a config
        lt.QuantizedLSTMCell(4, **lt.QuantOptions.pop_from({"quant_" + k: v for k, v in kwargs.items()}).to_config())


@pytest.mark.parametrize("cls, cell_cls", [
    (lt.QuantizedLSTM, lt.QuantizedLSTMCell),
    (lt.QuantizedGRU, lt.QuantizedGRUCell),
    (lt.QuantizedSimpleRNN, lt.QuantizedSimpleRNNCell),
])
def test_layers_and_cells_round_trip_their_options(cls, cell_cls):
    options = lt.QuantOptions(activation_bits=6, gate_bits=12, state_bits=14, cell_clip=4.0, ema_decay=0.9)
    layer = cls(5, return_sequences=True, **options.to_config())
    assert type(layer.cell) is cell_cls and layer.cell.options == options
    config = layer.get_config()
    assert {k: config[k] for k in SAVED_KEYS} == options.to_config()
    again = cls.from_config(config)
    assert again.cell.options == options and again.return_sequences
    cell = cell_cls.from_config(layer.cell.get_config())
    assert cell.options == options


def test_scheme_builds_its_options_once():
    scheme = lt.RNNQuantizeScheme(activation_bits=16, weights_only=True, cell_clip=0.0)
    assert scheme.options == lt.QuantOptions(mode="weights", activation_bits=16, cell_clip=0.0)
    assert scheme.get_config()["weights_only"] and scheme.get_config()["activation_bits"] == 16
