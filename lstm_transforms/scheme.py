"""RNNQuantizeScheme: tfmot's default scheme plus recurrent layers, with bit widths as parameters."""

from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import default_8bit_quantize_scheme
from tensorflow_model_optimization.python.core.quantization.keras.experimental.default_n_bit import (
    default_n_bit_quantize_scheme,
)
from tensorflow_model_optimization.python.core.quantization.keras.quantize_scheme import QuantizeScheme

from lstm_transforms.layer_configs import extra_quantize_config
from lstm_transforms.layout import RNNLayoutTransform
from lstm_transforms.options import QuantOptions
from lstm_transforms.registry import RNNQuantizeRegistry

__all__ = ["RNNQuantizeScheme"]


class RNNQuantizeScheme(QuantizeScheme):
    """A tfmot `QuantizeScheme` that also quantizes LSTM, GRU, SimpleRNN, RNN(cell) and Bidirectional.

    Args:
      weight_bits: bits of every weight (recurrent kernels per gate block; other layers as tfmot).
      activation_bits: bits of layer outputs, recurrent hidden state h(t-1) included.
      gate_bits: bits of the gate activations inside the recurrent step (16 in TFLite's integer LSTM).
      state_bits: bits of the LSTM cell state (16, power-of-two scale, in TFLite's integer LSTM).
      cell_clip: clip of the LSTM cell state (the converter emits CellClip=10); 0 disables it.
      weights_only: quantize recurrent weights only; LSTM/GRU then keep the fused (cuDNN) kernel.
      ema_decay: moving-average decay of the learned recurrent ranges.
      disable_per_axis: per-tensor instead of per-channel weights for the non-recurrent layers.

    Non-recurrent layers keep tfmot's default behaviour (`Default8BitQuantizeScheme`, or tfmot's
    `DefaultNBitQuantizeScheme` when `weight_bits`/`activation_bits` are not 8).
    """

    def __init__(
        self,
        weight_bits=8,
        activation_bits=8,
        gate_bits=16,
        state_bits=16,
        cell_clip=10.0,
        weights_only=False,
        ema_decay=0.99,
        disable_per_axis=False,
    ):
        if not 2 <= weight_bits <= 8:
            raise ValueError(f"weight_bits must be in [2, 8], got {weight_bits}")
        self.weight_bits = int(weight_bits)
        self.options = QuantOptions(  # validates the recurrent options
            mode="weights" if weights_only else "full",
            activation_bits=activation_bits,
            gate_bits=gate_bits,
            state_bits=state_bits,
            cell_clip=cell_clip,
            ema_decay=ema_decay,
        )
        self.disable_per_axis = bool(disable_per_axis)

    def _base_scheme(self):
        if self.weight_bits == 8 and self.options.activation_bits == 8:
            return default_8bit_quantize_scheme.Default8BitQuantizeScheme(disable_per_axis=self.disable_per_axis)
        return default_n_bit_quantize_scheme.DefaultNBitQuantizeScheme(
            disable_per_axis=self.disable_per_axis,
            num_bits_weight=self.weight_bits,
            num_bits_activation=self.options.activation_bits,
        )

    def get_layout_transformer(self):
        return RNNLayoutTransform(
            self._base_scheme().get_layout_transformer(), self.options, self.get_quantize_registry()
        )

    def get_quantize_registry(self):
        return RNNQuantizeRegistry(
            self._base_scheme().get_quantize_registry(), weight_bits=self.weight_bits,
            extra_config=extra_quantize_config,
        )

    def get_config(self):
        options = self.options
        return {
            "weight_bits": self.weight_bits,
            "activation_bits": options.activation_bits,
            "gate_bits": options.gate_bits,
            "state_bits": options.state_bits,
            "cell_clip": options.cell_clip,
            "weights_only": not options.full,
            "ema_decay": options.ema_decay,
            "disable_per_axis": self.disable_per_axis,
        }

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"RNNQuantizeScheme({args})"
