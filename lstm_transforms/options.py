"""`QuantOptions`: how the quantized recurrent cells quantize, validated once.

Serialized configs of the quantized cells and layers carry these as ``quant_*`` keys
(``quant_activation_bits``, ...), so saved models stay loadable.
"""

from __future__ import annotations

import dataclasses

__all__ = ["QuantOptions"]

_MODES = ("full", "weights")


@dataclasses.dataclass(frozen=True)
class QuantOptions:
    """Bit widths and ranges of the quantization points inside a recurrent step.

    mode: "full" (weights, gates, cell state and output) or "weights" (weights only; LSTM/GRU
      then keep the fused backend function).
    activation_bits: the layer output and the recurrent input h(t-1) (one range for both).
    gate_bits: LSTM gate activations, on the fixed range [-1, 1) (GRU / SimpleRNN simulate int8
      TANH / LOGISTIC at activation_bits instead: they deploy as per-step integer ops).
    state_bits: the LSTM cell state, power-of-two scale.
    cell_clip: clip of the LSTM cell state (the converter emits CellClip=10); 0 disables it.
    ema_decay: moving-average decay of the learned ranges during training.
    """

    mode: str = "full"
    activation_bits: int = 8
    gate_bits: int = 16
    state_bits: int = 16
    cell_clip: float = 10.0
    ema_decay: float = 0.99

    def __post_init__(self):
        if self.mode not in _MODES:
            raise ValueError(f"mode must be 'full' or 'weights', got {self.mode!r}")
        for name in ("activation_bits", "gate_bits", "state_bits"):
            bits = getattr(self, name)
            if isinstance(bits, bool) or int(bits) != bits or not 2 <= bits <= 16:
                raise ValueError(f"{name} must be in [2, 16], got {bits}")
            object.__setattr__(self, name, int(bits))
        if not self.cell_clip >= 0:
            raise ValueError(f"cell_clip must be >= 0, got {self.cell_clip}")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        object.__setattr__(self, "cell_clip", float(self.cell_clip))
        object.__setattr__(self, "ema_decay", float(self.ema_decay))

    @property
    def full(self) -> bool:
        """Whether activations, gates and the cell state are quantized too (not only the weights)."""
        return self.mode == "full"

    def to_config(self) -> dict:
        """The ``quant_*`` keys of a serialized quantized cell or layer."""
        return {"quant_" + field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    @classmethod
    def pop_from(cls, kwargs: dict) -> "QuantOptions":
        """The options in `kwargs` (``quant_*`` keys, removed from it); defaults for missing keys."""
        found = {}
        for field in dataclasses.fields(cls):
            key = "quant_" + field.name
            if key in kwargs:
                found[field.name] = kwargs.pop(key)
        return cls(**found)
