"""lstm_transforms: quantization-aware training for recurrent tf-keras models with tfmot.

Importing this package sets TF_USE_LEGACY_KERAS=1 (Keras 2, which tfmot needs) if it is not set,
and changes nothing else: call `install()` to extend stock tfmot entry points.
"""

from lstm_transforms._keras import check_model  # noqa: F401  (sets up Keras 2 first)
from lstm_transforms.api import install, is_installed, quantize_annotate_model, quantize_apply, quantize_model, uninstall
from lstm_transforms.configs import QuantizedCellConfig, RNNQuantizeConfig
from lstm_transforms.quantizers import PerGateWeightQuantizer
from lstm_transforms.recurrent import QuantizedGRU, QuantizedLSTM, QuantizedRNN, QuantizedSimpleRNN
from lstm_transforms.cells import QuantizedGRUCell, QuantizedLSTMCell, QuantizedSimpleRNNCell
from lstm_transforms.registry import UnsupportedLayerError, register_cell, registered_cells, unregister_cell
from lstm_transforms.scheme import RNNQuantizeScheme
from lstm_transforms.serialization import quantize_scope

__version__ = "0.1.0"

__all__ = [
    "quantize_model",
    "quantize_annotate_model",
    "quantize_apply",
    "install",
    "uninstall",
    "is_installed",
    "RNNQuantizeScheme",
    "register_cell",
    "unregister_cell",
    "registered_cells",
    "quantize_scope",
    "rewrite",
    "export_tflite",
    "plan",
    "ExportError",
    "ExportWarning",
    "calibrate",
    "FloatLambdaWarning",
    "UnsupportedLayerError",
    "RNNQuantizeConfig",
    "QuantizedCellConfig",
    "PerGateWeightQuantizer",
    "QuantizedLSTM",
    "QuantizedGRU",
    "QuantizedSimpleRNN",
    "QuantizedRNN",
    "QuantizedLSTMCell",
    "QuantizedGRUCell",
    "QuantizedSimpleRNNCell",
]


def __getattr__(name):
    # Modules written by other parts of the package, imported on first use.
    if name == "rewrite":
        from lstm_transforms.transforms import rewrite

        return rewrite
    if name in ("export_tflite", "ExportError", "ExportWarning", "plan"):
        from lstm_transforms import export

        return getattr(export, name)
    if name == "calibrate":
        from lstm_transforms.calibration import calibrate

        return calibrate
    if name == "FloatLambdaWarning":
        from lstm_transforms.transforms import FloatLambdaWarning

        return FloatLambdaWarning
    raise AttributeError(f"module 'lstm_transforms' has no attribute {name!r}")
