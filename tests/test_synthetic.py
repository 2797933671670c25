import json

import numpy as np
import pytest
import tifffile

from carekit.baselines import richardson_lucy, tuned_rl
from carekit.cli import main
from carekit.data.camera import widefield_sigmas
from carekit.data.recipes import load_recipe, parse_recipe
from carekit.data.structures import gaussian_psf, granules, line_pair, tubules, widefield
from carekit.errors import CarekitError
from carekit.metrics import evaluate
from carekit.modes.synthetic import train_synthetic
from carekit.resolution import decorrelation_resolution, dip, fwhm, line_profile

RECIPE = {
    "shape": [64, 64],
    "pairs": 24,
    "seed": 1,
    "channels": [[{"type": "tubules", "density": 0.03, "length": 60, "width": 0.4}]],
    "imaging": {"na": 1.3, "wavelength": 520, "pixel_size": 80, "photons": 100, "background": 0.05, "read_noise": 1.5},
}


@pytest.mark.parametrize("ndim", [2, 3])
def test_generators_are_reproducible_by_seed(ndim):
    shape = (48,) * ndim
    for make in (tubules, granules):
        a = make(shape, np.random.default_rng(3))
        b = make(shape, np.random.default_rng(3))
        c = make(shape, np.random.default_rng(4))
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c) and a.shape == shape


def test_tubule_density_and_width_follow_the_parameters():
    rng = np.random.default_rng(0)
    sparse = np.mean([tubules((256, 256), rng, density=0.01, length=60, width=0).sum() for _ in range(8)])
    dense = np.mean([tubules((256, 256), rng, density=0.04, length=60, width=0).sum() for _ in range(8)])
    assert 3.0 < dense / sparse < 5.5  # total tubule mass scales with density (x4)
    straight = line_pair((64, 64), 0, width=0.8)  # both lines at one place: the cross-section is the width
    profile = straight[32, :]
    assert fwhm(profile) == pytest.approx(2.355 * 0.8, rel=0.15)


def test_granule_count_and_size_follow_the_parameters():
    from scipy.ndimage import label

    rng = np.random.default_rng(1)
    img = granules((256, 256), rng, density=0.0005, radius=3.0, radius_sd=0.05)
    labels, n = label(img > 0.25)
    assert abs(n - 0.0005 * 256 * 256) < 12  # ~33 expected, a few touch
    areas = np.bincount(labels.ravel())[1:]
    assert np.median(areas) == pytest.approx(np.pi * 9, rel=0.2)


def test_imaging_noise_is_poisson_gaussian():
    truth = np.ones((64, 64), np.float32)
    psf = gaussian_psf((1.5, 1.5))
    rng = np.random.default_rng(2)
    samples = np.stack([widefield(truth, psf, rng, photons=40, background=0, read_sigma=3.0) for _ in range(200)])
    assert samples.mean() == pytest.approx(40, rel=0.02)
    assert samples.var(axis=0).mean() == pytest.approx(40 + 9, rel=0.05)  # gain 1: var = photons + read²
    averaged = np.stack([widefield(truth, psf, rng, photons=40, background=0, read_sigma=3.0, frames=4)
                         for _ in range(200)])  # fmt: skip
    assert averaged.var(axis=0).mean() == pytest.approx(49 / 4, rel=0.08)


def test_generated_truths_are_in_the_inputs_counts():
    """A recipe's truth, blurred by its PSF, is the input's signal: its counts above the background."""
    from carekit.data.recipes import generate_pair
    from carekit.data.structures import blur

    recipe = parse_recipe({**RECIPE, "variation": False, "imaging": {**RECIPE["imaging"], "background": 0,
                                                                     "read_noise": 0, "frames": 400}})  # fmt: skip
    low, high = generate_pair(recipe, np.random.default_rng(5))
    signal = blur(high[0], recipe.imaging.kernel(2))
    assert np.percentile(signal, 99.9) == pytest.approx(100, rel=1e-4)  # the recipe's photons
    np.testing.assert_allclose(low[0], signal, atol=1.5)  # 400 frames: Poisson noise of ~0.5 counts


def test_varied_sparse_recipes_draw_no_empty_images():
    from carekit.data.recipes import generate_pairs

    sparse = {**RECIPE, "channels": [[{"type": "tubules", "density": 0.006, "length": 60, "width": 0.4}]]}
    fixed = generate_pairs(parse_recipe({**sparse, "variation": False}), 40, seed=0)
    varied = generate_pairs(parse_recipe(sparse), 40, seed=0)
    assert sum(np.ptp(p.high) == 0 for p in fixed) >= 5  # ~0.4 tubules per image: most draws are empty
    assert all(np.ptp(p.high) > 0 for p in varied)


