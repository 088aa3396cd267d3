"""Calibration and representative data, as a stream of batches checked against the model's inputs.

What users pass, and how it is read:

- a numpy array (samples on axis 0) for a one-input model;
- a list or tuple of arrays, one per model input, or a dict of them keyed by input name;
- a generator function in TFLite's ``representative_dataset`` convention: each yielded item is one
  sample (or a small batch): an array, a list/tuple with one array per input, or a dict; arrays may
  carry a leading batch axis or not;
- a `tf.data.Dataset` of inputs, or of ``(inputs, labels)`` / ``(inputs, labels, weights)``
  tuples as for `Model.fit`, batched or not.

Nothing is read into memory beyond one batch (arrays are sliced, generators and datasets are read
as they go). Every input's sample shape is checked against the model's input shape.
"""

from __future__ import annotations

import types
from typing import Iterator

import numpy as np

from lstm_transforms._keras import tf

__all__ = ["arrays", "batches", "samples", "sample_count"]

DEFAULT_NAME = "representative_dataset"


class _Inputs:
    """The model's inputs: names, sample shapes (no batch axis) and dtypes."""

    def __init__(self, model, name):
        self.name = name
        self.names = [t.name.split(":")[0] for t in model.inputs]
        self.layer_names = list(getattr(model, "input_names", None) or self.names)
        self.shapes = [tuple(t.shape[1:]) for t in model.inputs]
        self.dtypes = [t.dtype.as_numpy_dtype for t in model.inputs]

    def __len__(self):
        return len(self.shapes)

    def ordered(self, values: dict) -> list:
        """A dict's values in model-input order (by input name), else in the dict's own order."""
        for names in (self.layer_names, self.names):
            if set(values) == set(names):
                return [values[key] for key in names]
        return list(values.values())

    def check(self, arrays, verb="has") -> list:
        """`arrays` (one per input, samples on axis 0) as arrays of the inputs' dtypes; ValueError if they do not fit."""
        if len(arrays) != len(self):
            raise ValueError(f"{self.name} {verb} {len(arrays)} arrays; the model has {len(self)} inputs.")
        out = []
        for k, (a, want, dtype) in enumerate(zip(arrays, self.shapes, self.dtypes)):
            a = np.asarray(a, dtype=dtype)
            if a.ndim != len(want) + 1 or any(w is not None and w != s for w, s in zip(want, a.shape[1:])):
                raise ValueError(f"{self.name} input {k} has sample shape {a.shape[1:]}; the model expects {want}.")
            out.append(a)
        if len({len(a) for a in out}) != 1:
            raise ValueError(f"{self.name} arrays have different numbers of samples.")
        return out

    def item(self, item, verb="yielded") -> list:
        """One yielded item (one sample or a small batch, with or without the batch axis) as a batch."""
        arrays = self._flat(item)
        if len(arrays) == len(self):
            arrays = [np.asarray(a) for a in arrays]
            arrays = [a[None] if a.ndim == len(want) else a for a, want in zip(arrays, self.shapes)]
        return self.check(arrays, verb)

    def _flat(self, item):
        if isinstance(item, dict):
            return self.ordered(item)
        if isinstance(item, (list, tuple)):
            return list(item)
        return [item]

    def fits(self, item) -> bool:
        """Whether `item` reads as the model's inputs (count and shapes)."""
        try:
            self.item(item)
        except (ValueError, TypeError):
            return False
        return True


def _dataset_reader(inputs: _Inputs, first):
    """How to read each dataset element: as the inputs, or as the first entry of (inputs, labels, ...)."""
    if isinstance(first, tuple) and len(first) in (2, 3) and not inputs.fits(first) and inputs.fits(first[0]):
        return lambda element: inputs.item(element[0], "yielded")
    return lambda element: inputs.item(element, "yielded")


def _chunks(data, inputs: _Inputs) -> Iterator[list]:
    """Batches of any size, one array per input, straight from the source."""
    if isinstance(data, tf.data.Dataset):
        read = None
        for element in data.as_numpy_iterator():
            read = read or _dataset_reader(inputs, element)
            yield read(element)
    elif isinstance(data, (types.GeneratorType, map, filter)) or (
        hasattr(data, "__next__") and not isinstance(data, np.ndarray)
    ):
        raise TypeError(
            f"{inputs.name} is an iterator, which can be read only once: pass the generator function itself "
            "(TFLite's representative_dataset convention), e.g. `lambda: my_generator()`."
        )
    elif callable(data):
        for item in data():
            yield inputs.item(item)
    else:
        if data is None or isinstance(data, (str, bytes)):
            raise TypeError(
                f"{inputs.name} must be a numpy array, a list of arrays (one per model input), a generator "
                f"function or a tf.data.Dataset; got {type(data).__name__}."
            )
        arrays = inputs.ordered(data) if isinstance(data, dict) else data
        arrays = inputs.check(list(arrays) if isinstance(arrays, (list, tuple)) else [arrays])
        yield arrays


def batches(data, model, batch_size=32, max_samples=None, name=DEFAULT_NAME) -> Iterator[list]:
    """Yield `data` as batches for `model`: lists with one array per model input (the input's
    dtype, samples on axis 0), `batch_size` samples each (the last one may be smaller), at most
    `max_samples` samples in all.

    Raises ValueError (messages name `name`, the argument the user passed) when a sample does not
    fit the model's inputs or when there is no sample at all.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    inputs = _Inputs(model, name)
    limit = float("inf") if max_samples is None else max_samples
    pending, count, total = [], 0, 0
    for chunk in _chunks(data, inputs):
        start = 0
        size = len(chunk[0])
        while start < size and total < limit:
            take = int(min(size - start, batch_size - count, limit - total))
            pending.append([a[start : start + take] for a in chunk])
            start, count, total = start + take, count + take, total + take
            if count == batch_size:
                yield _concatenate(pending)
                pending, count = [], 0
        if total >= limit:
            break
    if pending:
        yield _concatenate(pending)
    if total == 0:
        raise ValueError(f"{name} is empty: give at least one calibration sample.")


def _concatenate(parts):
    if len(parts) == 1:
        return parts[0]
    return [np.concatenate(column, axis=0) for column in zip(*parts)]


def samples(data, model, max_samples=None, name=DEFAULT_NAME) -> Iterator[list]:
    """Yield `data` one sample at a time, each input with a leading batch axis of 1: what TFLite's
    converter expects from a representative_dataset generator."""
    return batches(data, model, batch_size=1, max_samples=max_samples, name=name)


def arrays(data, model, max_samples=None, name=DEFAULT_NAME) -> list:
    """All of `data` (at most `max_samples` samples) as one array per model input, samples on axis 0:
    for the export, whose child process calibrates on the whole set."""
    return _concatenate(list(batches(data, model, batch_size=256, max_samples=max_samples, name=name)))


def sample_count(data, max_samples=None):
    """The number of samples `batches` will yield, when it is known without reading the data, else None."""
    if isinstance(data, np.ndarray):
        count = len(data)
    elif isinstance(data, (list, tuple)) and data and all(isinstance(a, np.ndarray) for a in data):
        count = len(data[0])
    else:
        return None
    return count if max_samples is None else min(count, max_samples)
