"""The int8 copy: made at the end of training, kept only where it scores within 0.05 dB of float32,
used where asked for or where it measures faster, never for other weights."""

import json

import numpy as np
import pytest
from conftest import TINY, blobs, noisy

import carekit
from carekit import int8, quantize
from carekit.baselines import mean_psnr
from carekit.cli import main
from carekit.errors import CarekitError

SETTINGS = {**TINY, "patch_size": (32, 32), "init": "scratch", "precision": "float32"}


@pytest.fixture(scope="module")
def pair():
    clean = blobs((128, 128), seed=4, density=0.02)
    return noisy(clean, peak=20), clean


@pytest.fixture(scope="module")
def trained(tmp_path_factory, pair):
    folder = tmp_path_factory.mktemp("int8") / "m"
    carekit.train(*pair, "YX", folder, epochs=3, steps_per_epoch=30, progress=False, **SETTINGS)
    return folder


def test_training_keeps_an_int8_copy_that_restores_within_the_tolerance(trained, pair):
    report = json.loads((trained / "config.json").read_text())["int8"]
    assert report["kept"] and (trained / int8.FILE).is_file()
    assert report["gap_db"] <= int8.TOLERANCE_DB and report["psnr_float32"] - report["psnr_int8"] == pytest.approx(
        report["gap_db"]
    )
    model = carekit.load(trained)
    assert "convolutions in int8" in model.summary() and "dB against float32 on its validation data" in model.summary()
    low, clean = pair
    exact = model.predict(low, "YX", precision="float32")
    quantized = model.predict(low, "YX", precision="int8")
    assert model._engine.precision == "int8"
    assert not np.array_equal(exact, quantized)  # it is another network pass ...
    assert abs(mean_psnr(quantized, clean) - mean_psnr(exact, clean)) < int8.TOLERANCE_DB  # ... as good


def test_auto_uses_the_int8_copy_only_where_it_measures_faster(trained, monkeypatch, tmp_path):
    monkeypatch.setattr(int8, "time_pass", lambda *a, **k: 1.0)  # the default precision's pass
    for seconds in (0.5, 0.95):
        monkeypatch.setattr(int8, "time_int8", lambda *a, s=seconds: s)
        monkeypatch.setenv("CAREKIT_CACHE", str(tmp_path / f"cache-{seconds}"))
        model = carekit.load(trained)
        engine = model.engine("cpu", "auto")
        assert (engine.precision == "int8") == (seconds <= int8.INT8_GAIN)
        if engine.precision == "int8":
            assert "int8 takes 0.50x" in engine.reason
        assert model.engine("cpu", "float32").precision == "float32"  # asked for: never int8
        cached = json.loads((tmp_path / f"cache-{seconds}" / "int8.json").read_text())
        assert [t["int8"] for t in cached.values()] == [seconds]


def test_a_copy_made_from_other_weights_is_never_used(trained):
    model = carekit.load(trained)
    assert model.int8_net() is not None
    with __import__("torch").no_grad():
        next(model.net.parameters()).add_(0.01)
    model.weights_changed()
    assert model.int8_net() is None
    with pytest.raises(CarekitError, match="missing or was made from other weights"):
        model.engine("cpu", "int8")


def test_a_copy_that_loses_more_than_the_tolerance_is_not_kept(tmp_path, pair, monkeypatch):
    monkeypatch.setattr(quantize, "TOLERANCE_DB", -1.0)  # no copy can gain a dB over float32
    model = carekit.train(*pair, "YX", tmp_path / "m", epochs=1, steps_per_epoch=10, progress=False, **SETTINGS)
    report = model.config.int8
    assert not report["kept"] and not (tmp_path / "m" / int8.FILE).exists()
    assert report["float_convolutions"] >= 0 and "gap_db" in report
    assert "no int8 copy (the best lost" in model.summary()
    with pytest.raises(CarekitError, match=r"lost .* dB against float32 on validation"):
        model.predict(pair[0], "YX", precision="int8")
    assert model.engine("cpu", "auto").precision != "int8"


