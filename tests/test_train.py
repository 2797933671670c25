import csv

import numpy as np
import pytest
from conftest import TINY, blobs, noisy
from scipy.ndimage import gaussian_filter

import carekit
from carekit.errors import CarekitError
from carekit.metrics import evaluate


def read_history(folder):
    with open(folder / "history.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained_2d(tmp_path_factory):
    clean = blobs((128, 128), seed=3, density=0.01)
    low = noisy(clean, peak=3)
    folder = tmp_path_factory.mktemp("m2d")
    model = carekit.train(
        low, clean, "YX", folder / "m", epochs=4, steps_per_epoch=40, patch_size=(32, 32), progress=False, **TINY
    )
    return model, folder / "m"


def test_restoration_improves_psnr_2d(trained_2d):
    model, _ = trained_2d
    clean = blobs((96, 96), seed=11, density=0.01)  # an image the network never saw
    low = noisy(clean, peak=3, seed=12)
    before = evaluate(low, clean)["psnr"]
    after = evaluate(model.predict(low, "YX"), clean)["psnr"]
    assert after > before + 3.0, (before, after)


def test_restoration_improves_psnr_3d(tmp_path):
    clean = blobs((16, 40, 96), seed=5, density=0.01, sigma=2.0)
    low = noisy(clean, peak=3)
    model = carekit.train(
        low, clean, "ZYX", tmp_path / "m", epochs=4, steps_per_epoch=40, patch_size=(8, 32, 32), progress=False, **TINY
    )
    test_clean = blobs((16, 48, 48), seed=21, density=0.01, sigma=2.0)
    test_low = noisy(test_clean, peak=3, seed=22)
    before = evaluate(test_low, test_clean)["psnr"]
    after = evaluate(model.predict(test_low, "ZYX"), test_clean)["psnr"]
    assert after > before + 1.5, (before, after)


def test_save_load_gives_identical_predictions(trained_2d):
    model, folder = trained_2d
    img = noisy(blobs((64, 80), seed=8))
    again = carekit.load(folder)
    np.testing.assert_array_equal(model.predict(img, "YX"), again.predict(img, "YX"))
    assert again.config == model.config


def test_model_folder_contents(trained_2d):
    _, folder = trained_2d
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "weights.safetensors", "last.safetensors", "history.csv", "training.png"} <= names
    assert not [n for n in names if n.endswith(".partial")]
    rows = read_history(folder)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert float(rows[-1]["val_loss"]) < float(rows[0]["val_loss"])


def test_output_is_in_target_units(trained_2d):
    model, _ = trained_2d
    clean = blobs((96, 96), seed=11, density=0.01)
    out = model.predict(noisy(clean, peak=3, seed=12), "YX")
    # targets span ~0..1 while inputs are photon counts (~0..6): output must follow the target
    assert 0.5 < np.percentile(out, 99.9) < 1.5


def test_time_budget_and_resume(tmp_path):
    clean = blobs((64, 64), seed=2)
    low = noisy(clean)
    kw = {"patch_size": (32, 32), "progress": False, **TINY}
    carekit.train(low, clean, "YX", tmp_path / "m", epochs=50, steps_per_epoch=5, time_budget=1e-9, **kw)
    rows = read_history(tmp_path / "m")
    assert len(rows) == 1 and int(rows[0]["steps"]) == 1  # stopped after the first step
    carekit.train(low, clean, "YX", tmp_path / "m", epochs=3, resume=True, **kw)
    rows = read_history(tmp_path / "m")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]


def test_refuses_to_overwrite_a_model(trained_2d):
    _, folder = trained_2d
    with pytest.raises(CarekitError, match="already holds a trained model"):
        carekit.train(np.zeros((64, 64)), np.zeros((64, 64)), "YX", folder, progress=False)


def test_resume_without_checkpoint(tmp_path):
    with pytest.raises(CarekitError, match="no checkpoint to resume"):
        carekit.train(np.zeros((64, 64)), np.zeros((64, 64)), "YX", tmp_path, resume=True)


def test_unknown_setting():
    with pytest.raises(CarekitError, match="unknown setting"):
        carekit.train(np.zeros((64, 64)), np.zeros((64, 64)), "YX", "unused", kernal_size=3)


def test_the_loss_is_chosen_by_name_in_the_api_and_the_cli(tmp_path):
    import tifffile

    from carekit.cli import main

    clean = blobs((96, 96), seed=4, density=0.01)
    low = noisy(clean, peak=3)
    settings = {"epochs": 1, "steps_per_epoch": 3, "patch_size": (32, 32), "progress": False, **TINY}
    losses = {}
    for name in ("mae", "mse"):
        model = carekit.train(low, clean, "YX", tmp_path / name, loss=name, **settings)
        assert model.config.train.loss == name
        losses[name] = float(read_history(tmp_path / name)[0]["loss"])
    assert losses["mse"] < 0.9 * losses["mae"]  # squared errors of normalised values below 1 are smaller
    tifffile.imwrite(tmp_path / "low.tif", low)
    tifffile.imwrite(tmp_path / "high.tif", clean)
    args = ["train", "--low", str(tmp_path / "low.tif"), "--high", str(tmp_path / "high.tif"), "--axes", "YX",
            "--model", str(tmp_path / "cli"), "--loss", "mae", "--epochs", "1", "--steps-per-epoch", "2",
            "--patch-size", "32,32", "--n-first", "8", "--precision", "float32", "--quiet"]  # fmt: skip
    assert main(args) == 0
    assert carekit.load(tmp_path / "cli").config.train.loss == "mae"


