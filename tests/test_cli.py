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
from tests.helpers import run_python

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


def _export_for_cpu(files, target):
    """The flatbuffer `lstm-transforms export --target <target>` writes for the QAT file."""
    out = str(files["dir"] / f"{target}.tflite")
    assert main(["export", files["qat"], "-o", out, "--target", target]) == 0
    with open(out, "rb") as f:
        return f.read()


def test_export_target_cpu_keeps_float_activations_and_int8_weights(files):
    fb = _export_for_cpu(files, "cpu")
    ops = tflite_utils.op_names(fb)
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" in ops and "QUANTIZE" not in ops and "DEQUANTIZE" not in ops
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_content=fb)
    dtypes = {d["name"]: d["dtype"] for d in interpreter.get_tensor_details()}
    assert interpreter.get_input_details()[0]["dtype"] == np.float32
    assert any(dtype == np.int8 for dtype in dtypes.values()), dtypes  # the weights


def test_export_target_cpu_weight_only_reads_int8_weights_through_dequantize(files):
    ops = tflite_utils.op_names(_export_for_cpu(files, "cpu-weight-only"))
    assert "UNIDIRECTIONAL_SEQUENCE_LSTM" in ops and "QUANTIZE" not in ops
    dequantize = ops.count("DEQUANTIZE")  # of the int8 weights, first; at least the eight LSTM gate matrices
    assert dequantize >= 8 and ops[:dequantize] == ["DEQUANTIZE"] * dequantize


@pytest.mark.parametrize("argv, message", [
    (["inspect", "/nonexistent/model.h5"], "no such file"),
    (["export", "{qat}", "-o", "{dir}/x.tflite", "-q"], "--calibration DATA.npy is needed"),
    (["export", "{qat}", "-o", "{dir}/x.tflite", "--target", "cpu", "--int8-io"], "drop --int8-io"),
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


# --- Safe loading ---------------------------------------------------------------------------------


def _lambda_model(sentinel):
    """The question's shape with a Lambda whose bytecode leaves a file behind when it runs."""
    i = keras.Input((10, 4, 1))
    x = L.Conv2D(2, (3, 1), padding="same", activation="relu", name="front")(i)
    x = L.Conv2D(1, (1, 1), name="mix")(x)
    x = L.Lambda(lambda q: (open(sentinel, "w").close(), q[..., 0])[1], name="squeeze_last_dim")(x)
    return keras.Model(i, L.Dense(3, name="head")(L.LSTM(8, name="rnn")(x)))


@pytest.fixture(scope="module")
def lambda_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("lambda")
    sentinel = str(d / "bytecode_ran")
    model = _lambda_model(sentinel)
    paths = {"h5": str(d / "m.h5"), "keras": str(d / "m.keras"), "tf": str(d / "m_savedmodel")}
    for fmt, path in paths.items():
        model.save(path, save_format=fmt)
    os.remove(sentinel)  # building the model ran the lambda once
    np.save(str(d / "cal.npy"), np.zeros((4, 10, 4, 1), np.float32))
    return paths, sentinel, str(d / "cal.npy")


@pytest.mark.parametrize("fmt", ["keras", "tf"])
def test_inspect_in_safe_mode_reports_the_rest_of_the_model(lambda_files, capsys, fmt):
    paths, sentinel, _ = lambda_files
    assert main(["inspect", paths[fmt]]) == 0
    assert not os.path.exists(sentinel), "the Lambda's bytecode ran"
    captured = capsys.readouterr()
    lam = captured.out[captured.out.index("squeeze_last_dim"):captured.out.index("rnn")]
    assert "not loaded" in lam and "--unsafe-lambda" in lam
    assert "per-gate (4 blocks)" in captured.out[captured.out.index("rnn"):]
    assert "kernel: int8 per-channel" in captured.out[captured.out.index("front"):captured.out.index("mix")]
    note = captured.err.strip().splitlines()[-1]
    assert note.startswith("lstm-transforms inspect: note:") and "'squeeze_last_dim'" in note
    assert "would run while loading" in note and "--unsafe-lambda" in note


def test_inspect_of_an_h5_with_a_python_lambda_lists_its_layers_and_fails(lambda_files, capsys):
    paths, sentinel, _ = lambda_files
    assert main(["inspect", paths["h5"]]) == 2
    assert not os.path.exists(sentinel), "the Lambda's bytecode ran"
    captured = capsys.readouterr()
    assert "squeeze_last_dim" in captured.out and "not loaded" in captured.out and "rnn" in captured.out
    (error,) = captured.err.strip().splitlines()
    assert error.startswith("lstm-transforms inspect: error:") and "'squeeze_last_dim'" in error
    assert "--unsafe-lambda" in error and "does not record the output shape" in error


@pytest.mark.parametrize("fmt", ["h5", "keras", "tf"])
def test_export_refuses_lambda_bytecode_unless_unsafe_lambda(lambda_files, capsys, tmp_path, fmt):
    paths, sentinel, cal = lambda_files
    out = str(tmp_path / "m.tflite")
    assert main(["export", paths[fmt], "--calibration", cal, "-o", out, "-q"]) == 2
    assert not os.path.exists(sentinel) and not os.path.exists(out)
    (error,) = capsys.readouterr().err.strip().splitlines()
    assert error.startswith("lstm-transforms export: error:") and "'squeeze_last_dim'" in error
    assert "--unsafe-lambda" in error
    if fmt == "keras":  # opting in runs the bytecode (and the rest of inspect works as for any model)
        assert main(["inspect", paths[fmt], "--unsafe-lambda"]) == 0
        assert os.path.exists(sentinel)
        os.remove(sentinel)


def test_help_and_version_do_not_import_tensorflow():
    code = (
        "import sys; from lstm_transforms_cli import main\n"
        "for argv in (['--help'], ['--version'], ['inspect', '--help']):\n"
        "    try:\n        main(argv)\n    except SystemExit as e:\n        assert e.code == 0, e.code\n"
        "print('TF_LOADED' if 'tensorflow' in sys.modules else 'NO_TF')\n"
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "NO_TF"
    assert "usage: lstm-transforms" in proc.stdout and "--unsafe-lambda" in proc.stdout


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"lstm-transforms {lstm_transforms.__version__}"


def test_inspect_of_an_h5_lambda_with_an_explicit_output_shape(tmp_path, capsys):
    i = keras.Input((10, 4, 1))
    x = L.Lambda(lambda q: q[..., 0], output_shape=(10, 4), name="squeeze_last_dim")(i)
    path = str(tmp_path / "m.h5")
    keras.Model(i, L.Dense(3, name="head")(L.LSTM(8, name="rnn")(x))).save(path)
    assert main(["inspect", path]) == 0
    out = capsys.readouterr().out
    assert "not loaded" in out[out.index("squeeze_last_dim"):out.index("rnn")]
    assert "per-gate (4 blocks)" in out[out.index("rnn"):]
