"""The network's output mixed with a Gaussian filter of its input, fitted on validation after training."""

import json

import numpy as np
import pytest
import torch
from conftest import TINY, blobs, noisy, run_package
from scipy.ndimage import gaussian_filter

import carekit
from carekit.errors import CarekitError
from carekit.nets.unet import UNet, build_unet, gaussian

SETTINGS = {**TINY, "patch_size": (32, 32), "init": "scratch", "progress": False}


@pytest.fixture(scope="module")
def pair():
    clean = blobs((128, 128), seed=3, density=0.01)
    return noisy(clean, peak=3), clean


@pytest.fixture(scope="module")
def short(tmp_path_factory, pair):
    """Ten steps: a network far from done, which a filter of its input helps."""
    folder = tmp_path_factory.mktemp("blend") / "m"
    return carekit.train(*pair, "YX", folder, epochs=1, steps_per_epoch=10, **SETTINGS)


@pytest.mark.parametrize("sigma", [(1.5, 1.5), (0.6, 2.5), (0.0, 1.0, 1.0), (0.75, 1.5, 3.0)])
def test_the_filter_is_scipys_gaussian_with_nearest_edges(sigma):
    rng = np.random.default_rng(0)
    x = rng.random((2, 3, *((9,) if len(sigma) == 3 else ()), 23, 31)).astype(np.float32)
    ours = gaussian(torch.from_numpy(x), sigma).numpy()
    want = gaussian_filter(x, (0, 0, *sigma), mode="nearest", truncate=4.0)
    np.testing.assert_allclose(ours, want, atol=2e-6)


def test_a_blended_network_adds_the_filter_per_channel():
    torch.manual_seed(0)
    settings = {"sigma": [1.0, 2.0], "weight": [0.7, 0.4], "gain": [0.5, 1.5], "offset": [0.1, -0.2]}
    x = torch.rand(2, 2, 32, 32)
    for independent in (False, True):
        plain = build_unet(2, 2, 2, n_first=8, independent_channels=independent).eval()
        blended = build_unet(2, 2, 2, n_first=8, independent_channels=independent, filter_blend=settings).eval()
        blended.load_state_dict(plain.state_dict())  # the mix adds no weights
        with torch.no_grad():
            got, alone = blended(x), plain(x)
        smoothed = gaussian_filter(x.numpy(), (0, 0, 1.0, 2.0), mode="nearest")
        for c in range(2):
            want = settings["weight"][c] * alone[:, c] + settings["gain"][c] * smoothed[:, c] + settings["offset"][c]
            np.testing.assert_allclose(got[:, c].numpy(), want.numpy(), atol=1e-5)


def test_the_halo_covers_a_wide_filter():
    net = UNet(2, 1, 1, depth=1, n_first=4, kernel_size=1, n_conv=1)
    assert net.halo()[0] < 12
    net.set_filter_blend({"sigma": [3.0, 3.0], "weight": [0.5], "gain": [0.5], "offset": [0.0]})
    assert net.halo() == (12, 12)  # 4 sigma, on the pooling grid
    with pytest.raises(ValueError, match="point network"):
        UNet(2, 1, 1, probabilistic=True, filter_blend={"sigma": [1, 1], "weight": [1], "gain": [0], "offset": [0]})


