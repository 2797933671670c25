"""The napari Restore and Calibrate-and-export widgets, the layers they add, the sample data and the manifest."""

import threading

import numpy as np
import pytest
import tifffile
import torch
from conftest import blobs, noisy, require_napari

require_napari()

from napari.layers import Image  # noqa: E402

from carekit import app, cli  # noqa: E402
from carekit.config import Config, NetConfig  # noqa: E402
from carekit.ensemble import Ensemble  # noqa: E402
from carekit.model import CARE  # noqa: E402
from carekit.modes.isotropic import AxialConfig, IsotropicCARE  # noqa: E402
from carekit.modes.projection import ProjectionCARE, ProjectionConfig  # noqa: E402
from carekit.napari.layers import infer_axes  # noqa: E402
from carekit.napari.restore_widget import RestoreWidget  # noqa: E402
from carekit.napari.trust_widget import TrustWidget  # noqa: E402

NET = NetConfig(depth=1, n_first=4, kernel_size=3)


def untrained(folder, cls=CARE, seed=0, **config):
    torch.manual_seed(seed)
    model = cls(Config(**{"net": NET, **config}))
    model.save(folder)
    return model


def restore(make_napari_viewer, qtbot, model, image, **layer):
    viewer = make_napari_viewer()
    viewer.add_image(image, name="raw", **layer)
    w = RestoreWidget(viewer)
    w.model.set(model)
    w.restore_button.click()
    qtbot.waitUntil(lambda: w.job is None, timeout=60_000)
    return viewer, w


def notes():
    from napari.utils.notifications import notification_manager

    return [(str(n.severity), str(n.message)) for n in notification_manager.records]


def test_isotropic_result_overlays_the_raw_stack(make_napari_viewer, qtbot, tmp_path):
    model = untrained(tmp_path / "iso", IsotropicCARE, axes="ZYX", mode="isotropic", spatial="YX",
                      axial=AxialConfig(factor=2.0))  # fmt: skip
    viewer, _ = restore(make_napari_viewer, qtbot, model.directory, blobs((5, 32, 32)), scale=(1.0, 0.5, 0.5),
                        translate=(3.0, 0, 0))  # fmt: skip
    out = viewer.layers["raw restored"]
    assert out.data.shape == (9, 32, 32)  # slice k at input position k / 2
    np.testing.assert_allclose(out.scale, (0.5, 0.5, 0.5))  # z scale divided by the factor
    np.testing.assert_allclose(out.translate, (3.0, 0, 0))
    raw = viewer.layers["raw"]
    assert np.allclose(out.data_to_world((8, 0, 0)), raw.data_to_world((4, 0, 0)))  # last slices coincide


def test_projection_result_drops_z_and_adds_the_height_map(make_napari_viewer, qtbot, tmp_path):
    model = untrained(tmp_path / "proj", ProjectionCARE, axes="ZYX", mode="projection", spatial="YX",
                      projection=ProjectionConfig(depth=1, n_first=2))  # fmt: skip
    viewer, _ = restore(make_napari_viewer, qtbot, model.directory, blobs((6, 32, 32)), scale=(2.0, 0.5, 0.25))
    for name in ("raw restored", "raw height"):
        assert viewer.layers[name].data.shape == (32, 32)
        np.testing.assert_allclose(viewer.layers[name].scale, (0.5, 0.25))


def test_probabilistic_model_adds_interval_width_and_samples(make_napari_viewer, qtbot, tmp_path):
    model = untrained(tmp_path / "prob", axes="YX", net=NetConfig(depth=1, n_first=4, probabilistic=True))
    viewer, w = restore(make_napari_viewer, qtbot, model.directory, noisy(blobs((48, 40))), scale=(0.2, 0.2))
    width, samples = viewer.layers["raw 90% interval width"], viewer.layers["raw samples"]
    assert width.visible and width.colormap.name == "inferno" and width.blending == "additive"
    assert width.data.shape == (48, 40) and (width.data > 0).all()
    assert samples.data.shape == (8, 48, 40) and np.ptp(samples.data, axis=0).mean() > 0  # samples differ
    np.testing.assert_allclose(samples.scale, (1.0, 0.2, 0.2))
    assert "disagreement" not in " ".join(layer.name for layer in viewer.layers)
    assert w.progress.value() == w.progress.maximum()


def test_ensemble_adds_the_disagreement_map(make_napari_viewer, qtbot, tmp_path):
    prob = NetConfig(depth=1, n_first=4, probabilistic=True)
    members = [untrained(tmp_path / "ens" / f"member-{i}", seed=i, axes="YX", net=prob) for i in range(2)]
    Ensemble(members, tmp_path / "ens").save_index()
    viewer, _ = restore(make_napari_viewer, qtbot, tmp_path / "ens", noisy(blobs((32, 32))))
    d = viewer.layers["raw disagreement D"]
    assert d.visible and d.colormap.name == "inferno" and 0 < d.data.max() <= 1
    assert not viewer.layers["raw 90% interval width"].visible  # D is the ensemble's map to look at


