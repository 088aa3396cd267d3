"""Child process of `export.convert`: SavedModel + calibration arrays -> verified .tflite file.

Run as `python -m lstm_transforms._convert_worker WORKDIR`. Writes WORKDIR/model.tflite only after
the flatbuffer loaded and ran once in the interpreter; on a Python-level failure writes the
traceback to WORKDIR/error.txt and exits 1. A crash (signal) is reported by the parent.
"""

import json
import os
import sys
import traceback


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
            for i in range(len(arrays[0])):
                yield [a[i:i + 1] for a in arrays]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        # tfmot quantizes Dense kernels per tensor; keep the converter from re-quantizing per channel.
        converter._experimental_disable_per_channel_quantization_for_dense_layers = True
        if options["int8_io"]:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    flatbuffer = converter.convert()

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
