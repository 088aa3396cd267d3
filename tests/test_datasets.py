import numpy as np
import pytest

from lstm_transforms.datasets import load_japanese_vowels, read_ts


def test_japanese_vowels_shapes_labels_and_pre_padding():
    x_train, y_train, x_test, y_test = load_japanese_vowels()
    assert x_train.shape == (270, 29, 12) and x_test.shape == (370, 29, 12)
    assert x_train.dtype == np.float32 and x_test.dtype == np.float32
    assert y_train.min() == 0 and y_train.max() == 8
    assert np.bincount(y_train).tolist() == [30] * 9  # 30 utterances per speaker in the training split
    assert len(np.unique(y_test)) == 9
    assert np.all(np.isfinite(x_train)) and np.all(np.isfinite(x_test))
    # Pre-padded: the last frame is always real data; short sequences start with all-zero frames.
    assert np.all(np.abs(x_train[:, -1]).sum(-1) > 0)
    lengths = (np.abs(x_train).sum(-1) > 0).sum(-1)
    all_lengths = np.concatenate([lengths, (np.abs(x_test).sum(-1) > 0).sum(-1)])
    assert all_lengths.min() == 7 and all_lengths.max() == 29  # the longest (a test sequence) fills the pad
    first_real = 29 - lengths
    for row, start in zip(x_train[:20], first_real[:20]):
        assert np.all(row[:start] == 0)


def test_first_training_sample_matches_the_file(tmp_path):
    x_train, y_train, _, _ = load_japanese_vowels()
    series, labels = read_ts(__import__("lstm_transforms.datasets").datasets._DATA_DIR + "/JapaneseVowels_TRAIN.ts")
    first = series[0]
    assert first.shape[1] == 12 and labels[0] == "1"
    np.testing.assert_array_equal(x_train[0, 29 - len(first):], first)
    assert y_train[0] == 0


def test_read_ts_rejects_a_file_without_data(tmp_path):
    bad = tmp_path / "bad.ts"
    bad.write_text("@problemName x\n@classLabel true 1 2\n")
    with pytest.raises(ValueError, match="no '@data'"):
        read_ts(str(bad))


def test_read_ts_parses_missing_values(tmp_path):
    f = tmp_path / "m.ts"
    f.write_text("@data\n1,2,?:3,4,5:2\n")
    series, labels = read_ts(str(f))
    assert labels == ["2"] and series[0].shape == (3, 2) and np.isnan(series[0][2, 0])
