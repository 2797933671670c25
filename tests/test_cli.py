import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from conftest import blobs, noisy

from carekit.cli import main

FAST = ["--epochs", "2", "--steps-per-epoch", "10", "--batch-size", "4", "--n-first", "8", "--kernel-size", "3"]
FAST += ["--patch-size", "32,32", "--precision", "float32", "--quiet"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    for sub in ("low", "high"):
        (root / sub).mkdir()
    for i in range(2):
        clean = blobs((80, 80), seed=i)
        tifffile.imwrite(root / "high" / f"img{i}.tif", (clean * 1000).astype(np.uint16))
        tifffile.imwrite(root / "low" / f"img{i}.tif", noisy(clean, seed=10 + i).astype(np.float32))
    return root


@pytest.fixture(scope="module")
def model_dir(folders):
    out = folders / "model"
    assert main(["train", "--low", str(folders / "low"), "--high", str(folders / "high"), "--axes", "YX",
                 "--model", str(out), *FAST]) == 0  # fmt: skip
    return out


def error_of(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("carekit: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_train_predict_evaluate_end_to_end(folders, model_dir, capsys):
    out = folders / "restored"
    assert (
        main(["predict", "--model", str(model_dir), "--input", str(folders / "low"), "--output", str(out), "--quiet"])
        == 0
    )
    restored = tifffile.imread(out / "img0.tif")
    assert restored.dtype == np.float32 and restored.shape == (80, 80)
    capsys.readouterr()
    assert main(["evaluate", "--prediction", str(out / "img0.tif"), "--truth", str(folders / "high" / "img0.tif")]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert set(scores) == {"nrmse", "psnr", "ssim"} and scores["psnr"] > 0


def test_info_reports_parameter_count(model_dir, capsys):
    assert main(["info", "--model", str(model_dir)]) == 0
    assert "parameters" in capsys.readouterr().out


def test_help_has_examples(capsys):
    for cmd in ("train", "predict", "evaluate", "demo"):
        assert main([cmd, "--help"]) == 0
        text = capsys.readouterr().out
        assert "examples:" in text and f"carekit {cmd}" in text


def test_entry_point_runs():
    done = subprocess.run([sys.executable, "-m", "carekit.cli", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("carekit ")


def test_wrong_axes(folders, capsys):
    err = error_of(capsys, ["train", "--low", str(folders / "low"), "--high", str(folders / "high"), "--axes", "ZYX",
                            "--model", str(folders / "never"), *FAST])  # fmt: skip
    assert "img0.tif" in err and "axes 'ZYX' name 3 dimensions" in err
    assert not (folders / "never").exists()


def test_missing_axes_for_prediction(folders, model_dir, tmp_path, capsys):
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((3, 40, 40), np.float32))
    err = error_of(capsys, ["predict", "--model", str(model_dir), "--input", str(tmp_path / "stack.tif"),
                            "--output", str(tmp_path / "o.tif")])  # fmt: skip
    assert "stack.tif: axes unknown" in err and "--axes" in err
    assert not (tmp_path / "o.tif").exists()


def test_pair_shape_mismatch(tmp_path, capsys):
    for sub, shape in (("low", (40, 40)), ("high", (40, 41))):
        (tmp_path / sub).mkdir()
        tifffile.imwrite(tmp_path / sub / "a.tif", np.ones(shape, np.float32))
    err = error_of(capsys, ["train", "--low", str(tmp_path / "low"), "--high", str(tmp_path / "high"), "--axes", "YX",
                            "--model", str(tmp_path / "m"), *FAST])  # fmt: skip
    assert "a.tif" in err and "differ along X" in err
    assert not (tmp_path / "m").exists()


def test_nan_input(model_dir, tmp_path, capsys):
    img = np.ones((40, 40), np.float32)
    img[5, 5] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", img)
    err = error_of(capsys, ["predict", "--model", str(model_dir), "--input", str(tmp_path / "nan.tif"),
                            "--output", str(tmp_path / "o.tif"), "--axes", "YX"])  # fmt: skip
    assert "nan.tif: 1 NaN" in err
    assert not (tmp_path / "o.tif").exists()


def test_empty_and_unmatched_folders(folders, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    err = error_of(capsys, ["train", "--low", str(tmp_path / "empty"), "--high", str(folders / "high"), "--axes", "YX",
                            "--model", str(tmp_path / "m"), *FAST])  # fmt: skip
    assert "empty: folder holds no .tif/.tiff files" in err
    (tmp_path / "odd").mkdir()
    tifffile.imwrite(tmp_path / "odd" / "other.tif", np.ones((40, 40), np.float32))
    err = error_of(capsys, ["train", "--low", str(tmp_path / "odd"), "--high", str(folders / "high"), "--axes", "YX",
                            "--model", str(tmp_path / "m"), *FAST])  # fmt: skip
    assert "other.tif: no target named other.tif" in err
    assert not (tmp_path / "m").exists()


def test_unreadable_tiff(model_dir, tmp_path, capsys):
    (tmp_path / "bad.tif").write_bytes(b"MM\x00*not a tiff at all")
    err = error_of(capsys, ["predict", "--model", str(model_dir), "--input", str(tmp_path / "bad.tif"),
                            "--output", str(tmp_path / "o.tif"), "--axes", "YX"])  # fmt: skip
    assert "bad.tif: cannot read as TIFF" in err


def test_patch_larger_than_image(folders, tmp_path, capsys):
    err = error_of(capsys, ["train", "--low", str(folders / "low"), "--high", str(folders / "high"), "--axes", "YX",
                            "--model", str(tmp_path / "m"), *FAST, "--patch-size", "128,128"])  # fmt: skip
    assert "smaller than the patch size (128, 128)" in err
    assert not (tmp_path / "m").exists()


def test_unwritable_output(folders, model_dir, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    err = error_of(capsys, ["predict", "--model", str(model_dir), "--input", str(folders / "low" / "img0.tif"),
                            "--output", str(blocker / "o.tif")])  # fmt: skip
    assert "cannot create folder" in err and "--output" in err


def test_incompatible_model_version(model_dir, tmp_path, capsys):
    import shutil

    copy = tmp_path / "future"
    shutil.copytree(model_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    config["format_version"] = 99
    (copy / "config.json").write_text(json.dumps(config))
    err = error_of(capsys, ["predict", "--model", str(copy), "--input", str(model_dir / "../low/img0.tif"),
                            "--output", str(tmp_path / "o.tif")])  # fmt: skip
    assert "model format 99" in err and "upgrade carekit" in err
    assert not (tmp_path / "o.tif").exists()


def test_missing_model_folder(tmp_path, capsys):
    err = error_of(capsys, ["info", "--model", str(tmp_path / "nope")])
    assert "no such model folder" in err


def test_train_flags_choose_the_paper_network(folders, tmp_path):
    out = tmp_path / "paper"
    assert main(["train", "--low", str(folders / "low"), "--high", str(folders / "high"), "--axes", "YX",
                 "--model", str(out), *FAST, "--no-batch-norm", "--residual", "--epochs", "1"]) == 0  # fmt: skip
    net = json.loads((out / "config.json").read_text())["net"]
    assert (net["batch_norm"], net["residual"]) == (False, True)


def test_train_flags_for_the_weight_average_and_fixed_percentiles(folders, tmp_path):
    out = tmp_path / "ema"
    flags = ["--ema", "0.9", "--no-intensity-jitter", "--epochs", "1"]
    assert main(["train", "--low", str(folders / "low"), "--high", str(folders / "high"), "--axes", "YX",
                 "--model", str(out), *FAST, *flags]) == 0  # fmt: skip
    train = json.loads((out / "config.json").read_text())["train"]
    assert (train["ema"], train["intensity_jitter"]) == (0.9, False)