def test_no_int8_and_modes_without_clean_targets_make_no_copy(tmp_path, pair):
    model = carekit.train(*pair, "YX", tmp_path / "m", epochs=1, steps_per_epoch=5, progress=False, int8=False,
                          **SETTINGS)  # fmt: skip
    assert model.config.int8 == {"kept": False, "skipped": "turned off (--no-int8)"}
    assert not (tmp_path / "m" / int8.FILE).exists()


def test_cli_int8_without_a_copy_is_one_clear_line(tmp_path, pair, capsys):
    import tifffile

    carekit.train(*pair, "YX", tmp_path / "m", epochs=1, steps_per_epoch=5, progress=False, int8=False, **SETTINGS)
    tifffile.imwrite(tmp_path / "in.tif", pair[0])
    tifffile.imwrite(tmp_path / "high.tif", pair[1])
    args = ["predict", "--model", str(tmp_path / "m"), "--input", str(tmp_path / "in.tif"), "--output",
            str(tmp_path / "out.tif"), "--precision", "int8", "--quiet"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no int8 copy (turned off (--no-int8))" in err and "--precision auto" in err
    assert not (tmp_path / "out.tif").exists()
    bad = ["train", "--low", str(tmp_path / "in.tif"), "--high", str(tmp_path / "high.tif"), "--axes", "YX", "--model",
           str(tmp_path / "t"), "--precision", "int8", "--quiet"]  # fmt: skip
    assert main(bad) == 2
    assert "precision must be one of auto, float32, bfloat16, float16" in capsys.readouterr().err


def test_a_damaged_copy_is_one_clear_line_and_auto_predicts_without_it(tmp_path, trained, pair, capsys):
    import shutil

    import tifffile

    folder = tmp_path / "m"
    shutil.copytree(trained, folder)
    (folder / int8.FILE).write_bytes(b"not an onnx graph")
    tifffile.imwrite(tmp_path / "in.tif", pair[0])
    args = ["predict", "--model", str(folder), "--input", str(tmp_path / "in.tif"), "--quiet"]
    assert main([*args, "--output", str(tmp_path / "a.tif"), "--precision", "int8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot load the int8 network" in err and not (tmp_path / "a.tif").exists()
    with pytest.warns(UserWarning, match="cannot load the int8 network"):
        restored = carekit.load(folder).predict(pair[0], "YX", precision="auto", device="cpu")
    exact = carekit.load(folder).predict(pair[0], "YX", precision="float32", device="cpu")
    assert abs(mean_psnr(restored, pair[1]) - mean_psnr(exact, pair[1])) < 0.05


def test_info_system_says_what_int8_copies_get_here():
    import torch

    from carekit import system
    from carekit.engine import Engine

    cpu = torch.device("cpu")
    vnni = system.int8_line(["avx512f", "avx512_vnni"], Engine(cpu, "float32"))
    assert vnni.startswith("8-bit dot products (avx512_vnni)") and "0.8x of float32's time" in vnni
    assert system.int8_line(["avx2"], Engine(cpu, "bfloat16")).startswith("no 8-bit dot products listed")
    assert system.int8_line(None, Engine(torch.device("cuda"), "bfloat16")).startswith("not on cuda")
    text = system.report("cpu", "auto", measure=False)
    assert [line for line in text.splitlines() if line.startswith("int8 ")]


def test_each_channels_network_keeps_its_own_ends_in_float32():
    convs = [f"c{i}" for i in range(6)]
    assert quantize.ends(convs, 0, 0) == []
    assert quantize.ends(convs, 1, 2) == ["c0", "c4", "c5"]
    assert quantize.ends(convs, 0, 1, members=2) == ["c2", "c5"]


def test_a_failed_quantization_keeps_the_trained_model_and_says_why(tmp_path, pair, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no kernel for this operator\nmore lines")

    monkeypatch.setattr(quantize, "quantized", broken)
    model = carekit.train(*pair, "YX", tmp_path / "m", epochs=1, steps_per_epoch=5, progress=False, **SETTINGS)
    assert model.config.int8 == {"kept": False, "skipped": "quantization failed (no kernel for this operator)"}
    assert (tmp_path / "m" / "weights.safetensors").exists() and not (tmp_path / "m" / int8.FILE).exists()
    assert np.isfinite(model.predict(pair[0], "YX")).all()
