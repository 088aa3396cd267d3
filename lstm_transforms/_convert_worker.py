"""Child process of `export.convert`: SavedModel + calibration arrays -> verified .tflite file.

Run as `python -m lstm_transforms._convert_worker WORKDIR`. Writes WORKDIR/model.tflite only after
the flatbuffer loaded and ran once in the interpreter; on a Python-level failure writes the
traceback to WORKDIR/error.txt and exits 1. A crash (signal) is reported by the parent.
"""

import json
import os
import sys
import traceback


# op name -> [(bias input, data input, weight input)] whose int32 bias must be at scale in * w.
_BIAS_TRIPLES = {
    "FULLY_CONNECTED": [(2, 0, 1)],
    "CONV_2D": [(2, 0, 1)],
    "DEPTHWISE_CONV_2D": [(2, 0, 1)],
    "UNIDIRECTIONAL_SEQUENCE_LSTM": [(12, 0, 1), (13, 0, 2), (14, 0, 3), (15, 0, 4)],
}


def requantize_biases(flatbuffer):
    """Return (flatbuffer, fixes): every int32 bias re-expressed at scale input_scale * weight_scale.

    The integer kernels add the bias in the accumulator domain and assume exactly that scale. When
    some activation ranges are fixed by FakeQuant ops and others calibrated, the converter can
    quantize a bias with a stale input scale (seen on the fused LSTM: bias 1.56x too large), so this
    rewrites such biases in place (same size, no re-layout). `fixes` lists the tensors changed.
    """
    import numpy as np
    from tensorflow.lite.python import schema_py_generated as schema

    data = bytearray(flatbuffer)
    model = schema.Model.GetRootAs(data, 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    fixes = []
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        for o in range(graph.OperatorsLength()):
            op = graph.Operators(o)
            opcode = model.OperatorCodes(op.OpcodeIndex())
            code = max(opcode.BuiltinCode(), opcode.DeprecatedBuiltinCode())
            inputs = op.InputsAsNumpy()
            for bias_i, in_i, w_i in _BIAS_TRIPLES.get(names.get(code), []):
                if max(bias_i, in_i, w_i) >= len(inputs) or min(inputs[bias_i], inputs[in_i], inputs[w_i]) < 0:
                    continue
                bias, x, w = (graph.Tensors(int(inputs[i])) for i in (bias_i, in_i, w_i))
                if bias.Type() != schema.TensorType.INT32 or x.Quantization() is None or w.Quantization() is None:
                    continue
                b_scale = bias.Quantization().ScaleAsNumpy()
                x_scale, w_scale = x.Quantization().ScaleAsNumpy(), w.Quantization().ScaleAsNumpy()
                if not (np.size(b_scale) and np.size(x_scale) and np.size(w_scale)):
                    continue
                want = (x_scale[0] * w_scale).astype(np.float32)
                if np.size(want) != np.size(b_scale) or np.allclose(b_scale, want, rtol=1e-6, atol=0):
                    continue
                raw = model.Buffers(bias.Buffer()).DataAsNumpy()
                if not isinstance(raw, np.ndarray) or raw.size == 0:
                    continue
                values = raw.view(np.int32)
                real = values.astype(np.float64) * b_scale.astype(np.float64)
                values[:] = np.clip(np.round(real / want), -(2**31), 2**31 - 1).astype(np.int32)
                b_scale[:] = want
                fixes.append(bias.Name().decode())
    return bytes(data), fixes


def _convert(workdir):
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import numpy as np
    import tensorflow as tf

    with open(os.path.join(workdir, "options.json")) as f:
        options = json.load(f)
    converter = tf.lite.TFLiteConverter.from_saved_model(os.path.join(workdir, "saved_model"))
    arrays = None
    if options["int8"]:
        with np.load(os.path.join(workdir, "calibration.npz")) as data:
            arrays = [data[f"arr_{k}"] for k in range(len(data.files))]

        def representative_dataset():
            total = len(arrays[0])
            for i in range(total):
                yield [a[i:i + 1] for a in arrays]
                print(f"@@progress {i + 1} {total}", flush=True)

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        # tfmot quantizes Dense kernels per tensor; keep the converter from re-quantizing per channel.
        converter._experimental_disable_per_channel_quantization_for_dense_layers = True
        if options["int8_io"]:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    flatbuffer = converter.convert()
    if options["int8"]:
        flatbuffer, fixes = requantize_biases(flatbuffer)
        with open(os.path.join(workdir, "bias_fixes.json"), "w") as f:
            json.dump(fixes, f)

    # Never hand back a model that does not load and run.
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()
    for k, detail in enumerate(interpreter.get_input_details()):
        shape = [1 if d < 0 else d for d in detail["shape_signature"]]
        if arrays is not None:
            x = arrays[k][:1]
            if detail["dtype"] == np.int8:
                scale, zero = detail["quantization"]
                x = np.clip(np.round(x / scale + zero), -128, 127)
        else:
            x = np.zeros(shape)
        if list(x.shape) != list(detail["shape"]):
            interpreter.resize_tensor_input(detail["index"], list(x.shape))
            interpreter.allocate_tensors()
        interpreter.set_tensor(detail["index"], x.astype(detail["dtype"]))
    interpreter.invoke()
    for detail in interpreter.get_output_details():
        interpreter.get_tensor(detail["index"])

    tmp = os.path.join(workdir, "model.tflite.part")
    with open(tmp, "wb") as f:
        f.write(flatbuffer)
    os.replace(tmp, os.path.join(workdir, "model.tflite"))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    workdir = argv[0]
    try:
        _convert(workdir)
    except Exception:  # noqa: BLE001 - reported to the parent through error.txt
        with open(os.path.join(workdir, "error.txt"), "w") as f:
            f.write(traceback.format_exc())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
