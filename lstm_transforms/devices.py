"""Run exported flatbuffers the way microcontrollers and NPUs do: TensorFlow Lite Micro and Arm Vela.

Optional extra: `pip install lstm-transforms[micro]` (the `tflite-micro` and `ethos-u-vela` wheels; neither
needs TensorFlow).

TensorFlow Lite Micro (TFLM), through the wheel's Python interpreter:

- `micro_predict(flatbuffer, x)`: like `tflite_utils.predict` (samples one by one, batch 1, int8 I/O
  quantized / dequantized with the model's own parameters), with the interpreter's state reset before
  every sequence (`UNIDIRECTIONAL_SEQUENCE_LSTM` keeps its state in variable tensors across invokes).
- `micro_arena_bytes(flatbuffer)`: the tensor arena the model needs. TFLM aborts the whole process on
  some too-small arenas (a failed check inside a kernel), so sizes are probed in child processes.

Arm Vela (Ethos-U NPU compiler):

- `vela_compile(flatbuffer, accelerator="ethos-u55-128")` runs `vela` in a temporary directory and
  returns a `VelaReport`: per operator of the input flatbuffer whether it runs on the NPU or falls back
  to the CPU (with Vela's reason), SRAM and flash use, and the compiled flatbuffer.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

__all__ = [
    "DeviceError",
    "micro_interpreter",
    "micro_predict",
    "micro_arena_bytes",
    "micro_recorded_arena_bytes",
    "vela_compile",
    "VelaReport",
    "OperatorPlacement",
    "INSTALL_HINT",
]

INSTALL_HINT = "pip install lstm-transforms[micro]"

# Arena used when none is given: large enough for every model this package exports (a recurrent
# model's activations are small next to its weights); the smallest one is `micro_arena_bytes`.
_DEFAULT_ARENA = 1 << 20


class DeviceError(RuntimeError):
    """TFLite Micro could not run a model, or Vela could not compile it; the message says why."""


# ----------------------------------------------------------------------------------------------
# TensorFlow Lite Micro
# ----------------------------------------------------------------------------------------------


def _micro_runtime():
    try:
        from tflite_micro.python.tflite_micro import runtime
    except ImportError as e:
        raise ImportError(
            "TensorFlow Lite Micro's Python interpreter (the 'tflite-micro' wheel) is not installed: "
            f"{INSTALL_HINT}"
        ) from e
    return runtime


def _default_arena(flatbuffer):
    return max(_DEFAULT_ARENA, 16 * len(flatbuffer))


def micro_interpreter(flatbuffer, *, arena_size=None):
    """A TFLM interpreter for `flatbuffer` (bytes) with tensors allocated.

    `arena_size` (bytes): None gives a generous arena; a given size is first tried in a child process,
    because TFLM kills the process on some arenas that are too small: too small raises `DeviceError`.
    """
    runtime = _micro_runtime()
    flatbuffer = bytes(flatbuffer)
    if arena_size is None:
        arena_size = _default_arena(flatbuffer)
    elif not _arena_runs(flatbuffer, int(arena_size)):
        raise DeviceError(f"a tensor arena of {arena_size} bytes is too small for this model in TFLite Micro; "
                          "micro_arena_bytes(flatbuffer) gives the smallest that works")
    try:
        return runtime.Interpreter.from_bytes(flatbuffer, arena_size=int(arena_size))
    except RuntimeError as e:
        raise DeviceError(f"TFLite Micro cannot load this model: {e}") from e


def _io_counts(flatbuffer):
    model = _micro_runtime().convert_bytearray_to_object(bytearray(flatbuffer))
    graph = model.subgraphs[0]
    return len(graph.inputs), len(graph.outputs)


def _quantization(details):
    q = details["quantization_parameters"]
    scales, zeros = np.asarray(q["scales"]), np.asarray(q["zero_points"])
    if scales.size == 0:
        return None
    return float(scales[0]), int(zeros[0])


def _to_input(a, details):
    dtype = np.dtype(details["dtype"])
    q = _quantization(details)
    if np.issubdtype(dtype, np.integer) and q is not None:
        info = np.iinfo(dtype)
        return np.clip(np.round(a / q[0] + q[1]), info.min, info.max).astype(dtype)
    return a.astype(dtype)


def _from_output(y, details):
    q = _quantization(details)
    if np.issubdtype(np.asarray(y).dtype, np.integer) and q is not None:
        return (y.astype(np.float32) - q[1]) * q[0]
    return np.asarray(y, np.float32)


def micro_predict(flatbuffer, x, *, arena_size=None, progress=False, desc="tflite-micro"):
    """Run `flatbuffer` in TensorFlow Lite Micro on each sample of `x`, state reset before each.

    Same contract as `tflite_utils.predict`: `x` is an array with samples on axis 0 (or a list, one per
    model input); int8 inputs/outputs are quantized/dequantized with the model's own parameters; returns
    float32 arrays `(n, ...)`, one per output (a single array for one output).
    """
    from lstm_transforms.tflite_utils import _progress

    flatbuffer = bytes(flatbuffer)
    it = micro_interpreter(flatbuffer, arena_size=arena_size)
    n_in, n_out = _io_counts(flatbuffer)
    xs = [np.asarray(a, np.float32) for a in (x if isinstance(x, (list, tuple)) else [x])]
    if len(xs) != n_in:
        raise ValueError(f"the model has {n_in} inputs, got {len(xs)} arrays")
    ins = [it.get_input_details(k) for k in range(n_in)]
    outs = [it.get_output_details(k) for k in range(n_out)]
    results = [[] for _ in outs]
    for i in _progress(range(len(xs[0])), progress, desc):
        it.reset()
        for k, (a, d) in enumerate(zip(xs, ins)):
            it.set_input(_to_input(a[i:i + 1], d), k)
        it.invoke()
        for k, (r, d) in enumerate(zip(results, outs)):
            r.append(_from_output(it.get_output(k), d)[0])
    stacked = [np.stack(r) for r in results]
    return stacked[0] if len(stacked) == 1 else stacked


def _captured_stderr(fn):
    """What the C++ side writes to file descriptor 2 while `fn()` runs."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as f:
        os.dup2(f.fileno(), 2)
        try:
            fn()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        f.seek(0)
        return f.read().decode(errors="replace")


