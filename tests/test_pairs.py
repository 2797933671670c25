import numpy as np
import pytest
import tifffile

from carekit.data.pairs import load_pairs, match_files
from carekit.errors import CarekitError


def write(folder, name, array):
    folder.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(folder / name, array)


def test_several_input_folders_share_one_target_folder(tmp_path):
    for n in ("a.tif", "b.tif"):
        write(tmp_path / "high", n, np.ones((8, 8), np.uint16))
        write(tmp_path / "low1", n, np.zeros((8, 8), np.uint16))
    write(tmp_path / "low2", "b.tif", np.zeros((8, 8), np.uint16))
    matched = match_files([tmp_path / "low1", tmp_path / "low2"], tmp_path / "high")
    assert [(lo.parent.name, lo.name, hi.name) for lo, hi in matched] == [
        ("low1", "a.tif", "a.tif"),
        ("low1", "b.tif", "b.tif"),
        ("low2", "b.tif", "b.tif"),
    ]


def test_unmatched_input_is_named(tmp_path):
    write(tmp_path / "high", "a.tif", np.ones((8, 8), np.uint16))
    write(tmp_path / "low", "zz.tif", np.ones((8, 8), np.uint16))
    with pytest.raises(CarekitError, match=r"zz\.tif: no target named zz\.tif"):
        match_files([tmp_path / "low"], tmp_path / "high")


def test_empty_input_folder(tmp_path):
    write(tmp_path / "high", "a.tif", np.ones((8, 8), np.uint16))
    (tmp_path / "low").mkdir()
    with pytest.raises(CarekitError, match=r"holds no \.tif"):
        match_files([tmp_path / "low"], tmp_path / "high")


def test_mismatched_pair_shapes(tmp_path):
    write(tmp_path / "high", "a.tif", np.ones((8, 9), np.uint16))
    write(tmp_path / "low", "a.tif", np.ones((8, 8), np.uint16))
    with pytest.raises(CarekitError, match=r"a\.tif: input shape \(8, 8\) and target shape \(8, 9\) differ along X"):
        load_pairs([tmp_path / "low"], tmp_path / "high", "YX", "YX")


def test_samples_and_channels_are_split_and_kept():
    low = np.zeros((3, 2, 8, 8))  # T C Y X
    high = np.zeros((3, 1, 8, 8))
    pairs = load_pairs(low, high, "TCYX", "YX")
    assert len(pairs) == 3
    assert pairs[0].low.shape == (2, 8, 8) and pairs[0].high.shape == (1, 8, 8)


def test_nan_in_training_target_is_refused():
    high = np.ones((8, 8))
    high[0, 0] = np.inf
    with pytest.raises(CarekitError, match=r"target\): 1 NaN or infinite"):
        load_pairs(np.ones((8, 8)), high, "YX", "YX")