def test_a_short_training_keeps_a_mix_that_scores_better_and_says_so(short, pair):
    blend = short.config.blend
    assert blend is not None and blend["gain_db"] >= 0.02
    assert blend["blended_psnr"] - blend["network_psnr"] == pytest.approx(blend["gain_db"])
    assert 0 < blend["weight"][0] < 1 and blend["gain"][0] > 0  # both parts carry weight
    report = short.config.baseline  # the margin is the mix's: it scores what prediction returns
    assert report["network_psnr"] == pytest.approx(blend["blended_psnr"], abs=0.02)
    assert report["network_alone_margin_db"] == pytest.approx(blend["network_psnr"] - report["best_classical"]["psnr"])
    assert "mixed with a Gaussian filter of the input" in short.summary()
    if report["network_alone_margin_db"] <= 0:  # a mix that leans on the filter is flagged all the same
        [warning] = short.warnings()
        assert "does not beat a simple filter" in warning
    # prediction applies the mix: the reloaded model gives the same restoration, tiled or not
    image = noisy(blobs((96, 112), seed=8), peak=3, seed=9)
    again = carekit.load(short.directory)
    whole = again.predict(image, "YX", precision="float32")
    np.testing.assert_allclose(whole, short.predict(image, "YX", precision="float32"), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(again.predict(image, "YX", precision="float32", n_tiles=(2, 2)), whole, atol=1e-4)
    again.net.set_filter_blend(None)
    again.weights_changed()
    assert np.abs(again.predict(image, "YX", precision="float32") - whole).max() > 0.01 * np.ptp(whole)


def test_the_mix_improves_restoration_of_unseen_images(short, pair):
    """On a fresh image (not the validation patches it was fitted on), the mix scores better than the
    network alone."""
    from carekit.metrics import evaluate

    clean = blobs((128, 128), seed=21, density=0.01)
    image = noisy(clean, peak=3, seed=22)
    model = carekit.load(short.directory)
    mixed = evaluate(model.predict(image, "YX", precision="float32"), clean)["psnr"]
    model.net.set_filter_blend(None)
    model.weights_changed()
    alone = evaluate(model.predict(image, "YX", precision="float32"), clean)["psnr"]
    assert mixed > alone + 0.1, (mixed, alone)


def test_no_filter_blend_keeps_the_network_alone(tmp_path, pair):
    model = carekit.train(*pair, "YX", tmp_path / "m", epochs=1, steps_per_epoch=10, filter_blend=False, **SETTINGS)
    assert model.config.blend is None and "network_alone_margin_db" not in model.config.baseline
    assert "mixed with" not in model.summary()


def edited_copy(model, folder, edit) -> None:
    """A copy of ``model``'s folder in ``folder`` with ``edit`` applied to its config.json."""
    import shutil

    shutil.copytree(model.directory, folder)
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


def test_a_damaged_blend_in_the_model_folder_is_refused(short, tmp_path):
    edited_copy(short, tmp_path / "m", lambda c: c["blend"].update(weight=["heavy"]))
    with pytest.raises(CarekitError, match="blend must hold"):
        carekit.load(tmp_path / "m")


def test_a_package_of_a_blended_model_reproduces_carekit(short):
    pytest.importorskip("bioimageio.core")
    from bioimageio.core import test_model

    from carekit.bioimageio import export

    package = export(short, short.directory.parent / "blended.zip", author="Test Author")
    assert test_model(package).status == "passed"
    fresh = noisy(blobs((83, 101), seed=11), peak=3, seed=12)
    ours = short.predict(fresh, "YX", precision="float32")
    via_onnx, via_script = run_package(package, fresh)
    for other in (via_onnx, via_script):
        assert np.abs(other - ours).max() < 1e-3 * np.ptp(ours)


def test_the_int8_copy_belongs_to_the_network_with_its_mix(short):
    import copy

    from carekit import int8

    net = copy.deepcopy(short.net)
    kept = int8.fingerprint(net)
    assert short.config.int8.get("weights") in (None, kept)  # made after the mix was fitted
    net.set_filter_blend(None)
    assert int8.fingerprint(net) != kept  # without the mix the copy no longer matches: it is not used


def test_a_resumed_training_trains_without_the_mix_and_fits_it_anew(tmp_path, pair):
    from carekit.trainer import Callback

    seen = []

    class Watch(Callback):
        def on_step(self, trainer, step, loss):
            seen.append(trainer.net.blend)

    first = carekit.train(*pair, "YX", tmp_path / "m", epochs=1, steps_per_epoch=10, **SETTINGS)
    assert first.config.blend is not None
    again = carekit.train(*pair, "YX", tmp_path / "m", epochs=2, steps_per_epoch=10, resume=True, callbacks=[Watch()],
                          **SETTINGS)  # fmt: skip
    assert seen and all(b is None for b in seen)
    assert again.config.blend is None or again.config.blend["gain_db"] >= 0.02  # fitted to the weights it keeps


@pytest.mark.parametrize("change", [{"mode": "synthetic"}, {"n_channel_in": 2}])
def test_a_blend_where_the_model_takes_none_is_refused(short, tmp_path, change):
    edited_copy(short, tmp_path / "m", lambda c: c.update(change))
    with pytest.raises(CarekitError, match="blend"):
        carekit.load(tmp_path / "m")
