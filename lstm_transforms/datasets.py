"""Real sequence data that ships with the package (no download, no extra dependency).

JapaneseVowels (UEA/UCI archive): 9 speakers saying the vowels 'a' and 'e'; each sample is a sequence
of 7 to 29 frames of 12 LPC cepstrum coefficients; the task is to name the speaker. 270 training and
370 test sequences. The files are the UEA `.ts` files (the same ones the sktime/aeon wheels ship).
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["load_japanese_vowels", "read_ts", "JAPANESE_VOWELS_LENGTH", "JAPANESE_VOWELS_CHANNELS"]

_DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")

JAPANESE_VOWELS_LENGTH = 29
JAPANESE_VOWELS_CHANNELS = 12


def read_ts(path):
    """Parse a UEA/UCR `.ts` file with class labels.

    Returns `(series, labels)`: `series` is a list with one float32 array of shape `(length, channels)`
    per sample (lengths may differ), `labels` a list of the label strings as written in the file.
    Missing values (`?`) become NaN.
    """
    series, labels = [], []
    in_data = False
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if not in_data:
                if line.lower().startswith("@data"):
                    in_data = True
                continue
            *dims, label = line.split(":")
            if not dims:
                raise ValueError(f"{path}:{lineno}: expected 'dim1:dim2:...:label', got {line[:60]!r}")
            channels = [np.array([np.nan if v == "?" else float(v) for v in d.split(",")], np.float32) for d in dims]
            if len({len(c) for c in channels}) != 1:
                raise ValueError(f"{path}:{lineno}: channels of one sample have different lengths")
            series.append(np.stack(channels, axis=-1))
            labels.append(label.strip())
    if not in_data:
        raise ValueError(f"{path}: no '@data' section; not a .ts file")
    return series, labels


def _pre_pad(series, length):
    out = np.zeros((len(series), length, series[0].shape[-1]), np.float32)
    for i, s in enumerate(series):
        s = s[-length:]
        out[i, length - len(s):] = s
    return out


def load_japanese_vowels(length=JAPANESE_VOWELS_LENGTH):
    """Load JapaneseVowels as `(x_train, y_train, x_test, y_test)`.

    `x_*` are float32 arrays `(n, length, 12)`: each sequence is pre-padded with zeros to `length`
    frames (29, the longest, by default), so that the last frame a recurrent layer sees is real data.
    `y_*` are int32 labels 0..8 (the file's labels 1..9 minus one). 270 training and 370 test samples.
    """
    out = []
    for split in ("TRAIN", "TEST"):
        series, labels = read_ts(os.path.join(_DATA_DIR, f"JapaneseVowels_{split}.ts"))
        out.append(_pre_pad(series, length))
        out.append(np.array([int(float(v)) - 1 for v in labels], np.int32))
    return tuple(out)
