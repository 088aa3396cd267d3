"""`compare`: per layer, the flatbuffer's tensor against the QAT model's output, in output LSBs."""

import dataclasses

import numpy as np
import pytest

import lstm_transforms
from lstm_transforms import flatbuffer_size, tflite_utils
from lstm_transforms._keras import keras
from lstm_transforms.cli import main
from lstm_transforms.compare import compare, plot
from lstm_transforms.datasets import load_japanese_vowels
from lstm_transforms.export import export_tflite

L = keras.layers


@pytest.fixture(scope="module")
def setup():
    x_train, y_train, _, _ = load_japanese_vowels()
    keras.utils.set_random_seed(0)
    i = keras.Input((29, 12))
    h = L.Dense(16, activation="relu", name="front")(i)
    h = L.LSTM(16, return_sequences=True, name="rnn")(h)
    h = L.Dense(16, activation="relu", name="mid")(L.Flatten(name="flat")(h))
    model = keras.Model(i, L.Dense(9, activation="softmax", name="head")(h))
    qat = lstm_transforms.quantize_model(model)
    lstm_transforms.calibrate(qat, x_train)
    qat.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    qat.fit(x_train, y_train, epochs=3, batch_size=32, verbose=0)
    fb = export_tflite(qat, x_train, int8_io=True)
    return qat, fb, x_train[:120]


def _row(report, layer):
    return next(r for r in report.layers if r.layer == layer)


def test_every_layer_is_matched_to_its_tensor_and_close(setup):
    qat, fb, x = setup
    report = compare(qat, fb, x)
    print("\n" + report.summary())
    assert report.unmatched == {}
    assert [r.layer for r in report.layers] == ["quantize_layer", "quant_front", "quant_rnn", "quant_flat",
                                                "quant_mid", "quant_head"]
    ops = tflite_utils.interpreter(fb, inspect=True)._get_ops_details()
    made_by = {int(t): op["op_name"] for op in ops for t in op["outputs"]}
    assert made_by[_row(report, "quant_rnn").tensor_index] == "UNIDIRECTIONAL_SEQUENCE_LSTM"
    assert made_by[_row(report, "quant_front").tensor_index] == "FULLY_CONNECTED"
    assert made_by[_row(report, "quant_head").tensor_index] == "SOFTMAX"
    assert _row(report, "quant_head").how == "output" and _row(report, "quant_mid").how == "name"
    assert _row(report, "quantize_layer").max < 1e-3  # the int8 input: the same quantization (float rounding)
    assert _row(report, "quant_flat").own_max < 1e-3  # a reshape adds nothing (float32 rounding only)
    for layer in ("quant_front", "quant_rnn", "quant_flat"):
        row = _row(report, layer)
        assert row.scale is not None and row.p99 <= 2.0 and row.own_p99 <= 2.0, row
    assert all(r.scale is not None and r.own_p99 is not None for r in report.layers[1:])
    assert report.agreement >= 0.9 and report.samples == len(x)


def _with_scale(flatbuffer, index, factor):
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    q = model.subgraphs[0].tensors[index].quantization
    q.scale = [s * factor for s in q.scale]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def test_a_misranged_flatbuffer_tensor_is_singled_out(setup):
    qat, fb, x = setup
    before = compare(qat, fb, x)
    broken = _with_scale(fb, _row(before, "quant_mid").tensor_index, 0.2)  # clips 4/5 of mid's range
    after = compare(qat, broken, x)
    print("\n" + after.summary())
    assert after.first_divergent().layer == "quant_mid"
    assert _row(after, "quant_mid").p99 > 10 * max(_row(before, "quant_mid").p99, 0.5)
    for upstream in ("quant_front", "quant_rnn", "quant_flat"):
        assert _row(after, upstream) == _row(before, upstream)


def test_a_qat_range_the_flatbuffer_does_not_have_is_singled_out(setup):
    qat, fb, x = setup
    cell = qat.get_layer("quant_rnn").layer.cell
    lo, hi = cell.quant_output_min.numpy(), cell.quant_output_max.numpy()
    cell.quant_output_min.assign(lo * 0.1)  # the QAT LSTM now clips its output to a tenth of the range
    cell.quant_output_max.assign(hi * 0.1)
    try:
        report = compare(qat, fb, x)
    finally:
        cell.quant_output_min.assign(lo)
        cell.quant_output_max.assign(hi)
    assert report.first_divergent().layer == "quant_rnn"
    assert report.first_divergent().p99 > 10


def test_a_stripped_flatbuffer_compares_only_inputs_and_outputs(setup):
    qat, fb, x = setup
    report = compare(qat, flatbuffer_size.strip_strings(fb), x[:20])
    assert [r.layer for r in report.layers] == ["quantize_layer", "quant_head"]
    assert set(report.unmatched) == {"quant_front", "quant_rnn", "quant_flat", "quant_mid"}
    assert all("stripped" in why for why in report.unmatched.values())
    full = _row(compare(qat, fb, x[:20]), "quant_head")
    head = _row(report, "quant_head")
    assert (head.tensor, head.own_p99) == ("", None)
    assert dataclasses.replace(head, tensor=full.tensor, own_mean=full.own_mean, own_p99=full.own_p99,
                               own_max=full.own_max) == full


def test_plot_draws_the_report(setup, tmp_path):
    qat, fb, x = setup
    path = tmp_path / "errors.png"
    report = compare(qat, fb, x[:10], plot=str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = tmp_path / "again.png"
    assert plot(report, str(again)) == str(again) and again.stat().st_size > 1000


def test_cli_compare_prints_the_table_and_draws_it(setup, tmp_path, capsys):
    qat, fb, x = setup
    paths = {k: str(tmp_path / n) for k, n in (("model", "qat.h5"), ("fb", "m.tflite"), ("x", "x.npy"),
                                                ("png", "e.png"))}
    qat.save(paths["model"])
    with open(paths["fb"], "wb") as f:
        f.write(fb)
    np.save(paths["x"], x[:30])
    assert main(["compare", paths["model"], paths["fb"], "--data", paths["x"], "--plot", paths["png"]]) == 0
    out = capsys.readouterr().out
    assert "quant_rnn" in out and "class agreement" in out and "of 30 samples" in out
    assert (tmp_path / "e.png").exists()
    assert main(["compare", paths["model"], paths["fb"], "--data", str(tmp_path / "missing.npy")]) == 2
    assert "no such data file" in capsys.readouterr().err
