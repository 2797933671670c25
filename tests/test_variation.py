import numpy as np
import pytest
from scipy.ndimage import gaussian_filter, label, map_coordinates

from carekit.data import variation
from carekit.data.recipes import generate_pairs, parse_recipe
from carekit.data.structures import tubules, widefield
from carekit.data.variation import Variation
from carekit.errors import CarekitError
from carekit.metrics import evaluate
from carekit.modes.synthetic import train_synthetic

RECIPE = {
    "shape": [64, 64],
    "pairs": 40,
    "seed": 3,
    "channels": [[{"type": "tubules", "density": 0.03, "length": 60, "width": 0.4}]],
    "imaging": {"na": 1.3, "wavelength": 520, "pixel_size": 80, "photons": 100, "background": 0.05, "read_noise": 1.5},
}


def single_tubule_widths(n: int, **kw) -> np.ndarray:
    """Widths of ``n`` straight tubules, one per image: a Gaussian line of sigma ``s`` has
    ``sum(I**2) / sum(I) = 1 / (2 sqrt(pi) s)`` per unit brightness; the linear splat onto the grid
    adds a variance of 1/6 px²."""
    rng = np.random.default_rng(0)
    widths = []
    while len(widths) < n:
        img = tubules((96, 96), rng, density=0.002, length=40, persistence=1e9, intensity=(1, 1), **kw)
        if img.sum() > 30 and label(img > 1e-3)[1] == 1:  # one tubule, mostly inside
            seen = img.sum() / (2 * np.sqrt(np.pi) * (img.astype(np.float64) ** 2).sum())
            widths.append(np.sqrt(seen**2 - 1 / 6))
    return np.array(widths)


def test_tubule_widths_vary_within_the_tolerance():
    fixed = single_tubule_widths(12, width=1.2)  # (the estimate reads up to 7 % wide)
    assert np.percentile(fixed, [10, 90]) == pytest.approx([1.2, 1.2], rel=0.07)  # one width
    varied = single_tubule_widths(40, width=1.2, width_spread=2.0)
    assert varied.min() > 0.6 * 0.95 and varied.max() < 2.4 * 1.07  # within [w/2, 2w]
    assert np.percentile(varied, 95) / np.percentile(varied, 5) > 2.8  # and spread over it


def one_straight_tubule(seed: int, **kw) -> np.ndarray:
    """A straight tubule 120 px long, mostly inside the image (the first seed from ``seed`` on with
    exactly one; the same tubule for any ``kw``, which draw only after it is placed)."""
    while True:
        draw = {"density": 0.004, "length": 120, "persistence": 1e9, "intensity": (1, 1), "width": 1.0}
        plain = tubules((160, 160), np.random.default_rng(seed), **draw)
        if 100 < plain.sum() <= 121:  # one tubule's mass: 120
            return tubules((160, 160), np.random.default_rng(seed), **draw, **kw)
        seed += 1000


def brightness_along(img: np.ndarray) -> np.ndarray:
    """The (smoothed) image sampled along the line through its intensity's principal axis."""
    yy, xx = np.nonzero(img > 1e-3)
    w = img[yy, xx]
    centre = np.array([np.average(yy, weights=w), np.average(xx, weights=w)])
    d = np.linalg.eigh(np.cov(np.stack([yy, xx]), aweights=w))[1][:, -1]
    points = centre + np.arange(-120, 121)[:, None] * d
    points = points[np.all((points >= 0) & (points <= 159), axis=1)]
    profile = map_coordinates(gaussian_filter(img, 1.5), points.T, order=1)
    return profile[profile > 0.2 * profile.max()][8:-8]  # along the tubule, away from its ends


def test_brightness_varies_along_tubules_and_bundles_run_parallel():
    for seed in (1, 2, 3):
        uniform = brightness_along(one_straight_tubule(seed))
        assert uniform.min() / uniform.max() > 0.85
        profiled = brightness_along(one_straight_tubule(seed, profile=0.8))
        assert profiled.min() / profiled.max() < 0.6
    single, bundled = one_straight_tubule(4), one_straight_tubule(4, bundles=1.0)
    assert bundled.sum() > 1.5 * single.sum()  # neighbours run beside it (one component: close and parallel)


