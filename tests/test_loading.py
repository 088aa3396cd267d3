"""`lstm_transforms.load_model`: `.keras` / `.h5` files of either Keras, QAT models, safe mode, the CLI."""

from __future__ import annotations

import re
import zipfile

import keras
import numpy as np
import pytest
import tf_keras

import lstm_transforms as lt
from lstm_transforms import cli
from lstm_transforms.loading import saved_by_keras3
from tests.helpers import calibrate

T, F = 6, 4


def _x(n=4):
    return np.random.default_rng(0).uniform(-1, 1, (n, T, F)).astype("float32")


def _keras3_model(with_lambda=False, with_ops=True):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((T, F), name="x")
    x = keras.layers.Conv1D(4, 3, padding="same", activation="relu", name="conv")(inputs)
    if with_lambda:
        x = keras.layers.Lambda(lambda q: q * 2.0, name="double")(x)
    x = keras.layers.Bidirectional(keras.layers.LSTM(3, return_sequences=True), name="bidi")(x)
    if with_ops:  # Keras 3 itself cannot load operations from an .h5 file ("Unknown layer: 'ExpandDims'")
        x = keras.ops.squeeze(keras.ops.expand_dims(x, -1), -1)
    x = keras.layers.GRU(3, name="gru")(x)
    return keras.Model(inputs, keras.layers.Dense(2, name="out")(x))


def _tf_keras_model(with_lambda=False):
    inputs = tf_keras.Input((T, F), name="x")
    x = tf_keras.layers.Dense(4)(inputs)
    if with_lambda:
        x = tf_keras.layers.Lambda(lambda q: q * 2.0, name="double")(x)
    return tf_keras.Model(inputs, tf_keras.layers.Dense(2)(tf_keras.layers.LSTM(3)(x)))


def _assert_loaded(model, loaded):
    assert isinstance(loaded, tf_keras.Model)
    assert [layer.name for layer in model.layers] == [layer.name for layer in loaded.layers]
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(loaded(_x()).numpy(), np.asarray(model(_x())), atol=1e-6)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras3_file(tmp_path, suffix):
    model = _keras3_model(with_ops=suffix == ".keras")
    path = tmp_path / f"k3{suffix}"
    model.save(path)
    assert saved_by_keras3(path)
    loaded = lt.load_model(path)
    assert [type(layer).__module__.split(".")[0] for layer in loaded.layers] == ["tf_keras"] * len(loaded.layers)
    np.testing.assert_allclose(loaded(_x()).numpy(), np.asarray(model(_x())), atol=1e-6)
    for layer in model.layers:
        for a, b in zip(layer.get_weights(), loaded.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_tf_keras_file(tmp_path, suffix):
    model = _tf_keras_model()
    path = str(tmp_path / f"tk{suffix}")
    model.save(path)
    assert not saved_by_keras3(path)
    _assert_loaded(model, lt.load_model(path))


def test_qat_h5_file(tmp_path):
    qat = lt.quantize_model(_tf_keras_model())
    calibrate(qat, _x(16))
    path = str(tmp_path / "qat.h5")
    qat.save(path)
    loaded = lt.load_model(path)
    assert len(loaded.get_weights()) == len(qat.get_weights())
    for a, b in zip(qat.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded(_x()).numpy(), qat(_x()).numpy())


def test_qat_of_a_keras3_model_saves_and_loads(tmp_path):
    qat = lt.quantize_model(_keras3_model())
    calibrate(qat, _x(16))
    path = str(tmp_path / "qat.h5")
    qat.save(path)
    loaded = lt.load_model(path)
    np.testing.assert_array_equal(loaded(_x()).numpy(), qat(_x()).numpy())


@pytest.mark.parametrize("maker, suffix", [(_keras3_model, ".keras"), (_keras3_model, ".h5"),
                                           (_tf_keras_model, ".keras"), (_tf_keras_model, ".h5")],
                         ids=["keras3-.keras", "keras3-.h5", "tf_keras-.keras", "tf_keras-.h5"])
def test_lambda_bytecode_refused_in_safe_mode(tmp_path, maker, suffix):
    model = maker(with_lambda=True) if maker is _tf_keras_model else maker(with_lambda=True, with_ops=False)
    path = str(tmp_path / f"lambda{suffix}")
    model.save(path)
    with pytest.raises(ValueError, match=r"holds Lambda layer\(s\) 'double' whose Python bytecode would run while "
                                         r"loading.*load_model\(path, safe_mode=False\)"):
        lt.load_model(path)
    loaded = lt.load_model(path, safe_mode=False)
    np.testing.assert_allclose(loaded(_x()).numpy(), np.asarray(model(_x())), atol=1e-6)


def test_not_a_model_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(ValueError, match=r"is not a Keras model file \(a \.keras zip, an \.h5 HDF5 file"):
        lt.load_model(path)
    archive = tmp_path / "other.keras"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("readme.txt", "x")
    with pytest.raises(ValueError, match=r"zip file without metadata\.json / config\.json"):
        lt.load_model(archive)


def test_weights_only_h5(tmp_path):
    path = str(tmp_path / "w.weights.h5")
    _tf_keras_model().save_weights(path)
    with pytest.raises(ValueError, match=r"HDF5 file without a model config \(weights only\?\)"):
        lt.load_model(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        lt.load_model(tmp_path / "missing.keras")


def test_cli_inspect_a_keras3_file(tmp_path, capsys):
    path = str(tmp_path / "k3.keras")
    _keras3_model().save(path)
    assert cli.main(["inspect", path]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[2].rstrip(";") for line in out.splitlines()[1:]
            if line and not line.startswith(" ")}
    assert rows["bidi"] == "quantized" and rows["gru"] == "quantized", out
    assert rows["conv"] == "quantized" and rows["out"] == "quantized", out
    assert re.search(r"^bidi +Bidirectional\(LSTM\) +quantized; deploys: fused$", out, re.M), out
    assert re.search(r"^gru +GRU +quantized; deploys: unrolled$", out, re.M), out
