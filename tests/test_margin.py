"""Every training reports how it does against the best simple filter on its own validation data."""

import json

import pytest
from conftest import TINY, blobs, noisy

import carekit
from carekit.cli import main

SETTINGS = {**TINY, "patch_size": (32, 32), "init": "scratch"}


@pytest.fixture(scope="module")
def pair():
    clean = blobs((128, 128), seed=3, density=0.01)
    return noisy(clean, peak=3), clean


def test_three_steps_lose_to_the_filter_and_say_so(tmp_path, pair):
    model = carekit.train(*pair, "YX", tmp_path / "m", epochs=1, steps_per_epoch=3, progress=False, **SETTINGS)
    report = model.config.baseline
    assert report["margin_db"] < 0 and report["best_classical"]["psnr"] > report["network_psnr"]
    assert report["best_classical"]["method"] in ("Gaussian filter", "non-local means")
    assert "over the best simple filter" in model.summary()
    [warning] = model.warnings()
    assert "does not beat a simple filter" in warning and "train longer" in warning
    saved = json.loads((tmp_path / "m" / "config.json").read_text())["baseline"]
    assert saved["margin_db"] == pytest.approx(report["margin_db"])
    assert carekit.load(tmp_path / "m").warnings() == [warning]


def test_a_trained_network_beats_the_filter_without_a_warning(tmp_path, pair):
    model = carekit.train(*pair, "YX", tmp_path / "m", epochs=4, steps_per_epoch=40, progress=False, **SETTINGS)
    assert model.config.baseline["margin_db"] > 0.5
    assert model.warnings() == []


def test_cli_training_prints_the_margin_and_the_warning(tmp_path, pair, capsys):
    import tifffile

    tifffile.imwrite(tmp_path / "low.tif", pair[0])
    tifffile.imwrite(tmp_path / "high.tif", pair[1])
    args = ["train", "--low", str(tmp_path / "low.tif"), "--high", str(tmp_path / "high.tif"), "--axes", "YX",
            "--model", str(tmp_path / "m"), "--epochs", "1", "--steps-per-epoch", "3", "--patch-size", "32,32",
            "--n-first", "8", "--init", "scratch", "--precision", "float32", "--quiet"]  # fmt: skip
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "over the best simple filter" in out
    assert err.count("carekit: warning: this model does not beat a simple filter") == 1
    assert main(["info", "--model", str(tmp_path / "m")]) == 0
    out, err = capsys.readouterr()
    assert "over the best simple filter" in out and "carekit: warning:" in err


def test_validation_patches_without_structure_are_left_out_of_the_margin(tmp_path, pair):
    """Sparse structures and no background rejection leave some validation targets empty (constant):
    they have no PSNR, so the margin is taken over the others, or said to be missing."""
    import numpy as np

    low, clean = pair
    sparse = clean.copy()
    sparse[64:] = 0  # the lower half empty, so is half of the validation slab at the right end
    settings = {**SETTINGS, "background_threshold": 0.0, "epochs": 1, "steps_per_epoch": 3, "progress": False}
    model = carekit.train(low, sparse, "YX", tmp_path / "m", **settings)
    assert np.isfinite(model.config.baseline["margin_db"])
    empty = np.zeros_like(clean)
    empty[:8, :8] = 1.0  # structure only in one training corner: every validation target is constant
    model = carekit.train(low, empty, "YX", tmp_path / "e", **settings)
    assert "no structure" in model.config.baseline["skipped"]
