import os

import numpy as np
import pytest
import tifffile

from carekit.errors import CarekitError
from carekit.io import atomic_path, list_images, read_image, read_with_axes, write_tiff


def test_tiff_round_trip_keeps_axes(tmp_path):
    x = np.random.default_rng(0).random((3, 8, 9)).astype(np.float32)
    write_tiff(tmp_path / "a.tif", x, "ZYX")
    y, axes = read_image(tmp_path / "a.tif")
    assert axes == "ZYX"
    np.testing.assert_array_equal(x, y)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.tif"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash while writing")
    assert os.listdir(tmp_path) == []


def test_corrupt_tiff_is_named(tmp_path):
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00garbage")
    with pytest.raises(CarekitError, match=r"broken\.tif: cannot read as TIFF"):
        read_image(bad)


def test_nan_in_input_is_refused(tmp_path):
    x = np.ones((8, 8), np.float32)
    x[2, 3] = np.nan
    tifffile.imwrite(tmp_path / "n.tif", x)
    with pytest.raises(CarekitError, match=r"n\.tif: 1 NaN"):
        read_with_axes(tmp_path / "n.tif", "YX")


def test_unknown_axes_need_flag(tmp_path):
    tifffile.imwrite(tmp_path / "q.tif", np.zeros((3, 8, 8), np.uint16))
    with pytest.raises(CarekitError, match="pass --axes"):
        read_with_axes(tmp_path / "q.tif", None)


def test_empty_folder_is_explained(tmp_path):
    with pytest.raises(CarekitError, match=r"holds no \.tif"):
        list_images(tmp_path)


def test_unwritable_output_is_refused(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(CarekitError, match="cannot create folder"):
        write_tiff(blocker / "x.tif", np.zeros((4, 4), np.float32), "YX")
    assert blocker.read_text() == "a file where a folder should be"


def test_output_that_is_a_folder_is_refused(tmp_path):
    with pytest.raises(CarekitError, match="is a folder"):
        write_tiff(tmp_path, np.zeros((4, 4), np.float32), "YX")
