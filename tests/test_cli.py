"""The `lstm-transforms` command line: inspect, export, and one-line errors with a non-zero exit."""

import os
import subprocess
import sys

import numpy as np
import pytest

import lstm_transforms
from lstm_transforms import tflite_utils
from lstm_transforms._keras import keras
from lstm_transforms.cli import main

L = keras.layers


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    keras.utils.set_random_seed(0)
    i = keras.Input((10, 4))
    h = L.Conv1D(4, 3, padding="same", name="front")(i)
    o = L.Dense(3, activation="softmax", name="head")(L.LSTM(8, name="rnn")(h))
    model = keras.Model(i, o)
    x = np.random.default_rng(0).normal(size=(24, 10, 4)).astype(np.float32)
    qat = lstm_transforms.quantize_model(model)
    qat.compile("adam", "sparse_categorical_crossentropy")
    qat.fit(x, np.arange(24) % 3, epochs=1, verbose=0)
    paths = {"float": str(d / "float.h5"), "qat": str(d / "qat.h5"), "cal": str(d / "cal.npy"),
             "bad_cal": str(d / "bad.npy"), "dir": d}
    model.save(paths["float"])
    qat.save(paths["qat"])
    np.save(paths["cal"], x)
    np.save(paths["bad_cal"], x[:, :, :2])
    return paths


def test_inspect_says_how_each_layer_is_quantized(files, capsys):
    assert main(["inspect", files["float"]]) == 0
    out = capsys.readouterr().out
    rnn = out[out.index("rnn"):out.index("head")]
    assert "quantized" in rnn and "kernel: int8 per-gate (4 blocks)" in rnn
    assert "recurrent_kernel: int8 per-gate (4 blocks)" in rnn and "cell state int16" in rnn
    assert "kernel: int8 per-channel" in out[out.index("front"):out.index("rnn")]
    assert "kernel: int8 per-tensor" in out[out.index("head"):]
    assert "skipped" in out.splitlines()[1]  # the InputLayer, with its reason
    assert main(["inspect", files["qat"]]) == 0  # a saved QAT model reads the same way
    assert "per-gate (4 blocks)" in capsys.readouterr().out


def test_inspect_prints_the_deployment_plan_and_json(files, capsys):
    import json

    assert main(["inspect", files["qat"], "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    rnn = next(layer for layer in plan["layers"] if layer["name"] == "rnn")
    assert plan["deployable"] and rnn["deploy"] == "fused" and [c["deploy"] for c in rnn["cells"]] == ["fused"]
    assert main(["inspect", files["qat"]]) == 0
    out = capsys.readouterr().out
    assert "deploys: fused" in out and "fused UNIDIRECTIONAL_SEQUENCE_LSTM" in out


def test_inspect_says_why_a_model_cannot_deploy(files, capsys):
    i = keras.Input((None, 4))
    path = str(files["dir"] / "gru_none.h5")
    keras.Model(i, L.Dense(2)(L.GRU(4, name="gru")(i))).save(path)
    assert main(["inspect", path]) == 0
    out = capsys.readouterr().out
    assert "NOT deployable" in out.splitlines()[0]
    assert "X Layer 'gru' (GRU) has a time dimension of None" in out and "keras.Input(shape=(T, features))" in out


def test_export_writes_a_fused_integer_model_and_inspect_reads_it(files, capsys):
    out = str(files["dir"] / "qat.tflite")
    assert main(["export", files["qat"], "--calibration", files["cal"], "-o", out, "-q"]) == 0
    with open(out, "rb") as f:
        fb = f.read()
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" in tflite_utils.op_names(fb)
    assert main(["inspect", out]) == 0
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["inspect", "/nonexistent/model.h5"], "no such file"),
    (["export", "{qat}", "--calibration", "/nonexistent.npy", "-o", "{dir}/x.tflite"], "no such calibration file"),
    (["export", "{qat}", "--calibration", "{bad_cal}", "-o", "{dir}/x.tflite", "-q"], "expects"),
    (["export", "{qat}", "--calibration", "{cal}", "-o", "/nonexistent/dir/x.tflite", "-q"], "does not exist"),
])
def test_errors_are_one_line_and_non_zero(files, capsys, argv, message):
    argv = [a.format(**files) for a in argv]
    assert main(argv) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"lstm-transforms {argv[0]}: error:") and message in err[0]
    assert not os.path.exists(f"{files['dir']}/x.tflite")


def test_module_entry_point_exit_code(files):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-m", "lstm_transforms.cli", "inspect", "/nonexistent.h5"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "lstm-transforms inspect: error: no such file or directory: /nonexistent.h5"
