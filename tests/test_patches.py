import numpy as np
import pytest

from carekit.data.pairs import ImagePair, pairs_from_arrays
from carekit.errors import CarekitError
from carekit.sampling import PatchSampler


def square_pair(size=128):
    """Background everywhere but one bright square: the input is a tagged copy of the target."""
    high = np.zeros((1, size, size), np.float32)
    high[0, 40:56, 20:36] = 1.0
    low = high * 3 + np.arange(size * size, dtype=np.float32).reshape(1, size, size) * 1e-6
    return ImagePair("square", low, high)


def test_background_rejection_keeps_patches_on_structure():
    sampler = PatchSampler([square_pair()], (32, 32), val_fraction=0.0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        _, y = sampler.batch(rng, 4)
        assert (y.reshape(4, -1).max(axis=1) > 0.5).all()


def test_without_rejection_most_patches_are_background():
    sampler = PatchSampler([square_pair()], (32, 32), val_fraction=0.0, threshold=0.0)
    _, y = sampler.batch(np.random.default_rng(0), 64)
    assert (y.reshape(64, -1).max(axis=1) < 0.5).mean() > 0.5


def test_input_and_target_are_augmented_together():
    rng = np.random.default_rng(1)
    high = rng.random((1, 64, 64)).astype(np.float32)
    sampler = PatchSampler([ImagePair("r", 2 * high + 5, high)], (32, 32), val_fraction=0.0, threshold=0.0)
    x, y = sampler.batch(rng, 32)
    # after normalising both, input and target must agree pixel by pixel (same flips/rotations)
    xs = (x - x.min(axis=(2, 3), keepdims=True)) / np.ptp(x, axis=(2, 3), keepdims=True)
    ys = (y - y.min(axis=(2, 3), keepdims=True)) / np.ptp(y, axis=(2, 3), keepdims=True)
    np.testing.assert_allclose(xs, ys, atol=1e-5)


def test_patches_take_fixed_percentiles_unless_jittered():
    rng = np.random.default_rng(2)
    high = rng.random((1, 32, 32)).astype(np.float32)
    pair = ImagePair("r", 3 * high, high)
    ys = {}
    for jitter in (False, True):
        sampler = PatchSampler([pair], (32, 32), val_fraction=0.0, threshold=0.0, augment=False, jitter=jitter)
        ys[jitter] = sampler.batch(np.random.default_rng(0), 8)[1]  # every patch is the whole image
    lo, hi = np.percentile(high, (2.0, 99.8))
    for y in ys[False]:
        np.testing.assert_allclose(y[0], (high[0] - lo) / (hi - lo), rtol=1e-5, atol=1e-6)
    assert np.ptp(ys[True].max(axis=(1, 2, 3))) > 1e-3  # jittered: the scale moves from patch to patch


def test_targets_in_input_units_take_the_input_span_whatever_their_own_percentiles():
    """The same structure over the same input range gets the same target scale, however sparse the
    rest of its target is (a target's own 99.8th percentile falls to zero where it is sparse)."""
    rng = np.random.default_rng(3)
    base = rng.random((1, 64, 64)).astype(np.float32)
    pairs = []
    for bright in (2048, 3):  # dense target; then three bright pixels in a faint haze over 2 % of it
        high = np.zeros((1, 64, 64), np.float32)
        high[0].flat[:82] = 0.01
        high[0].flat[:bright] = 2.0
        pairs.append(ImagePair(f"{bright} bright", 10 * base + 7, high))
    lo, hi = np.percentile(10 * base + 7, (2.0, 99.8))
    for jitter in (False, True):
        own = PatchSampler(pairs, (64, 64), val_fraction=0.0, threshold=0.0, augment=False, jitter=jitter)
        units = PatchSampler(pairs, (64, 64), val_fraction=0.0, threshold=0.0, augment=False, jitter=jitter,
                             input_units=True)  # fmt: skip
        for i, pair in enumerate(pairs):
            x, y = units._normalised(i, pair.low, pair.high, 2.0, 99.8)
            np.testing.assert_allclose(y, pair.high / (hi - lo), rtol=1e-5)
            np.testing.assert_allclose(x, own._normalised(i, pair.low, pair.high, 2.0, 99.8)[0], rtol=1e-6)
        _, y_own = own.batch(np.random.default_rng(0), 16)
        _, y_units = units.batch(np.random.default_rng(0), 16)
        peaks = {name: sorted({round(float(v), 3) for v in y.max(axis=(1, 2, 3))}) for name, y in
                 (("own", y_own), ("units", y_units))}  # fmt: skip
        assert peaks["own"][-1] > 100 * peaks["own"][0]  # own percentiles: the lone pixel's scale explodes
        assert peaks["units"][-1] < 1.5 * peaks["units"][0], peaks  # input's span: alike up to the jitter
    np.testing.assert_allclose(units.intensity_map.apply(np.array([[[[lo]]]]), np.array([[[[hi]]]]))[1], hi - lo,
                               rtol=1e-4)  # fmt: skip


def test_validation_slab_never_overlaps_training():
    pair = square_pair(128)
    sampler = PatchSampler([pair], (32, 32), val_fraction=0.25, threshold=0.0)
    (train_region,) = sampler.train_regions
    (val_region,) = sampler.val_regions
    assert train_region.box[-1] == slice(0, 96) and val_region.box[-1] == slice(96, 128)


def test_a_thin_validation_slab_takes_context_from_training_and_scores_only_held_out_pixels():
    high = np.random.default_rng(0).random((1, 100, 256)).astype(np.float32)
    sampler = PatchSampler([ImagePair("r", high, high)], (64, 64), val_fraction=0.1, threshold=0.0, augment=False)
    (train,), (val,) = sampler.train_regions, sampler.val_regions
    assert train.box[-1] == slice(0, 230)  # 10 % of 256 columns held out, not a whole 64-column patch
    assert val.box[-1] == slice(192, 256) and val.held == (1, 230)
    _, y, mask = sampler.validation(8)
    assert mask.shape == y.shape
    np.testing.assert_array_equal(mask[:, :, :, :38], 0)  # columns 192..229: training context only
    np.testing.assert_array_equal(mask[:, :, :, 38:], 1)  # columns 230..255: held out, scored
    ends = [int(np.unravel_index(c, train.grid)[1]) + 64 for c in train.corners]
    assert max(ends) == 230  # training patches reach the cut and never a held-out column


def test_margin_and_validation_loss_score_only_the_held_out_pixels():
    import torch

    from carekit.baselines import mean_psnr
    from carekit.margin import planes, scored_planes
    from carekit.trainer import mean_error

    rng = np.random.default_rng(1)
    high = rng.random((1, 100, 256)).astype(np.float32)
    sampler = PatchSampler([ImagePair("r", high, high)], (64, 64), val_fraction=0.1, threshold=0.0)
    val = sampler.validation(4)
    wrong_context = val[1].copy()
    wrong_context[..., :38] += 5.0  # a prediction that is exact on held-out pixels, wrong elsewhere
    assert float(mean_error(torch.from_numpy(wrong_context), torch.from_numpy(val[1]), torch.from_numpy(val[2]))) == 0
    _, truth, scored, boxes = scored_planes(val)  # all 4 patches
    assert scored.all() and all(b[1] == slice(38, 64) for b in boxes)
    exact = mean_psnr(planes(wrong_context), truth, boxes)
    assert exact > mean_psnr(planes(wrong_context), truth) + 20


def test_validation_holds_out_the_fraction_as_whole_images_when_slabs_would_be_too_wide():
    # a slab must be one patch wide: 32 of 64 columns would hold out half of every image
    pairs = [square_pair(64) for _ in range(20)]
    sampler = PatchSampler(pairs, (32, 32), val_fraction=0.1, threshold=0.0)
    val = sorted(r.pair for r in sampler.val_regions)
    train = sorted(r.pair for r in sampler.train_regions)
    assert len(val) == 2 and not set(val) & set(train) and len(train) == 18
    assert all(r.box == (slice(0, 64), slice(0, 64)) for r in sampler.train_regions + sampler.val_regions)


def test_whole_image_validation_leaves_an_image_to_train_on():
    # no slab fits (patch = image), and 0.9 of 2 images would round to both
    sampler = PatchSampler([square_pair(32), square_pair(32)], (32, 32), val_fraction=0.9, threshold=0.0)
    assert len(sampler.train_regions) == 1 and len(sampler.val_regions) == 1


def test_patch_larger_than_image():
    with pytest.raises(CarekitError, match="smaller than the patch size"):
        PatchSampler([square_pair(48)], (64, 64))


def test_image_too_small_for_validation():
    # a slab is at least a quarter patch (8 columns): 36 - 8 leaves less than a patch to train on
    with pytest.raises(CarekitError, match="validation-fraction 0"):
        PatchSampler([square_pair(36)], (32, 32), val_fraction=0.1)
    PatchSampler([square_pair(48)], (32, 32), val_fraction=0.1)  # 40 columns train, 8 validate


def test_three_d_patches_and_fixed_validation():
    rng = np.random.default_rng(0)
    high = rng.random((1, 12, 40, 80)).astype(np.float32)
    sampler = PatchSampler([ImagePair("v", high, high)], (8, 16, 16), val_fraction=0.2, threshold=0.0)
    x, y = sampler.batch(rng, 3)
    assert x.shape == y.shape == (3, 1, 8, 16, 16)
    v1, v2 = sampler.validation(5, seed=2), sampler.validation(5, seed=2)
    np.testing.assert_array_equal(v1[0], v2[0])


def test_planes_of_one_array_share_one_normalisation():
    plane = square_pair(64).high[0]
    low, high = np.stack([3 * plane, 0.3 * plane]), np.stack([plane, 0.1 * plane])  # a bright and a dim plane
    stack = PatchSampler(pairs_from_arrays(low, high, "SYX", "YX"), (32, 32), val_fraction=0, threshold=0)
    np.testing.assert_array_equal(stack.high_tables[0], stack.high_tables[1])
    np.testing.assert_array_equal(stack.low_tables[0], stack.low_tables[1])
    # separate arrays keep their own: the dim one is stretched to the bright one's range
    apart = PatchSampler(pairs_from_arrays(list(low), list(high), "YX", "YX"), (32, 32), val_fraction=0, threshold=0)
    np.testing.assert_allclose(apart.high_tables[1], 0.1 * apart.high_tables[0], rtol=1e-6)


def test_redrawn_inputs_carry_fresh_noise_of_the_pairs_camera():
    from conftest import blobs, noisy
    from scipy.ndimage import gaussian_filter

    clean = blobs((160, 160), seed=5, density=0.004, sigma=2.0)
    low = noisy(clean, peak=20)
    blurred = noisy(gaussian_filter(clean, 2), peak=20)  # not its target plus noise: keeps its own input
    pairs = [ImagePair("a", low[None], clean[None]), ImagePair("b", blurred[None], clean[None])]
    options = {"val_fraction": 0, "threshold": 0, "augment": False}
    sampler = PatchSampler(pairs, (32, 32), redraw=1.0, **options)
    report = sampler.redraw_report()
    assert (report["pairs"], report["of"]) == (1, 2) and report["notes"][0].startswith("b, channel 0: ")
    assert PatchSampler(pairs, (32, 32), **options).redraw_report() is None
    whole = [ImagePair("a", low[None, :128, :128], clean[None, :128, :128])]  # one patch: every draw cuts it
    a = PatchSampler(whole, (128, 128), redraw=1.0, **options)
    first, _ = PatchSampler(whole, (128, 128), **options).batch(np.random.default_rng(0), 200)
    fresh = [a.batch(np.random.default_rng(seed), 200)[0] for seed in (0, 1)]
    assert not np.allclose(fresh[0], fresh[1])
    # the stored input and a redrawn one differ by two noise realisations: twice one's variance
    assert abs(np.var(fresh[0] - first) / np.var(fresh[0] - fresh[1]) - 1) < 0.1
    assert abs(np.mean(fresh[0] - first)) < 0.01 * np.std(first)  # around the same expectation
    kept = PatchSampler(pairs[1:], (32, 32), redraw=1.0, **options)
    own, _ = kept.batch(np.random.default_rng(0), 4)
    assert np.array_equal(own, PatchSampler(pairs[1:], (32, 32), **options).batch(np.random.default_rng(0), 4)[0])
