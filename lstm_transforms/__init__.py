"""lstm_transforms: quantization-aware training for recurrent tf-keras models with tfmot.

Importing this package sets TF_USE_LEGACY_KERAS=1 (Keras 2, which tfmot needs) if it is not set,
and changes nothing else: call `install()` to extend stock tfmot entry points. Keras 3 models are
accepted too: they are converted to their tf-keras twin first (`to_tf_keras`).
"""

from lstm_transforms._keras import check_model  # noqa: F401  (sets up Keras 2 first)
from lstm_transforms.api import install, is_installed, quantize_annotate_model, quantize_apply, quantize_model, uninstall
from lstm_transforms.calibration import calibrate
from lstm_transforms.cells import QuantizedGRUCell, QuantizedLSTMCell, QuantizedSimpleRNNCell
from lstm_transforms.compare import compare
from lstm_transforms.configs import QuantizedCellConfig, RNNQuantizeConfig
from lstm_transforms.export import ExportError, ExportWarning, export_tflite, plan
from lstm_transforms.keras3 import register_keras3_layer, to_tf_keras, unregister_keras3_layer
from lstm_transforms.loading import load_model
from lstm_transforms.options import QuantOptions
from lstm_transforms.quantizers import PerGateWeightQuantizer
from lstm_transforms.recurrent import QuantizedGRU, QuantizedLSTM, QuantizedRNN, QuantizedSimpleRNN
from lstm_transforms.registry import UnsupportedLayerError, register_cell, registered_cells, unregister_cell
from lstm_transforms.scheme import RNNQuantizeScheme
from lstm_transforms.serialization import quantize_scope
from lstm_transforms.transforms import FloatLambdaWarning, rewrite
from lstm_transforms.wrappers import QuantizeConfigError

__version__ = "0.1.0"

__all__ = [
    "quantize_model",
    "quantize_annotate_model",
    "quantize_apply",
    "install",
    "uninstall",
    "is_installed",
    "RNNQuantizeScheme",
    "QuantOptions",
    "register_cell",
    "unregister_cell",
    "registered_cells",
    "quantize_scope",
    "to_tf_keras",
    "register_keras3_layer",
    "unregister_keras3_layer",
    "load_model",
    "rewrite",
    "export_tflite",
    "plan",
    "ExportError",
    "ExportWarning",
    "calibrate",
    "compare",
    "FloatLambdaWarning",
    "UnsupportedLayerError",
    "QuantizeConfigError",
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