def test_cancel_and_errors_of_restoration(make_napari_viewer, qtbot, tmp_path, capsys, monkeypatch):
    model = untrained(tmp_path / "m", axes="YX")
    viewer = make_napari_viewer()
    viewer.add_image(blobs((256, 256)), name="raw")
    w = RestoreWidget(viewer)
    w.model.set(model.directory)
    clicked, predict = threading.Event(), app.predict_array

    def in_tiles(*args, progress, **keywords):  # 16 tiles, one at a time; the first waits for Cancel
        def tell(fraction):
            progress(fraction)
            clicked.wait(10)

        return predict(*args, progress=tell, n_tiles=(4, 4), memory=1, **keywords)

    monkeypatch.setattr(app, "predict_array", in_tiles)
    w.restore_button.click()
    qtbot.waitUntil(lambda: w.progress.value() > 0, timeout=60_000)
    w.cancel_button.click()
    clicked.set()
    qtbot.waitUntil(lambda: w.job is None, timeout=60_000)
    assert notes()[-1] == ("info", "restoration cancelled") and "raw restored" not in viewer.layers
    assert w.progress.value() < w.progress.maximum()
    monkeypatch.undo()

    w.model.set(tmp_path / "missing")
    w.restore_button.click()
    qtbot.waitUntil(lambda: w.job is None, timeout=60_000)
    tifffile.imwrite(tmp_path / "a.tif", blobs((16, 16)))
    assert cli.main(["predict", "--model", str(tmp_path / "missing"), "--input", str(tmp_path / "a.tif"),
                     "--output", str(tmp_path / "b.tif")]) == 2  # fmt: skip
    assert notes()[-1] == ("error", capsys.readouterr().err.strip().removeprefix("carekit: error: "))

    w.model.set(model.directory)
    w.factor.setText("2")  # a denoising model takes no z factor: the message of 'carekit predict --factor'
    w.restore_button.click()
    qtbot.waitUntil(lambda: w.job is None, timeout=60_000)
    assert notes()[-1][0] == "error" and notes()[-1][1].startswith("--factor applies to isotropic and upsampling")


def test_calibration_from_layers(make_napari_viewer, qtbot, tmp_path):
    model = untrained(tmp_path / "prob", axes="YX", net=NetConfig(depth=1, n_first=4, probabilistic=True))
    viewer = make_napari_viewer()
    clean = blobs((64, 64), seed=5)
    viewer.add_image(noisy(clean), name="held-out low")
    viewer.add_image(clean, name="held-out high")
    w = TrustWidget(viewer)
    w.model.set(model.directory)
    w.low.setCurrentText("held-out low")
    w.high.setCurrentText("held-out high")
    w.calibrate_button.click()
    qtbot.waitUntil(lambda: w.job is None, timeout=60_000)
    assert CARE.load(model.directory).config.calibration is not None
    assert (model.directory / "reliability.png").exists() and not w.diagram.pixmap().isNull()
    assert "ECE" in w.report.text() and notes()[-1] == ("info", f"calibration stored in {model.directory}")


def test_axes_from_layers():
    assert infer_axes(Image(np.zeros((4, 5)))) == "YX"
    assert infer_axes(Image(np.zeros((3, 4, 5)))) == "ZYX"
    assert infer_axes(Image(np.zeros((2, 3, 4, 5)))) == "TZYX"
    assert infer_axes(Image(np.zeros((3, 4, 5)), axis_labels=("t", "y", "x"))) == "TYX"
    assert infer_axes(Image(np.zeros((3, 4, 5)), metadata={"axes": "CYX"})) == "CYX"
    assert infer_axes(Image(np.zeros((4, 5, 3)), rgb=True)) == "YXC"


def test_manifest_gives_napari_the_widgets_and_samples(make_napari_viewer):
    viewer = make_napari_viewer()
    for name, cls in (("Train", "TrainWidget"), ("Restore", "RestoreWidget"), ("Calibrate and export", "TrustWidget")):
        _, widget = viewer.window.add_plugin_dock_widget("carekit", name)
        assert type(widget).__name__ == cls
    viewer.open_sample("carekit", "nuclei-anisotropic")
    layer = viewer.layers[-1]
    assert layer.data.shape == (15, 192, 192) and infer_axes(layer) == "ZYX"
    np.testing.assert_allclose(layer.scale, (0.29 * 4, 0.26, 0.26))


@pytest.mark.parametrize("name", ["nuclei", "nuclei-pair"])
def test_sample_data(make_napari_viewer, name):
    viewer = make_napari_viewer()
    viewer.open_sample("carekit", name)
    assert all(layer.data.shape[1:] == (192, 192) for layer in viewer.layers)
