"""Child process of `convert.convert`: SavedModel + calibration arrays -> verified .tflite file.

Run as `python -m lstm_transforms.export._worker WORKDIR`. Reads WORKDIR/options.json (and
ranges.npz), writes WORKDIR/model.tflite only after the flatbuffer loaded and ran once in the
interpreter; on a Python-level failure writes the traceback to WORKDIR/error.txt and exits 1. A
crash (signal) is reported by the parent.

Full-int8 conversion runs the converter's own two steps apart: calibration
(`_experimental_calibrate_only`), then `mlir_quantize`. In between, the statistics are measured
again with the LSTM state reset before every sample (`_flatbuffer.measure_ranges`: the converter's
calibrator carries it from one sample to the next), and the QAT ranges the converter cannot take
from the graph are written into them (`_flatbuffer.set_calibration_ranges`). Afterwards, weights
are put back on their QAT grid and biases re-expressed at input_scale * weight_scale.

Weights-only conversion (`export_tflite(..., mode="dynamic")`) converts to float, stores the weights
of the hybrid ops int8 (`_hybrid.quantize_weights`) and puts coarser grids back on their QAT grid;
for `mode="weight_only"` each of those int8 weights is then read through a DEQUANTIZE op
(`_hybrid.dequantize_weights`), so that every op runs its float kernel.
"""

import json
import os
import sys
import traceback


def _load_ranges(workdir, options):
    import numpy as np

    lstm_ranges, op_ranges, grids = [], [], []
    if os.path.exists(os.path.join(workdir, "ranges.npz")):
        with np.load(os.path.join(workdir, "ranges.npz")) as keys:
            for k, ranges in enumerate(options.get("lstm_ranges", [])):
                lstm_ranges.append(dict(ranges, input_to_forget=keys[f"lstm_{k}"]))
            for k, output in enumerate(options.get("op_ranges", [])):
                op_ranges.append({"weights": keys[f"op_{k}"], "output": output})
            for k, kmax in enumerate(options.get("weight_grids", [])):
                grids.append({"values": keys[f"grid_{k}"], "kmax": kmax})
    return options.get("input_ranges", {}), lstm_ranges, op_ranges, grids


def _convert(workdir):
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import numpy as np
    import tensorflow as tf
    from tensorflow.lite.python import convert as tflite_convert

    from lstm_transforms.export import _flatbuffer

    with open(os.path.join(workdir, "options.json")) as f:
        options = json.load(f)
    converter = tf.lite.TFLiteConverter.from_saved_model(os.path.join(workdir, "saved_model"))
    arrays = None
    report = {}
    if options["int8"]:
        with np.load(os.path.join(workdir, "calibration.npz")) as data:
            arrays = [data[f"arr_{k}"] for k in range(len(data.files))]

        def representative_dataset():
            total = len(arrays[0])
            for i in range(total):
                yield [a[i:i + 1] for a in arrays]
                print(f"@@progress {i + 1} {total}", flush=True)

        int16 = options.get("activations") == "int16"
        io_type = (tf.int16 if int16 else tf.int8) if options["int8_io"] else tf.float32
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8 if int16
            else tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        # tfmot quantizes Dense kernels per tensor; keep the converter from re-quantizing per channel.
        converter._experimental_disable_per_channel_quantization_for_dense_layers = True
        converter._experimental_calibrate_only = True
        calibrated = _flatbuffer.measure_ranges(converter.convert(), arrays)
        input_ranges, lstm_ranges, op_ranges, grids = _load_ranges(workdir, options)
        calibrated, report["unmatched_lstm_ranges"], report["unmatched_op_ranges"], report["widened"] = (
            _flatbuffer.set_calibration_ranges(calibrated, input_ranges, lstm_ranges, op_ranges,
                                               options.get("named_ranges", {}), int16=int16))
        if int16:  # the converter's 16x8 quantizer (not MLIR), on the same edited statistics
            from tensorflow.lite.python.optimize import calibrator

            number = lambda dtype: np.dtype(dtype.as_numpy_dtype).num  # noqa: E731
            flatbuffer = calibrator.Calibrator(calibrated)._calibrator.QuantizeModel(
                number(io_type), number(io_type), False, number(tf.int16), number(tf.int64), False, True)
        else:
            flatbuffer = tflite_convert.mlir_quantize(
                calibrated, disable_per_channel=False, input_data_type=io_type, output_data_type=io_type,
                disable_per_channel_for_dense_layers=True)
        flatbuffer, report["regridded"], report["off_grid"] = _flatbuffer.regrid_weights(flatbuffer, grids)
        flatbuffer, report["bias_fixes"] = _flatbuffer.requantize_biases(flatbuffer)
    elif options.get("weights_only"):
        from lstm_transforms.export import _hybrid

        flatbuffer, report["int8_weights"] = _hybrid.quantize_weights(converter.convert())
        grids = _load_ranges(workdir, options)[3]
        flatbuffer, report["regridded"], report["off_grid"] = _flatbuffer.regrid_weights(flatbuffer, grids)
        if options["weights_only"] == "dequantized":
            flatbuffer, report["dequantized_weights"] = _hybrid.dequantize_weights(flatbuffer)
    else:
        flatbuffer = converter.convert()
    flatbuffer = _flatbuffer.shorten_output_names(flatbuffer)
    with open(os.path.join(workdir, "report.json"), "w") as f:
        json.dump(report, f)
    _smoke_test(flatbuffer, arrays)
    tmp = os.path.join(workdir, "model.tflite.part")
    with open(tmp, "wb") as f:
        f.write(flatbuffer)
    os.replace(tmp, os.path.join(workdir, "model.tflite"))


def _smoke_test(flatbuffer, arrays):
    """Never hand back a model that does not load and run (on the first calibration sample, or zeros)."""
    import numpy as np

    from lstm_transforms import tflite_utils

    if arrays is None:
        details = tflite_utils.interpreter(flatbuffer).get_input_details()
        arrays = [np.zeros([1 if d < 0 else d for d in detail["shape_signature"]], np.float32) for detail in details]
    tflite_utils.predict(flatbuffer, [a[:1] for a in arrays])


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