def test_the_pretraining_corpus_draws_recipes_of_every_kind():
    from carekit.data import corpus

    rng = np.random.default_rng(0)
    recipes = [parse_recipe(corpus.random_recipe((64, 64), rng)) for _ in range(200)]
    kinds = [{s["type"] for s in r.channels[0]} for r in recipes]
    assert {"tubules"} in kinds and {"granules"} in kinds and {"tubules", "granules"} in kinds
    sigmas = np.array([r.imaging.sigmas(2)[0] for r in recipes])
    assert sigmas.min() >= corpus.PSF_SIGMA[0] * 0.999 and sigmas.max() <= corpus.PSF_SIGMA[1] * 1.001
    assert sigmas.max() / sigmas.min() > 3  # the range is used
    low, high = corpus.widefield_pair((32, 48, 48), rng)
    assert low.shape == high.shape == (32, 48, 48) and np.ptp(high) > 0


def test_widefield_psf_from_optics():
    sz, sxy = widefield_sigmas(1.4, 500, 1.518)
    assert sxy == pytest.approx(75.0) and sz == pytest.approx(0.66 * 1.518 * 500 / 1.96)


def test_resolution_measures():
    far = line_pair((64, 64), 12, width=1.0)
    near = line_pair((64, 64), 2, width=1.0)
    assert dip(line_profile(far, (32, 10), (32, 54))) > 0.9
    assert dip(line_profile(near, (32, 10), (32, 54))) < 0.2
    sharp = tubules((128, 128), np.random.default_rng(5), density=0.05, width=0.5)
    blurred = widefield(
        sharp, gaussian_psf((3.0, 3.0)), np.random.default_rng(6), photons=1e4, background=0, read_sigma=0
    )
    assert decorrelation_resolution(blurred) > 1.5 * decorrelation_resolution(sharp)


def test_richardson_lucy_sharpens():
    truth = tubules((96, 96), np.random.default_rng(7), density=0.03, width=0.5)
    psf = gaussian_psf((2.0, 2.0))
    image = widefield(truth, psf, np.random.default_rng(8), photons=500, background=0, read_sigma=1)
    out, n = tuned_rl(image, truth, psf)
    assert n >= 5 and evaluate(out, truth)["psnr"] > evaluate(image, truth)["psnr"] + 1.0
    assert richardson_lucy(image, psf, 3).shape == image.shape


def test_tiny_training_on_a_recipe_improves_psnr(tmp_path):
    from conftest import TINY

    recipe = parse_recipe(RECIPE)
    model = train_synthetic(recipe, tmp_path / "m", epochs=5, steps_per_epoch=40, patch_size=(32, 32), progress=False,
                            **TINY)  # fmt: skip
    assert model.config.mode == "synthetic" and model.config.synthetic["pairs"] == 24
    test = parse_recipe({**RECIPE, "seed": 99, "shape": [128, 128], "variation": False})  # the recipe's nominal images
    from carekit.data.recipes import generate_pairs

    (pair,) = generate_pairs(test, 1, seed=99)
    before = evaluate(pair.low[0], pair.high[0])["psnr"]
    after = evaluate(model.predict(pair.low[0], "YX"), pair.high[0])["psnr"]
    assert after > before + 2.0, (before, after)


def test_synth_writes_pairs_and_bad_recipes_are_explained(tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({**RECIPE, "channels": [RECIPE["channels"][0], [{"type": "granules"}]]}))
    assert main(["synth", "--recipe", str(path), "--n", "2", "--out", str(tmp_path / "out")]) == 0
    low = tifffile.imread(tmp_path / "out" / "low" / "0001.tif")
    assert low.shape == (2, 64, 64)
    bad = {
        "shape": ({**RECIPE, "shape": [8, 8]}, "'shape' must be 2 or 3 integers >= 16"),
        "type": ({**RECIPE, "channels": [[{"type": "mitochondria"}]]}, "structure type 'mitochondria' is unknown"),
        "param": ({**RECIPE, "channels": [[{"type": "tubules", "thickness": 2}]]}, "unknown parameter .thickness."),
        "imaging": ({**RECIPE, "imaging": {"na": 2.0}}, "NA must be in"),
        "key": ({**RECIPE, "photons": 5}, "unknown key"),
    }
    for name, (recipe, message) in bad.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(recipe))
        with pytest.raises(CarekitError, match=message):
            load_recipe(path)
    (tmp_path / "broken.json").write_text("{not json")
    code = main(
        ["train", "--mode", "synthetic", "--recipe", str(tmp_path / "broken.json"), "--model", str(tmp_path / "m")]
    )
    assert code == 2 and "not valid JSON" in capsys.readouterr().err
