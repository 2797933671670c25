import itertools
import json

import numpy as np
import pytest
import tifffile
import torch
from conftest import TINY, blobs, noisy

import carekit
from carekit.cli import main
from carekit.ensemble import Ensemble, calibrate, train_ensemble
from carekit.errors import CarekitError
from carekit.modes.denoise import train
from carekit.scalefit import fit_head
from carekit.uncertainty import Laplace, Mixture, coverage, disagreement, mixture_entropy, pit_table

PROB = {**TINY, "probabilistic": True, "patch_size": (32, 32), "progress": False}


def test_laplace_intervals_hold_their_level():
    rng = np.random.default_rng(0)
    dist = Laplace(np.full(200_000, 3.0), np.full(200_000, 0.5))
    x = dist.sample(1, rng)[0]
    lo, hi = dist.interval(0.9)
    assert np.mean((x >= lo) & (x <= hi)) == pytest.approx(0.9, abs=0.005)
    assert dist.quantile(0.5)[0] == pytest.approx(3.0)
    assert dist.variance[0] == pytest.approx(0.5) and dist.entropy()[0] == pytest.approx(1.0)


def test_disagreement_is_zero_for_identical_members():
    means = np.tile(np.random.default_rng(1).normal(size=(1, 50)), (5, 1))
    scales = np.tile(np.random.default_rng(2).uniform(0.1, 2, (1, 50)), (5, 1))
    assert np.abs(disagreement(means, scales)).max() < 1e-6


def test_disagreement_approaches_one_for_separated_members():
    means = np.arange(5, dtype=float)[:, None] * 100 * np.ones((1, 4))
    d = disagreement(means, np.full((5, 4), 0.01))
    assert d.min() > 0.99


def test_disagreement_grows_with_separation():
    d = [disagreement(np.array([[0.0], [s]]), np.ones((2, 1)))[0] for s in (0.0, 0.5, 2.0, 8.0)]
    assert d == sorted(d) and d[0] < 1e-6 and 0.3 < d[2] < 0.9


def test_mixture_entropy_matches_dense_integration():
    means, scales = np.array([[0.0], [1.5], [4.0]]), np.array([[0.3], [1.0], [0.7]])
    x = np.linspace(-20, 25, 400_001)
    pairs = zip(means[:, 0], scales[:, 0], strict=True)
    density = np.mean([np.exp(-np.abs(x - m) / b) / (2 * b) for m, b in pairs], axis=0)
    h = -np.trapezoid(density * np.log(np.maximum(density, 1e-300)), x)
    assert mixture_entropy(means, scales)[0] == pytest.approx(h, abs=2e-3)


def test_mixture_intervals_and_quantiles():
    mix = Mixture(np.array([[0.0], [10.0]]), np.array([[1.0], [1.0]]))
    lo, hi = mix.interval(0.9)
    assert mix.cdf(hi)[0] - mix.cdf(lo)[0] == pytest.approx(0.9, abs=1e-4)
    assert mix.quantile(0.5)[0] == pytest.approx(5.0, abs=1e-3)


def test_recalibration_repairs_overconfident_intervals():
    rng = np.random.default_rng(3)
    mean = rng.normal(size=200_000)
    claimed = np.ones_like(mean)  # the model says b = 1, the truth has b = 2
    calib = Laplace(mean, claimed).cdf(mean + rng.laplace(0, 2.0, mean.shape))
    before, table = coverage(calib), pit_table(calib)
    assert before[0.9] < 0.75
    fresh_mean = rng.normal(size=200_000)
    fresh = Laplace(fresh_mean, np.ones_like(fresh_mean), table)
    truth = fresh_mean + rng.laplace(0, 2.0, fresh_mean.shape)
    for level in (0.5, 0.8, 0.9, 0.95):
        lo, hi = fresh.interval(level)
        assert np.mean((truth >= lo) & (truth <= hi)) == pytest.approx(level, abs=0.01)
    samples = fresh.sample(1, rng)[0]  # samples follow the recalibrated distribution too
    assert np.mean(np.abs(samples - fresh_mean) <= 2 * np.log(10)) == pytest.approx(0.9, abs=0.01)


def test_mixture_recalibrated_quantiles_are_monotone():
    mix = Mixture(np.array([[0.0, 1.0], [3.0, 1.5]]), np.ones((2, 2)), pit_table(np.random.default_rng(0).random(5000)))
    qs = [mix.quantile(q) for q in (0.05, 0.25, 0.5, 0.75, 0.95)]
    assert all((a <= b).all() for a, b in itertools.pairwise(qs))


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory):
    clean = blobs((96, 128), seed=3, density=0.01)
    low = noisy(clean, peak=20)
    folder = tmp_path_factory.mktemp("ens") / "e"

    def one(model_dir, **kw):
        return train(low, clean, "YX", model_dir, epochs=4, steps_per_epoch=40, **{**PROB, **kw})

    return train_ensemble(one, 3, folder)


