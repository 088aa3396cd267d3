"""The exception and the warning every export stage raises."""

__all__ = ["ExportError", "ExportWarning"]


class ExportError(RuntimeError):
    """A model (or a layer of it) cannot be exported; the message names the layer, the cause and the fix."""


class ExportWarning(UserWarning):
    """The flatbuffer cannot hold a QAT setting exactly: the device computes slightly differently."""