def micro_recorded_arena_bytes(flatbuffer):
    """The arena TFLM's `RecordingMicroAllocator` reports after one invoke ("Arena allocation total").

    It counts what the model's tensors, kernels and bookkeeping take; the interpreter itself needs a few
    hundred bytes more (`micro_arena_bytes`).
    """
    flatbuffer = bytes(flatbuffer)
    it = micro_interpreter(flatbuffer)
    n_in, _ = _io_counts(flatbuffer)
    for k in range(n_in):
        d = it.get_input_details(k)
        it.set_input(np.zeros(d["shape"], d["dtype"]), k)
    it.invoke()
    text = _captured_stderr(it.print_allocations)
    found = re.search(r"Arena allocation total (\d+) bytes", text)
    if not found:
        raise DeviceError(f"TFLite Micro printed no arena total: {text.strip()[:200]!r}")
    return int(found.group(1))


_PROBE = """
import sys
import numpy as np
from tflite_micro.python.tflite_micro import runtime
with open(sys.argv[1], "rb") as f:
    data = f.read()
it = runtime.Interpreter.from_bytes(data, arena_size=int(sys.argv[2]))
graph = runtime.convert_bytearray_to_object(bytearray(data)).subgraphs[0]
for k in range(len(graph.inputs)):
    d = it.get_input_details(k)
    it.set_input(np.zeros(d["shape"], d["dtype"]), k)
it.invoke()
for k in range(len(graph.outputs)):
    it.get_output(k)
print("ok")
"""


def _arena_runs(flatbuffer, arena_size, path=None):
    """Whether TFLM loads `flatbuffer` and invokes it once with `arena_size` bytes (in a child process)."""
    _micro_runtime()
    own = path is None
    if own:
        fd, path = tempfile.mkstemp(suffix=".tflite")
        with os.fdopen(fd, "wb") as f:
            f.write(flatbuffer)
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE, path, str(int(arena_size))],
                              capture_output=True, text=True, timeout=120)
        return proc.returncode == 0 and proc.stdout.strip() == "ok"
    finally:
        if own:
            os.unlink(path)