def test_recipes_record_their_variation_and_old_models_keep_none():
    recipe = parse_recipe(RECIPE)
    assert recipe.variation == Variation()  # on by default
    again = parse_recipe(recipe.to_dict())
    assert again.variation == recipe.variation and again.to_dict() == recipe.to_dict()
    assert parse_recipe({**RECIPE, "variation": {"width": 1.5}}).variation.width == 1.5
    assert not parse_recipe({**RECIPE, "variation": False}).variation.active
    assert not parse_recipe(RECIPE, saved=True).variation.active  # written before variation existed
    for bad, message in (({"width": 0.5}, "'width' is a factor >= 1"), ({"haze": 2}, "'haze' is a fraction"),
                         ({"thickness": 1}, "unknown key"), ("lots", "must be true, false or an object")):  # fmt: skip
        with pytest.raises(CarekitError, match=message):
            parse_recipe({**RECIPE, "variation": bad})


def test_per_pair_draws_stay_within_their_tolerances():
    v, rng = Variation(), np.random.default_rng(0)
    im = parse_recipe(RECIPE).imaging
    draws = [variation.imaging(im, v, rng) for _ in range(400)]
    photons = np.array([d["photons"] for d in draws])
    assert photons.min() >= 100 / v.photons and photons.max() <= 100 * v.photons
    assert photons.max() / photons.min() > 0.8 * v.photons**2  # the range is used
    scale = np.array([d["psf_scale"] for d in draws])
    assert 1 - v.psf <= scale.min() < 0.9 and 1.1 < scale.max() <= 1 + v.psf
    fixed = [variation.imaging(im, Variation.off(), rng) for _ in range(3)]
    assert all(d["photons"] == 100 and d["psf_scale"] == 1 and d["haze"] == 0 for d in fixed)


def test_fixed_recipes_give_their_pairs_reproducibly():
    a = generate_pairs(parse_recipe({**RECIPE, "variation": False}), 2, seed=4)
    b = generate_pairs(parse_recipe({**RECIPE, "variation": False}), 2, seed=4)
    c = generate_pairs(parse_recipe(RECIPE), 2, seed=4)
    np.testing.assert_array_equal(a[1].low, b[1].low)
    assert not np.array_equal(a[1].low, c[1].low)
    np.testing.assert_array_equal(c[1].low, generate_pairs(parse_recipe(RECIPE), 2, seed=4)[1].low)


def arcs(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Structure no recipe draws: circular arcs 1.1 px wide, brightness rising along each."""
    out = np.zeros(shape, np.float32)
    for _ in range(4):
        centre, radius = rng.uniform(0, 64, 2), rng.uniform(10, 30)
        t = np.linspace(0, rng.uniform(2, 5), 400)
        points = centre + radius * np.stack([np.sin(t), np.cos(t)], 1)
        ok = np.all((points >= 0) & (points < 63), axis=1)
        np.add.at(out, tuple(np.round(points[ok]).astype(int).T), np.linspace(0.3, 1, 400)[ok])
    return gaussian_filter(out, 1.1)


def test_a_varied_recipe_transfers_to_structures_drawn_differently(tmp_path):
    from conftest import TINY

    recipe = parse_recipe(RECIPE)
    psf = recipe.imaging.kernel(2)
    rng = np.random.default_rng(11)
    truths = [arcs((64, 64), rng) for _ in range(4)]
    images = [widefield(t, psf, rng, photons=100, background=0.05, read_sigma=1.5) for t in truths]
    scores = {}
    for name, d in (("fixed", {**RECIPE, "variation": False}), ("varied", RECIPE)):
        model = train_synthetic(parse_recipe(d), tmp_path / name, epochs=6, steps_per_epoch=40, patch_size=(32, 32),
                                progress=False, **TINY)  # fmt: skip
        restored = [model.predict(x, "YX") for x in images]
        scores[name] = np.mean([evaluate(r, t)["psnr"] for r, t in zip(restored, truths, strict=True)])
    assert scores["varied"] > scores["fixed"] + 1.0, scores