def test_denoising_trains_with_the_squared_error_unless_told(tmp_path):
    clean = blobs((96, 96), seed=4, density=0.01)
    settings = {"epochs": 1, "steps_per_epoch": 2, "patch_size": (32, 32), "progress": False, **TINY}
    model = carekit.train(noisy(clean, peak=3), clean, "YX", tmp_path / "m", **settings)
    assert model.config.train.loss == "mse"
    resumed = carekit.train(noisy(clean, peak=3), clean, "YX", tmp_path / "m", resume=True, **settings)
    assert resumed.config.train.loss == "mse"


def test_denoising_redraws_inputs_around_their_targets_unless_told(tmp_path):
    from carekit.modes.denoise import DENOISE_TRAINING

    clean = blobs((96, 96), seed=4, density=0.01)
    settings = {"epochs": 1, "steps_per_epoch": 2, "patch_size": (32, 32), "progress": False, **TINY}
    model = carekit.train(noisy(clean, peak=3), clean, "YX", tmp_path / "m", **settings)
    assert model.config.train.redraw == DENOISE_TRAINING["redraw"] > 0
    assert (model.config.redraw["pairs"], model.config.redraw["of"]) == (1, 1)
    assert "training inputs redrawn around their targets" in model.summary()
    off = carekit.train(noisy(clean, peak=3), clean, "YX", tmp_path / "off", redraw=0.0, **settings)
    assert off.config.redraw is None and "redrawn" not in off.summary()
    blurred = carekit.train(noisy(gaussian_filter(clean, 2), peak=30), clean, "YX", tmp_path / "b", **settings)
    assert blurred.config.redraw["pairs"] == 0 and "kept as acquired" in blurred.summary()


def test_default_networks_by_mode():
    from carekit.config import Config, NetConfig
    from carekit.modes.isotropic import AxialConfig
    from carekit.training import make_config

    plain = Config(axes="YX")  # residual and batch norm are chosen from the data when training starts
    assert (plain.net.kernel_size, plain.net.batch_norm, plain.net.residual) == (3, None, None)
    assert (plain.net.settled(True).residual, plain.net.settled(True).batch_norm) == (True, False)
    assert (plain.net.settled().residual, plain.net.settled().batch_norm) == (False, True)  # as built untrained
    # the other modes: kernel 3, batch norm and the residual, however the configuration is built
    axial = AxialConfig(factor=2.0)
    for mode, spatial in (("isotropic", "YX"), ("upsampling", "ZYX")):
        direct = Config(axes="ZYX", mode=mode, spatial=spatial, axial=axial).net
        built = make_config("ZYX", (1, 1), {"spatial": spatial}, mode, axial=axial).net
        assert direct == built and (built.kernel_size, built.batch_norm, built.residual) == (3, True, True)
    assert make_config("ZYX", (1, 1), {"spatial": "YX"}, "isotropic", axial=axial).train.patch_size == (96, 96)
    assert (plain.train.patch_size, plain.train.batch_size) == ((96, 96), 8)
    assert (Config(axes="ZYX").train.patch_size, Config(axes="ZYX").train.batch_size) == ((16, 64, 64), 4)
    prob = Config(axes="YX", net=NetConfig(probabilistic=True))  # the same network as a plain model's
    assert (prob.net.kernel_size, prob.net.batch_norm, prob.net.residual) == (3, None, None)
    assert prob.train.patch_size == (96, 96)
    chosen = Config(axes="YX", net=NetConfig(kernel_size=5, batch_norm=False), train={"batch_size": 4})
    assert (chosen.net.kernel_size, chosen.net.batch_norm, chosen.net.residual, chosen.train.batch_size) == (
        5,
        False,
        None,
        4,
    )


