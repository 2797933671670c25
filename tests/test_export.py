"""bioimage.io export: the package passes bioimageio.core's test, and its weights reproduce carekit."""

import io
import zipfile

import numpy as np
import pytest
import tifffile
import torch
import yaml
from conftest import TINY, blobs, noisy, run_package

import carekit
from carekit.bioimageio import export
from carekit.cli import main
from carekit.nets.packaged import tensor_percentiles

pytest.importorskip("bioimageio.core")


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.ptp(b))


@pytest.fixture(scope="module")
def model2d(tmp_path_factory):
    clean = blobs((96, 96), seed=3)
    low, high = noisy(clean), clean * 800 + 100  # targets in other units: the de-normalisation matters
    folder = tmp_path_factory.mktemp("export") / "nuclei"
    return carekit.train(low, high, axes="YX", model_dir=folder, epochs=1, steps_per_epoch=30, patch_size=(32, 32),
                         progress=False, **TINY)  # fmt: skip


@pytest.fixture(scope="module")
def package2d(model2d):
    return export(model2d, model2d.directory.parent / "nuclei.zip", author="Test Author")


def test_percentiles_inside_the_network_match_numpy():
    rng = np.random.default_rng(0)
    for x in (rng.random((2, 3, 17, 29)), rng.integers(0, 4, (1, 2, 40, 9)), np.full((1, 1, 8, 8), 5.0)):
        x = x.astype(np.float32)
        lo, hi = tensor_percentiles(torch.from_numpy(x), 2.0, 99.8)
        want = np.percentile(x.reshape(*x.shape[:2], -1), [2.0, 99.8], axis=-1)
        np.testing.assert_allclose(lo.numpy(), want[0], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(hi.numpy(), want[1], rtol=1e-6, atol=1e-6)


def test_package_passes_the_bioimageio_model_test(package2d):
    from bioimageio.core import test_model

    summary = test_model(package2d)
    assert summary.status == "passed", summary.format()
    rdf = yaml.safe_load(zipfile.ZipFile(package2d).read("rdf.yaml"))
    assert set(rdf["weights"]) == {"onnx", "torchscript", "pytorch_state_dict"}
    assert rdf["cite"][0]["doi"] == "10.1038/s41592-018-0216-7"
    halo = [a["halo"] for a in rdf["outputs"][0]["axes"] if a["type"] == "space"]
    assert all(h > 0 for h in halo)


def test_weights_match_carekit_outside_carekit(model2d, package2d):
    """ONNX Runtime and TorchScript, reading the package only, reproduce carekit predict on a fresh image."""
    fresh = noisy(blobs((83, 101), seed=11), seed=12)
    ours = model2d.predict(fresh, "YX", precision="float32")
    via_onnx, via_script = run_package(package2d, fresh)
    assert relative_error(via_onnx, ours) < 1e-3
    assert relative_error(via_script, ours) < 1e-3
    assert np.ptp(ours) > 100  # in target units, not normalised ones


def test_predict_runs_a_package_from_the_command_line(model2d, package2d, tmp_path, capsys):
    fresh = noisy(blobs((70, 90), seed=21), seed=22)
    tifffile.imwrite(tmp_path / "in.tif", fresh.T.astype(np.float32))  # stored as XY
    assert main(["predict", "--model", str(package2d), "--input", str(tmp_path / "in.tif"), "--axes", "XY",
                 "--output", str(tmp_path / "out.tif")]) == 0  # fmt: skip
    restored = tifffile.imread(tmp_path / "out.tif")
    assert restored.shape == fresh.T.shape
    assert relative_error(restored.T, model2d.predict(fresh, "YX", precision="float32")) < 1e-3


def test_probabilistic_3d_package_exports_mean_and_scale(tmp_path):
    from bioimageio.core import test_model

    clean = blobs((24, 48, 48), seed=5)
    settings = {**TINY, "n_first": 4, "epochs": 1, "steps_per_epoch": 3, "patch_size": (8, 16, 16)}
    model = carekit.train(noisy(clean), clean, axes="ZYX", model_dir=tmp_path / "prob3d", probabilistic=True,
                          progress=False, **settings)  # fmt: skip
    out = export(model, tmp_path / "prob3d.zip", author="Test Author")
    assert test_model(out).status == "passed"
    rdf = yaml.safe_load(zipfile.ZipFile(out).read("rdf.yaml"))
    assert [t["id"] for t in rdf["outputs"]] == ["output", "scale"]
    sample = np.load(io.BytesIO(zipfile.ZipFile(out).read("test_input.npy")))
    mean, scale = model.predict_with_scale(sample[0, 0], "ZYX", precision="float32")
    from carekit.package import Package

    (p_mean, p_scale), axes = Package(out).predict(sample[0, 0], "ZYX")
    assert axes == "ZYX"
    assert relative_error(p_mean, mean) < 1e-3 and relative_error(p_scale, scale) < 1e-3


def test_export_errors(model2d, tmp_path, capsys):
    def error(argv):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("carekit: error: ") and "\n" not in err
        return err

    assert ".zip" in error(["export", "--model", str(model2d.directory), "--out", str(tmp_path / "m.tar")])
    assert not (tmp_path / "m.tar").exists()
    (tmp_path / "broken.zip").write_bytes(b"not a zip")
    tifffile.imwrite(tmp_path / "in.tif", np.zeros((64, 64), np.float32))
    err = error(["predict", "--model", str(tmp_path / "broken.zip"), "--input", str(tmp_path / "in.tif"),
                 "--output", str(tmp_path / "out.tif")])  # fmt: skip
    assert "broken.zip" in err
    tifffile.imwrite(tmp_path / "small.tif", np.ones((10, 10), np.float32))
    package = tmp_path.parent / "nuclei.zip" if (tmp_path.parent / "nuclei.zip").exists() else None
    if package is None:
        package = export(model2d, tmp_path / "n.zip", author="Test Author")
    # smaller than the package's minimum: padded to it (as bioimage.io consumers do) and cropped back
    assert main(["predict", "--model", str(package), "--input", str(tmp_path / "small.tif"), "--output",
                 str(tmp_path / "small_out.tif")]) == 0  # fmt: skip
    assert tifffile.imread(tmp_path / "small_out.tif").shape == (10, 10)
    assert "--uncertainty" in error(["predict", "--model", str(package), "--input", str(tmp_path / "in.tif"),
                                     "--output", str(tmp_path / "o.tif"), "--uncertainty", str(tmp_path)])  # fmt: skip
    assert not (tmp_path / "o.tif").exists()


def test_n2v_package_with_a_network_per_channel_passes_and_reproduces_carekit(tmp_path):
    """N2V2's network (blur pooling, no top skip), one per channel, traced and exported to ONNX."""
    from bioimageio.core import test_model

    from carekit.modes.n2v import train_n2v
    from carekit.package import Package

    clean = np.stack([blobs((64, 64), seed=5), blobs((64, 64), seed=6)])
    model = train_n2v(noisy(clean), "CYX", tmp_path / "n2v", independent_channels=True, epochs=1, steps_per_epoch=3,
                      patch_size=(32, 32), progress=False, **TINY)  # fmt: skip
    out = export(model, tmp_path / "n2v.zip", author="Test Author")
    assert test_model(out).status == "passed"
    rdf = yaml.safe_load(zipfile.ZipFile(out).read("rdf.yaml"))
    assert rdf["cite"][0]["doi"] == "10.1109/CVPR.2019.00223"
    fresh = noisy(np.stack([blobs((75, 90), seed=7), blobs((75, 90), seed=8)]), seed=9)
    restored, axes = Package(out).predict(fresh, "CYX")
    assert axes == "CYX"
    model.config.n2v.posterior = False  # a package holds the network's estimate, without the noisy pixel's share
    assert relative_error(restored, model.predict(fresh, "CYX", precision="float32")) < 1e-3


def test_predict_array_runs_a_package(model2d, package2d):
    from carekit import app

    fresh = noisy(blobs((70, 90), seed=31), seed=32)
    restored = app.predict_array(package2d, fresh, "YX", spacing={"Y": 0.4, "X": 0.5})
    assert restored.axes == "YX" and restored.spacing == {"Y": 0.4, "X": 0.5} and restored.distribution is None
    assert relative_error(restored.mean, model2d.predict(fresh, "YX", precision="float32")) < 1e-3
    with pytest.raises(carekit.CarekitError, match=r"tta need a carekit model folder, not a bioimage\.io package"):
        app.predict_array(package2d, fresh, "YX", tta=True)
