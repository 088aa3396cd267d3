"""QAT under tf.distribute: MirroredStrategy (two logical CPU devices) and MultiWorkerMirroredStrategy
(two worker processes on 127.0.0.1).

Each scenario runs in fresh Python processes: logical devices must be configured before TensorFlow
initializes its devices, and each multi-worker task needs its own process and `TF_CONFIG`. In every
scenario the float model is built *and* quantized inside `strategy.scope()`, trained with `fit`, the
loss falls, and the saved `.h5` loads in a plain process (no strategy) with the same weights and
outputs, its recurrent layers still quantized. Every subprocess has a bounded timeout; on timeout all
of a scenario's processes are killed.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 240  # seconds, per scenario

SCRIPT = textwrap.dedent(
    r'''
    import json, os, sys
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    mode, out, arch = sys.argv[1], sys.argv[2], sys.argv[3]

    if mode in ("mirrored", "calibrate"):
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

    import lstm_transforms as lt
    from lstm_transforms._keras import keras
    L = keras.layers

    def data(n=128):
        rng = np.random.default_rng(0)
        x = rng.uniform(-1, 1, (n, 8, 3)).astype("float32")
        y = (x[:, :, 0].mean(axis=1) > 0).astype("float32")[:, None]
        return x, y

    def build():
        inputs = keras.Input((8, 3))
        if arch == "bidirectional":
            h = L.Bidirectional(L.LSTM(8, return_sequences=True))(inputs)
        else:
            h = L.LSTM(8, return_sequences=True)(inputs)
        h = L.GRU(8)(h)
        return keras.Model(inputs, L.Dense(1, activation="sigmoid")(h))

    if mode == "load":  # a plain process: no strategy, one device
        from tests.helpers import assert_recurrent_quantized
        with lt.quantize_scope():
            loaded = keras.models.load_model(os.path.join(out, "qat.h5"), compile=False)
        x, _ = data()
        saved = np.load(os.path.join(out, "weights.npz"))
        weights = loaded.get_weights()
        assert len(weights) == len(saved.files), (len(weights), len(saved.files))
        for k, w in enumerate(weights):
            np.testing.assert_array_equal(w, saved[f"arr_{k}"])
        # Same weights, so the same outputs up to float round-off -- which can flip the rounding of a
        # fake-quantized value on a boundary: allow one int8 step of the output (<= 0.02 here) on 2% of samples.
        diff = np.abs(loaded.predict(x, verbose=0) - np.load(os.path.join(out, "pred.npy")))
        assert diff.max() <= 0.02 and np.mean(diff > 1e-6) <= 0.02, (diff.max(), np.mean(diff > 1e-6))
        assert_recurrent_quantized(loaded, x[:16], expected_layers=2)
        print("LOADED OK")
        sys.exit(0)

    if mode == "calibrate":  # calibrate on two replicas == calibrate on one device, for every kind of range
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        keras.utils.set_random_seed(0)
        model = build()
        x = data()[0] * 3.0
        with strategy.scope():
            qat = lt.quantize_model(model)
        reference = lt.quantize_model(model)
        runs, run = [], strategy.run
        strategy.run = lambda fn, args=(), kwargs=None, options=None: runs.append(1) or run(fn, args, kwargs, options)
        lt.calibrate(qat, x, batch_size=32, passes=2)
        assert len(runs) == 2 * len(x) // 32, len(runs)
        lt.calibrate(reference, x, batch_size=32, passes=2)
        ranges = [(v, r) for v, r in zip(qat.weights, reference.weights) if v.shape.rank == 0 and "optimizer" not in v.name]
        kinds = {"cell": 0, "tfmot": 0}
        for v, r in ranges:
            values = [float(c.numpy()) for c in v.values]
            assert values[0] == values[1], (v.name, values)  # the replicas agree
            assert abs(values[0] - float(r.numpy())) <= 1e-3 * max(1.0, abs(float(r.numpy()))), (v.name, values, r.numpy())
            if "quant_observed" in v.name:
                continue
            kinds["cell" if "/quant_" in v.name else "tfmot"] += 1
            assert values[0] not in (-6.0, 6.0, -1.0, 1.0, 10.0, 0.0), (v.name, values)  # it learned
        assert kinds["cell"] >= 6 and kinds["tfmot"] >= 4, kinds
        print("CALIBRATED OK", kinds, flush=True)
        sys.exit(0)

    if mode == "mirrored":
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        chief = True
    else:  # multiworker: TF_CONFIG set by the test
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        chief = json.loads(os.environ["TF_CONFIG"])["task"]["index"] == 0
    assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync

    keras.utils.set_random_seed(0)
    x, y = data()
    with strategy.scope():
        qat = lt.quantize_model(build())
        qat.compile(keras.optimizers.Adam(0.01), "binary_crossentropy")
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    history = qat.fit(dataset.with_options(options), epochs=6, verbose=0).history["loss"]
    print("LOSS", json.dumps(history), flush=True)
    assert history[-1] < 0.9 * history[0], history

    # Every worker must take part in saving; only the chief's file is the result.
    target = out if chief else os.path.join(out, "worker_tmp")
    os.makedirs(target, exist_ok=True)
    qat.save(os.path.join(target, "qat.h5"))
    pred = qat.predict(x, verbose=0)  # a collective step under MultiWorkerMirroredStrategy: every worker runs it
    if chief:
        np.savez(os.path.join(out, "weights.npz"), *qat.get_weights())
        np.save(os.path.join(out, "pred.npy"), pred)
    print("TRAINED OK", flush=True)
    '''
)


def _env(**extra):
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", **extra)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _start(script, mode, out, arch, **env):
    return subprocess.Popen(
        [sys.executable, str(script), mode, str(out), arch], cwd=REPO, env=_env(**env),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _finish(procs, timeout=TIMEOUT):
    """Wait for all `procs`; kill every one of them if any runs past `timeout` seconds."""
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=timeout)[0])
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.communicate()
        pytest.fail(f"distributed scenario did not finish in {timeout} s")
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output[-4000:]
    return outputs


def _losses(output):
    line = [ln for ln in output.splitlines() if ln.startswith("LOSS ")][-1]
    return json.loads(line[len("LOSS "):])


def _free_ports(n):
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "scenario.py"
    path.write_text(SCRIPT)
    return path


def _assert_loads_in_plain_process(script, out, arch):
    (output,) = _finish([_start(script, "load", out, arch)])
    assert "LOADED OK" in output, output[-4000:]


@pytest.mark.parametrize(
    "arch",
    [
        "stacked",  # LSTM(return_sequences) -> GRU
        # Both directions run on the same replica's weights: the range updates wait until the
        # wrapped call ends (see deferred_range_updates).
        "bidirectional",
    ],
)
def test_mirrored_strategy_two_logical_cpus(script, tmp_path, arch):
    out = tmp_path / "mirrored"
    out.mkdir()
    (output,) = _finish([_start(script, "mirrored", out, arch)])
    assert "TRAINED OK" in output, output[-4000:]
    losses = _losses(output)
    assert losses[-1] < 0.9 * losses[0]
    _assert_loads_in_plain_process(script, out, arch)


def test_multi_worker_mirrored_strategy_two_processes(script, tmp_path):
    out = tmp_path / "multiworker"
    out.mkdir()
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = [
        _start(script, "multiworker", out, "bidirectional", TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}))
        for i in range(2)
    ]
    outputs = _finish(procs)
    for output in outputs:
        assert "TRAINED OK" in output, output[-4000:]
    # Both workers ran the same synchronous steps: they report the same (all-reduced) losses.
    chief, other = (_losses(o) for o in outputs)
    np.testing.assert_allclose(chief, other, rtol=1e-5)
    assert chief[-1] < 0.9 * chief[0]
    _assert_loads_in_plain_process(script, out, "bidirectional")


def test_calibrate_on_two_replicas_sets_every_range_as_on_one_device(script, tmp_path):
    """Cell ranges and tfmot ranges follow the same running min / max rule in the replica threads,
    with the extremes taken over both replicas' halves of each batch."""
    (output,) = _finish([_start(script, "calibrate", tmp_path, "bidirectional")])
    assert "CALIBRATED OK" in output, output[-4000:]