def test_probabilistic_prediction_is_in_target_units(ensemble):
    member = ensemble.members[0]
    clean = blobs((64, 64), seed=11, density=0.01)
    dist = member.predict_distribution(noisy(clean, peak=20, seed=12), "YX")
    assert dist.mean.shape == dist.scale.shape == clean.shape
    assert (dist.scale > 0).all() and np.median(dist.scale) < 0.5  # targets span ~0..1
    with pytest.raises(CarekitError, match="predicts no distribution"):
        carekit.CARE(carekit.Config(axes="YX")).predict_distribution(clean, "YX")


def test_ensemble_loads_and_averages(ensemble):
    again = carekit.load(ensemble.directory)
    assert isinstance(again, Ensemble) and len(again.members) == 3
    img = noisy(blobs((64, 64), seed=13, density=0.01), peak=20, seed=14)
    np.testing.assert_allclose(again.predict(img, "YX"), np.mean([m.predict(img, "YX") for m in again.members], axis=0),
                               rtol=1e-5, atol=1e-6)  # fmt: skip


def test_disagreement_is_higher_out_of_distribution(ensemble):
    clean = blobs((64, 128), seed=15, density=0.01)
    clean[:, 64:] = (np.arange(64) % 6 == 0) * clean.max()  # thin lines: nothing like the training blobs
    d = ensemble.predict_distribution(noisy(clean, peak=20, seed=16), "YX").disagreement()
    assert d[:, 72:120].mean() > 2 * d[:, 8:56].mean()


def test_calibration_is_stored_and_applied(ensemble, tmp_path):
    member = ensemble.members[1]
    clean = blobs((96, 96), seed=21, density=0.01)
    low = noisy(clean, peak=20, seed=22)
    report = calibrate(member, [low], [clean], "YX")
    assert report["ece_after"] <= report["ece_before"] + 1e-9
    assert abs(report["coverage_after"][0.9] - 0.9) < 0.01
    again = carekit.load(member.directory)
    assert again.config.calibration["pit"] == pytest.approx(report["calibration"]["pit"])
    dist = again.predict_distribution(low, "YX")
    lo, hi = dist.interval(0.9)
    assert np.mean((clean >= lo) & (clean <= hi)) == pytest.approx(0.9, abs=0.01)


def test_cli_calibrate_uncertainty_maps_and_movie(ensemble, tmp_path, capsys):
    for sub in ("low", "high"):
        (tmp_path / sub).mkdir()
    clean = blobs((80, 80), seed=31, density=0.01)
    tifffile.imwrite(tmp_path / "high" / "a.tif", clean)
    tifffile.imwrite(tmp_path / "low" / "a.tif", noisy(clean, peak=20, seed=32))
    assert main(["calibrate", "--model", str(ensemble.directory), "--low", str(tmp_path / "low"), "--high",
                 str(tmp_path / "high"), "--axes", "YX"]) == 0  # fmt: skip
    assert "ECE" in capsys.readouterr().out and (ensemble.directory / "reliability.png").exists()
    assert "calibration" in json.loads((ensemble.directory / "ensemble.json").read_text())
    code = main(["predict", "--model", str(ensemble.directory), "--input", str(tmp_path / "low" / "a.tif"),
                 "--output", str(tmp_path / "out.tif"), "--axes", "YX", "--uncertainty", str(tmp_path / "maps"),
                 "--movie", str(tmp_path / "flicker.gif"), "--samples", "5", "--quiet"])  # fmt: skip
    assert code == 0
    names = sorted(p.name for p in (tmp_path / "maps").iterdir())
    assert names == ["a_disagreement.tif", "a_entropy.tif", "a_lower0.9.tif", "a_spread.tif", "a_upper0.9.tif"]
    lower, upper = (
        tifffile.imread(tmp_path / "maps" / "a_lower0.9.tif"),
        tifffile.imread(tmp_path / "maps" / "a_upper0.9.tif"),
    )
    assert (lower <= upper).all()
    from PIL import Image

    with Image.open(tmp_path / "flicker.gif") as gif:
        assert gif.n_frames == 5


def test_ensemble_needs_two_members(tmp_path):
    with pytest.raises(CarekitError, match=r"needs 2\.\.100 members, got 1"):
        train_ensemble(lambda **kw: None, 1, tmp_path)