def test_residual_follows_how_close_inputs_are_to_targets(tmp_path):
    from carekit.config import RESIDUAL_FROM_DB
    from carekit.data.pairs import pairs_from_arrays
    from carekit.training import input_fidelity

    clean = blobs((64, 64), seed=3, density=0.01)
    kw = {"epochs": 1, "steps_per_epoch": 2, "patch_size": (32, 32), "progress": False, **TINY}
    chosen = {}
    for peak in (3, 1000):
        low = noisy(clean, peak=peak)
        assert (input_fidelity(pairs_from_arrays(low, clean, "YX", "YX")) >= RESIDUAL_FROM_DB) == (peak == 1000)
        config = carekit.train(low, clean, "YX", tmp_path / f"p{peak}", **kw).config
        # the jitter follows the residual, batch norm goes against it
        chosen[peak] = (config.net.residual, config.train.intensity_jitter, config.net.batch_norm)
    assert chosen == {3: (False, False, True), 1000: (True, True, False)}
    # asked for explicitly, the settings stand
    forced = carekit.train(noisy(clean, peak=3), clean, "YX", tmp_path / "forced", residual=True, **kw)
    assert (forced.config.net.residual, forced.config.net.batch_norm) == (True, False)
    both = carekit.train(noisy(clean, peak=3), clean, "YX", tmp_path / "both", residual=True, batch_norm=True, **kw)
    assert (both.config.net.residual, both.config.net.batch_norm) == (True, True)


def test_weight_average_follows_the_trained_weights():
    import torch

    from carekit.trainer import AveragedWeights

    net = torch.nn.Linear(3, 2)
    average = AveragedWeights(net, decay=0.9)
    start = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    average.update(net)  # first step: decay ramps from 2/11, not 0.9
    np.testing.assert_allclose(average.net.weight.numpy(), (start + 9 / 11).numpy(), rtol=1e-6)
    for _ in range(200):
        average.update(net)
    np.testing.assert_allclose(average.net.weight.numpy(), net.weight.detach().numpy(), atol=1e-6)
    assert not any(p.requires_grad for p in average.net.parameters())


@pytest.mark.parametrize("winner", ["ema", "net"])
def test_the_weights_kept_are_those_of_average_and_trained_that_validate_better(tmp_path, monkeypatch, winner):
    from safetensors.torch import load_file

    from carekit.trainer import Trainer, checkpoint_state

    def validate(self, net):  # the trained weights score 1 and the average 2, or the other way round
        return 1.0 if (net is self.net) == (winner == "net") else 2.0

    monkeypatch.setattr(Trainer, "validate", validate)
    clean = blobs((64, 64), seed=2)
    kw = {"patch_size": (32, 32), "progress": False, "ema": 0.9, **TINY}
    model = carekit.train(noisy(clean), clean, "YX", tmp_path / "m", epochs=1, steps_per_epoch=6, **kw)
    state = load_file(str(tmp_path / "m" / "last.safetensors"))
    saved = model.net.state_dict()
    for key in (k for k in saved if k.endswith("weight")):
        np.testing.assert_array_equal(saved[key].numpy(), state[f"{winner}.{key}"].numpy())
    history = checkpoint_state(tmp_path / "m" / "last.safetensors")["history"]
    assert history[-1]["averaged"] is (winner == "ema") and history[-1]["val_loss"] == 1.0


def test_a_non_finite_validation_loss_of_either_weights_ends_training_naming_it(tmp_path, monkeypatch):
    from carekit.trainer import Trainer

    monkeypatch.setattr(Trainer, "validate", lambda self, net: float("nan") if net is self.net else 1.0)
    clean = blobs((64, 64), seed=2)
    kw = {"patch_size": (32, 32), "progress": False, "ema": 0.9, **TINY}
    with pytest.raises(CarekitError, match="the validation loss became nan"):
        carekit.train(noisy(clean), clean, "YX", tmp_path / "m", epochs=1, steps_per_epoch=3, **kw)


def test_training_with_a_weight_average_saves_and_resumes_it(tmp_path):
    from safetensors.torch import load_file

    from carekit.training import make_config

    clean = blobs((64, 64), seed=2)
    low = noisy(clean)
    kw = {"patch_size": (32, 32), "progress": False, "ema": 0.9, **TINY}
    model = carekit.train(low, clean, "YX", tmp_path / "m", epochs=1, steps_per_epoch=6, **kw)
    assert model.config.train.ema == 0.9
    state = load_file(str(tmp_path / "m" / "last.safetensors"))
    # one epoch: the saved (best) weights are one of the average and the last trained weights
    saved = model.net.state_dict()
    key = next(k for k in saved if k.endswith("weight"))
    assert not np.array_equal(state[f"ema.{key}"].numpy(), state[f"net.{key}"].numpy())
    kept = "ema" if np.array_equal(saved[key].numpy(), state[f"ema.{key}"].numpy()) else "net"
    np.testing.assert_array_equal(saved[key].numpy(), state[f"{kept}.{key}"].numpy())
    assert int(state["ema_steps"][0]) == 6
    carekit.train(low, clean, "YX", tmp_path / "m", epochs=2, resume=True, **kw)
    assert int(load_file(str(tmp_path / "m" / "last.safetensors"))["ema_steps"][0]) == 12
    with pytest.raises(CarekitError, match="ema must be in"):
        make_config("YX", (1, 1), {"ema": 1.0})
    with pytest.raises(CarekitError, match="intensity_jitter must be"):
        make_config("YX", (1, 1), {"intensity_jitter": 1})