def micro_arena_bytes(flatbuffer, *, granularity=16):
    """The smallest tensor arena (bytes, a multiple of `granularity`) with which TFLite Micro's
    interpreter loads `flatbuffer` and runs it once.

    Searched upwards from `micro_recorded_arena_bytes` and then bisected, each size tried in a child
    process (about 0.3 s each; TFLM aborts the process on some arenas that are too small).
    """
    flatbuffer = bytes(flatbuffer)
    low = micro_recorded_arena_bytes(flatbuffer)
    fd, path = tempfile.mkstemp(suffix=".tflite")
    with os.fdopen(fd, "wb") as f:
        f.write(flatbuffer)
    try:
        def runs(size):
            return _arena_runs(flatbuffer, size, path)

        def up(size):
            return -(-size // granularity) * granularity

        high = up(low)
        step = max(granularity, up(low // 8))
        while not runs(high):
            low, high = high, up(high + step)
            step *= 2
            if high > _default_arena(flatbuffer) * 4:
                raise DeviceError(f"TFLite Micro does not run this model with an arena of up to {high} bytes")
        while high - low > granularity:
            mid = up((low + high) // 2)
            if mid >= high:
                break
            if runs(mid):
                high = mid
            else:
                low = mid
        return high
    finally:
        os.unlink(path)


# ----------------------------------------------------------------------------------------------
# Arm Vela
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class OperatorPlacement:
    """Where one operator of the input flatbuffer runs after Vela: `device` is "NPU" or "CPU"."""

    index: int
    op: str
    tensor: str
    device: str
    reason: str = ""


@dataclasses.dataclass(frozen=True)
class VelaReport:
    """What Vela made of a flatbuffer (`vela_compile`).

    `operators`: one `OperatorPlacement` per operator of the input flatbuffer. `sram_bytes` /
    `flash_bytes`: Vela's "Total SRAM used" / "Total Off-chip Flash used" (rounded to bytes).
    `vela_npu_operators` / `vela_cpu_operators`: Vela's own counts, after it splits operators (a fused
    LSTM becomes hundreds of NPU operations). `compiled`: the flatbuffer Vela wrote (an `ethos-u` custom
    op per NPU section, CPU operators as they were). `log`: Vela's console output.
    """

    accelerator: str
    operators: tuple
    sram_bytes: int
    flash_bytes: int
    vela_npu_operators: int
    vela_cpu_operators: int
    compiled: bytes = dataclasses.field(repr=False)
    log: str = dataclasses.field(repr=False)

    @property
    def cpu_operators(self):
        return [p for p in self.operators if p.device == "CPU"]

    @property
    def npu_operators(self):
        return [p for p in self.operators if p.device == "NPU"]

    @property
    def npu_share(self):
        """Share of the input flatbuffer's operators that run on the NPU (1.0: all of them)."""
        return len(self.npu_operators) / max(len(self.operators), 1)

    def summary(self):
        lines = [
            f"Vela ({self.accelerator}): {len(self.npu_operators)} of {len(self.operators)} operators on the NPU "
            f"({100 * self.npu_share:.1f}%), SRAM {self.sram_bytes} bytes, flash {self.flash_bytes} bytes",
        ]
        for p in self.cpu_operators:
            lines.append(f"  CPU: #{p.index} {p.op} {p.tensor!r}: {p.reason or 'no reason given'}")
        return "\n".join(lines)


def _vela_available():
    if importlib.util.find_spec("ethosu") is None or importlib.util.find_spec("ethosu.vela") is None:
        raise ImportError(f"Arm Vela (the 'ethos-u-vela' wheel) is not installed: {INSTALL_HINT}")


def _operators(flatbuffer):
    """(op name, first output tensor name) for each operator of subgraph 0."""
    from tensorflow.lite.tools import flatbuffer_utils as fbu

    model = fbu.convert_bytearray_to_object(bytearray(flatbuffer))
    graph = model.subgraphs[0]
    out = []
    for op in graph.operators or []:
        name = fbu.opcode_to_name(model, op.opcodeIndex)
        if name == "CUSTOM":
            code = model.operatorCodes[op.opcodeIndex].customCode
            name = code.decode() if isinstance(code, bytes) else str(code)
        outputs = list(op.outputs) if op.outputs is not None else []
        tensor = graph.tensors[outputs[0]].name if outputs else b""
        out.append((name, tensor.decode() if isinstance(tensor, bytes) else (tensor or "")))
    return out


_WARNING = re.compile(r"^Warning \(supported operators\) operator: (\S+), ofm: '(.*)'$")


def _fallback_reasons(log):
    """[(op, ofm tensor name, reason)] from Vela's 'Warning (supported operators)' paragraphs."""
    found, lines = [], log.splitlines()
    for i, line in enumerate(lines):
        m = _WARNING.match(line.strip())
        if not m:
            continue
        reason = []
        for follow in lines[i + 1:]:
            if not follow.strip() or _WARNING.match(follow.strip()):
                break
            reason.append(follow.strip().removeprefix("Reason:").strip())
        found.append((m.group(1), m.group(2), " ".join(reason)))
    return found


def _placements(source_ops, compiled_ops, reasons):
    """Match the CPU operators left in Vela's output to the input's operators (by tensor name, else order)."""
    cpu = [(op, tensor) for op, tensor in compiled_ops if op != "ethos-u"]
    taken = set()
    for op, tensor in cpu:
        candidates = [i for i, (o, t) in enumerate(source_ops) if o == op and i not in taken]
        named = [i for i in candidates if tensor and source_ops[i][1] == tensor]
        if named or candidates:
            taken.add((named or candidates)[0])
    out = []
    for i, (op, tensor) in enumerate(source_ops):
        device = "CPU" if i in taken else "NPU"
        reason = ""
        if device == "CPU":
            matches = [r for o, t, r in reasons if o == op and (t == tensor or not tensor)]
            reason = matches[0] if matches else ""
        out.append(OperatorPlacement(i, op, tensor, device, reason))
    return tuple(out)


def _csv_row(path):
    import csv

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return rows[-1] if rows else {}


def vela_compile(flatbuffer, accelerator="ethos-u55-128", *, system_config=None, memory_mode=None, timeout=600):
    """Compile `flatbuffer` with Arm Vela for an Ethos-U NPU; returns a `VelaReport`.

    Runs `python -m ethosu.vela` in a temporary directory (Vela's own defaults for the system
    configuration and memory mode unless given: for ethos-u55-* that is Ethos_U55_High_End_Embedded /
    Shared_Sram). Raises `DeviceError` with Vela's message when it cannot compile the model (e.g. a
    float fused LSTM: "Does not have valid TFLite Semantics"); `ImportError` naming the extra when the
    `ethos-u-vela` wheel is missing.
    """
    _vela_available()
    flatbuffer = bytes(flatbuffer)
    with tempfile.TemporaryDirectory(prefix="lstm_transforms_vela_") as workdir:
        src = os.path.join(workdir, "model.tflite")
        with open(src, "wb") as f:
            f.write(flatbuffer)
        out_dir = os.path.join(workdir, "out")
        cmd = [sys.executable, "-m", "ethosu.vela", src, "--accelerator-config", accelerator,
               "--output-dir", out_dir]
        if system_config:
            cmd += ["--system-config", system_config]
        if memory_mode:
            cmd += ["--memory-mode", memory_mode]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise DeviceError(f"Vela did not finish in {timeout} s") from e
        log = proc.stdout + proc.stderr
        compiled_path = os.path.join(out_dir, "model_vela.tflite")
        csvs = [n for n in os.listdir(out_dir) if n.endswith(".csv")] if os.path.isdir(out_dir) else []
        if proc.returncode != 0 or not os.path.exists(compiled_path) or not csvs:
            errors = [ln.strip() for ln in log.splitlines() if "rror" in ln]
            raise DeviceError(f"Vela ({accelerator}) could not compile the model: "
                              f"{(errors[-1] if errors else log.strip()[-400:]) or 'no output'}")
        with open(compiled_path, "rb") as f:
            compiled = f.read()
        row = _csv_row(os.path.join(out_dir, csvs[0]))
    counts = {k: int(v) for k, v in re.findall(r"^(CPU|NPU) operators = (\d+)", log, re.M)}

    def kib(key):
        return int(round(float(row.get(key) or 0.0) * 1024))

    operators = _placements(_operators(flatbuffer), _operators(compiled), _fallback_reasons(log))
    return VelaReport(
        accelerator=accelerator,
        operators=operators,
        sram_bytes=kib("sram_memory_used"),
        flash_bytes=kib("off_chip_flash_memory_used") + kib("on_chip_flash_memory_used"),
        vela_npu_operators=counts.get("NPU", 0),
        vela_cpu_operators=counts.get("CPU", 0),
        compiled=compiled,
        log=log,
    )
