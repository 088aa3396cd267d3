"""GRU / SimpleRNN deploy as exactly the step their QAT cells simulate (`export/deployed.py`, `cells.py`).

One export of a model with one branch per kind (GRU with reset_after True and False, SimpleRNN with
tanh and relu), read back through the TFLite interpreter: every intermediate of every step carries
the learned QAT range of its quantization point (none is calibrated per step), TANH / LOGISTIC are
on TFLite's fixed grids, and the flatbuffer computes what the QAT model computes to within an LSB.
"""

import re

import numpy as np
import pytest

import lstm_transforms as lt
from lstm_transforms import tflite_utils
from lstm_transforms._keras import keras
from lstm_transforms.quantizers import asymmetric_bounds
from lstm_transforms.walk import cells_of
from tests.export_helpers import matched_outputs

L = keras.layers
T, F, UNITS = 7, 4, 8
KINDS = {
    "gru": lambda: L.GRU(UNITS, return_sequences=True, name="gru"),
    "gru_reset_before": lambda: L.GRU(UNITS, reset_after=False, return_sequences=True, name="gru_reset_before"),
    "simple_rnn": lambda: L.SimpleRNN(UNITS, return_sequences=True, name="simple_rnn"),
    "simple_rnn_relu": lambda: L.SimpleRNN(UNITS, activation="relu", return_sequences=True, name="simple_rnn_relu"),
}
# A tensor of an unrolled step: ".../<layer>/lt_h<k>[_<point>]_t<step | all | init>".
STEP_TENSOR = re.compile(r"(?:^|/)([a-z_]+)/lt_h\d+(?:_([a-z_]+?))?_t(\d+|all|init)$")
FIXED = {"TANH": (1 / 128, 0), "LOGISTIC": (1 / 256, -128)}
COPIES = ("UNPACK", "PACK", "RESHAPE")  # int8 ops whose output keeps its input's scale


@pytest.fixture(scope="module")
def exported():
    keras.utils.set_random_seed(3)
    x = np.random.default_rng(3).normal(size=(96, T, F)).astype(np.float32)
    i = keras.Input((T, F))
    qat = lt.quantize_model(keras.Model(i, [make()(i) for make in KINDS.values()]))
    lt.calibrate(qat, x)
    for _ in range(3):  # training-mode passes: the moving averages move off the calibrated extremes
        qat(x[:48], training=True)
    cells = {layer.layer.name: cells_of(layer.layer)[0] for layer in qat.layers if hasattr(layer, "layer")
             and layer.layer.name in KINDS}
    return qat, x, cells, lt.export_tflite(qat, x, int8_io=True)


def _step_tensors(flatbuffer):
    """[(layer, point, step, op name, (scale, zero point))] of the tensors named after a quantization point."""
    it = tflite_utils.interpreter(flatbuffer, inspect=True)
    details = {d["index"]: d for d in it.get_tensor_details()}
    found = []
    for op in it._get_ops_details():
        for out in op["outputs"]:
            for part in details[int(out)]["name"].split(";"):
                match = STEP_TENSOR.search(part)
                if match:
                    layer, point, step = match.groups()
                    found.append((layer, point or "output", step, op["op_name"], details[int(out)]["quantization"]))
                    break
    return found


def _expected(cell, point):
    lo, hi = (float(v) for v in asymmetric_bounds(*cell.learned_range(point)))
    return (hi - lo) / 255, lo


def test_every_point_of_every_step_has_its_qat_range(exported):
    _, _, cells, fb = exported
    found = _step_tensors(fb)
    for name, cell in cells.items():
        seen = {}
        for layer, point, step, op, (scale, zero) in found:
            if layer != name:
                continue
            seen.setdefault(point, set()).add(step)
            if op in FIXED:  # h of a tanh SimpleRNN: the TANH output, on its fixed grid
                assert (scale, zero) == pytest.approx(FIXED[op]), (name, point, step)
                continue
            want_scale, lo = _expected(cell, "output" if point == "zero" else point)  # h(-1) = 0 on h's range
            assert scale == pytest.approx(want_scale, rel=1e-5), (name, point, step)
            assert (-128 - zero) * scale == pytest.approx(lo, abs=scale), (name, point, step)
        steps = {str(t) for t in range(T)}
        for point in cell.learned_points:
            want = {"all"} if point.startswith("input") else steps
            assert want <= seen.get(point, set()), (name, point, sorted(seen.get(point, ())))
        assert "init" in seen["zero"]  # the explicit zero state


def test_no_tensor_of_an_unrolled_step_is_calibrated(exported):
    """Every int8 activation is a named quantization point, a fixed-grid TANH / LOGISTIC, or a copy."""
    _, _, _, fb = exported
    named = {(op, step) for _, _, step, op, _ in _step_tensors(fb)}
    assert named
    it = tflite_utils.interpreter(fb, inspect=True)
    details = {d["index"]: d for d in it.get_tensor_details()}
    unaccounted = []
    for op in it._get_ops_details():
        name = op["op_name"]
        for out in op["outputs"]:
            tensor = details[int(out)]
            if name in COPIES or any(STEP_TENSOR.search(part) for part in tensor["name"].split(";")):
                continue
            if name in FIXED:
                assert tensor["quantization"] == pytest.approx(FIXED[name])
                continue
            unaccounted.append((name, tensor["name"]))
    assert unaccounted == []


def test_flatbuffer_matches_qat_within_an_lsb(exported):
    qat, x, _, fb = exported
    expected = qat.predict(x, verbose=0)
    for name, want, (got, lsb) in zip(KINDS, expected, matched_outputs(fb, expected, x)):
        error = np.abs(got - want) / lsb
        assert np.percentile(error, 99) <= 1.0 and error.max() <= 2.0 and error.mean() < 0.05, (
            name, error.mean(), np.percentile(error, 99), error.max())