def test_every_mode_can_be_probabilistic(tmp_path):
    from carekit.data.surfaces import surface_stack
    from carekit.modes.isotropic import train_isotropic
    from carekit.modes.projection import train_projection

    quick = {**PROB, "epochs": 1, "steps_per_epoch": 3}
    stack = blobs((6, 40, 48), seed=1)
    iso = train_isotropic(stack, "ZYX", 2.0, tmp_path / "iso", psf_sigma=(2.0, 1.0), **quick)
    dist = iso.predict_distribution(stack, "ZYX")
    assert dist.mean.shape == dist.scale.shape == (11, 40, 48) and (dist.scale > 0).all()
    surface, truth, _ = surface_stack((8, 40, 48), np.random.default_rng(0))
    proj = train_projection(
        noisy(surface), truth, "ZYX", tmp_path / "proj", **{**quick, "proj_features": 4, "validation_fraction": 0}
    )
    dist = proj.predict_distribution(noisy(surface, seed=3), "ZYX")
    assert dist.mean.shape == dist.scale.shape == (40, 48) and (dist.scale > 0).all()
    mean, height = proj.predict(noisy(surface, seed=3), "ZYX", return_height=True)
    assert height.shape == (40, 48)
    np.testing.assert_allclose(mean, dist.mean, rtol=1e-5, atol=1e-6)


def test_scale_head_does_not_change_how_the_mean_learns(tmp_path):
    """A probabilistic model's mean trains as a plain MAE model's (beta-NLL, scale head on detached features)."""
    clean = blobs((96, 96), seed=4)
    settings = {**TINY, "epochs": 2, "steps_per_epoch": 10, "patch_size": (32, 32), "loss": "mae"}
    settings |= {"residual": True, "batch_norm": False, "filter_blend": False}  # the networks alone
    low = noisy(clean, seed=5)  # both with the same network: only the scale head differs
    plain = train(low, clean, "YX", tmp_path / "plain", progress=False, **settings)
    prob = train(low, clean, "YX", tmp_path / "prob", probabilistic=True, progress=False, **settings)
    test = noisy(blobs((64, 64), seed=6), seed=7)
    a, b = plain.predict(test, "YX"), prob.predict(test, "YX")
    assert np.abs(a - b).max() < 1e-3 * np.ptp(a)
    assert np.abs(a - test).max() > 0.05 * np.ptp(a)  # both actually changed the image


def test_scale_fit_recovers_how_errors_follow_the_features():
    rng = np.random.default_rng(0)
    features = torch.from_numpy(rng.normal(size=(50_000, 4)) * [1.0, 3.0, 0.5, 2.0] + [0.0, 5.0, 1.0, -2.0])
    true_scale = torch.nn.functional.softplus(0.8 * features[:, :1] - 0.3 * features[:, 1:2] - 2.0) + 1e-3
    errors = torch.from_numpy(np.abs(rng.laplace(size=(50_000, 1)))) * true_scale
    start_w, start_b = torch.zeros(1, 4, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    w, b, before, after = fit_head(features, errors, start_w, start_b)
    fitted = torch.nn.functional.softplus(features @ w.T + b) + 1e-3
    assert after < before - 1.0  # softplus(0) = 0.69 is ~4x the typical true scale here
    assert float(torch.max(torch.abs(fitted / true_scale - 1))) < 0.1


def test_scale_fit_handles_features_that_never_vary():
    features = torch.ones(2000, 3, dtype=torch.float64)  # e.g. a dead feature map: no spread to standardise by
    errors = torch.from_numpy(np.abs(np.random.default_rng(1).laplace(0, 0.05, (2000, 1))))
    w, b, before, after = fit_head(features, errors, torch.zeros(1, 3, dtype=torch.float64), torch.zeros(1).double())
    fitted = torch.nn.functional.softplus(features @ w.T + b) + 1e-3
    assert torch.isfinite(fitted).all() and after < before
    assert float(fitted.mean()) == pytest.approx(float(errors.mean()), rel=0.02)  # the Laplace optimum: the mean error


def test_trained_scale_follows_the_errors_on_unseen_images(ensemble):
    """Raw (uncalibrated) intervals are about right after minutes of training: the scale head is fitted
    to the network's errors on its validation patches (before this, 90 % intervals covered ~100 %)."""
    member = ensemble.members[0]
    ratios, hits = [], []
    for seed in (31, 32):
        clean = blobs((96, 96), seed=seed, density=0.01)
        dist = member.predict_distribution(noisy(clean, peak=20, seed=seed + 10), "YX")
        ratios.append(np.mean(np.abs(clean - dist.mean)) / np.mean(dist.scale))  # 1 when calibrated
        lo, hi = dist.interval(0.9)
        hits.append(np.mean((clean >= lo) & (clean <= hi)))
    assert 0.6 < np.mean(ratios) < 1.6, ratios
    assert 0.8 < np.mean(hits) < 0.97, hits
