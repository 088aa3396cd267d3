"""Representative data -> one float32 array per model input (the one place export coerces data)."""

from __future__ import annotations

import numpy as np

__all__ = ["calibration_arrays"]


def calibration_arrays(representative_dataset, model, max_samples):
    """The representative data as one float32 array per model input, samples on axis 0.

    Accepts a numpy array (samples on axis 0), a list of arrays (one per input), or a generator
    function in TFLite's convention (yields a list with one array per input, each of batch 1 or
    without the batch axis; a dict's values are taken in order).
    """
    n_inputs = len(model.inputs)
    if callable(representative_dataset):
        per_input = [[] for _ in range(n_inputs)]
        for i, sample in enumerate(representative_dataset()):
            if max_samples is not None and i >= max_samples:
                break
            if isinstance(sample, dict):
                sample = list(sample.values())
            if not isinstance(sample, (list, tuple)):
                sample = [sample]
            if len(sample) != n_inputs:
                raise ValueError(f"representative_dataset yielded {len(sample)} arrays; the model has {n_inputs} inputs.")
            for k, a in enumerate(sample):
                a = np.asarray(a, np.float32)
                per_input[k].append(a if a.shape[:1] == (1,) else a[None])
        arrays = [np.concatenate(p, 0) for p in per_input] if per_input[0] else []
    else:
        arrays = representative_dataset if isinstance(representative_dataset, (list, tuple)) else [representative_dataset]
        arrays = [np.asarray(a, np.float32) for a in arrays]
        if len(arrays) != n_inputs:
            raise ValueError(f"representative_dataset has {len(arrays)} arrays; the model has {n_inputs} inputs.")
        if max_samples is not None:
            arrays = [a[:max_samples] for a in arrays]
    if not arrays or len(arrays[0]) == 0:
        raise ValueError("representative_dataset is empty: give at least one calibration sample.")
    for k, (a, t) in enumerate(zip(arrays, model.inputs)):
        want = tuple(t.shape[1:])
        if len(a.shape) != len(want) + 1 or any(w is not None and w != s for w, s in zip(want, a.shape[1:])):
            raise ValueError(f"representative_dataset input {k} has sample shape {a.shape[1:]}; the model expects {want}.")
    if len({len(x) for x in arrays}) != 1:
        raise ValueError("representative_dataset arrays have different numbers of samples.")
    return arrays
