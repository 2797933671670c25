"""Blind-spot masking: how many pixels are hidden, where, with what, and what the loss counts."""

import numpy as np
import pytest
import torch

from carekit.data.blindspot import BlindSpots, hide, stratified_positions, struct_mask
from carekit.errors import CarekitError
from carekit.trainer import loss_function


def batch(shape=(8, 2, 96, 96), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize(("shape", "fraction"), [((8, 2, 96, 96), 0.002), ((8, 1, 64, 48), 0.02),
                                                 ((4, 1, 16, 64, 64), 0.005)])  # fmt: skip
def test_hidden_share_is_the_fraction_asked(shape, fraction):
    x = batch(shape)
    hidden, mask = hide(np.random.default_rng(1), x, BlindSpots(fraction=fraction))
    per_patch = mask.reshape(shape[0] * shape[1], -1).mean(axis=1)
    assert abs(per_patch.mean() - fraction) < 0.12 * fraction, per_patch.mean()
    assert set(np.unique(mask)) == {0.0, 1.0}
    assert np.array_equal(hidden != x, mask > 0)  # exactly the counted pixels change (no struct mask)


def test_positions_are_spread_one_per_grid_cell():
    shape, fraction = (100, 100), 0.01  # cells of 10 x 10
    for positions in stratified_positions(np.random.default_rng(2), shape, fraction, 20):
        cells = {tuple(p) for p in positions // 10}
        assert len(cells) == len(positions) == 100  # every cell holds exactly one
    # patches and channels draw anew
    a, b = stratified_positions(np.random.default_rng(3), shape, fraction, 2)
    assert not np.array_equal(a, b)


def replacements(x, spots, changed_offsets=((0, 0),), seed=4):
    """The values written into the hidden pixels of ``x``, and the same after changing the pixels at
    ``changed_offsets`` from every hidden pixel (same random draws)."""
    hidden, mask = hide(np.random.default_rng(seed), x, spots)
    other = x.copy()
    n, c, ys, xs = np.nonzero(mask)
    for dy, dx in changed_offsets:
        ok = (ys + dy >= 0) & (ys + dy < x.shape[2]) & (xs + dx >= 0) & (xs + dx < x.shape[3])
        other[n[ok], c[ok], ys[ok] + dy, xs[ok] + dx] += 1000.0
    again, _ = hide(np.random.default_rng(seed), other, spots)
    return hidden[mask > 0], again[mask > 0]


def test_median_replacement_never_reads_the_hidden_pixel():
    x = batch()
    first, again = replacements(x, BlindSpots(fraction=0.01))
    np.testing.assert_array_equal(first, again)
    # the original Noise2Void's uniform draw may take the hidden pixel itself
    first, again = replacements(x, BlindSpots(fraction=0.01, replacement="uniform", window=3))
    assert 0 < np.mean(first != again) < 0.3


def test_median_is_that_of_the_window_without_any_hidden_pixel():
    x = batch((1, 1, 40, 40))
    hidden, mask = hide(np.random.default_rng(5), x, BlindSpots(fraction=0.05, window=5))
    visible = np.where(mask > 0, np.nan, x)[0, 0]
    for _, _, y, xx in zip(*np.nonzero(mask), strict=True):
        window = visible[max(y - 2, 0) : y + 3, max(xx - 2, 0) : xx + 3]
        assert hidden[0, 0, y, xx] == pytest.approx(np.nanmedian(window), abs=1e-6)


def test_struct_mask_hides_its_pixels_and_keeps_them_out_of_the_median():
    x = batch()
    line = [(0, d) for d in range(-3, 4)]
    spots = BlindSpots(fraction=0.005, struct="x:3")
    first, again = replacements(x, spots, changed_offsets=line)
    np.testing.assert_array_equal(first, again)  # none of the line's noisy values leaks into the replacement
    hidden, mask = hide(np.random.default_rng(6), x, spots)
    n, c, y, xs = np.nonzero(mask)
    lines = [(d, (xs + d >= 0) & (xs + d < x.shape[3])) for d in range(-3, 4)]
    cover = np.zeros(x.shape, int)
    for d, ok in lines:
        np.add.at(cover, (n[ok], c[ok], y[ok], xs[ok] + d), 1)
    for d, ok in lines:  # the whole line holds the hidden pixel's replacement (where lines do not cross) ...
        ok &= cover[n, c, y, np.clip(xs + d, 0, x.shape[3] - 1)] == 1
        np.testing.assert_array_equal(hidden[n[ok], c[ok], y[ok], xs[ok] + d], hidden[n[ok], c[ok], y[ok], xs[ok]])
    assert np.array_equal(hidden != x, cover > 0)
    assert mask.sum() == len(n)  # ... but only the centre counts in the loss
    assert abs(mask.mean() - 0.005) < 0.001


def test_struct_mask_shapes():
    np.testing.assert_array_equal(struct_mask("x:4"), np.ones((1, 9)))
    np.testing.assert_array_equal(struct_mask("y:2"), np.ones((5, 1)))
    cross = struct_mask("x:1,y:1")
    np.testing.assert_array_equal(cross, [[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    assert struct_mask("z:1,x:2").shape == (3, 1, 5)
    assert struct_mask([[0, 1, 0]], ndim=3).shape == (1, 1, 3)
    assert struct_mask([[1, 0, 0]])[0, 1] == 1  # the centre always hides
    with pytest.raises(CarekitError, match="odd edges"):
        struct_mask([[1, 1, 1, 1]])
    with pytest.raises(CarekitError, match="network is 2D"):
        struct_mask("z:1,x:1", ndim=2)
    with pytest.raises(CarekitError, match="no such file"):
        struct_mask("line.tif")


def test_bad_settings_are_refused():
    for kwargs, text in (({"fraction": 0.0}, "masked fraction"), ({"replacement": "mean"}, "replacement"),
                         ({"window": 4}, "window")):  # fmt: skip
        with pytest.raises(CarekitError, match=text):
            BlindSpots(**kwargs)


def test_loss_counts_the_masked_pixels_only():
    x = batch((4, 1, 32, 32))
    _, mask = hide(np.random.default_rng(7), x, BlindSpots(fraction=0.02))
    target, m = torch.from_numpy(x), torch.from_numpy(mask)
    pred = (target + torch.randn_like(target)).requires_grad_()
    loss = loss_function("mse")(pred, target, m)
    assert loss.item() == pytest.approx(((pred - target) ** 2)[m > 0].mean().item(), rel=1e-5)
    loss.backward()
    assert torch.all(pred.grad[m == 0] == 0) and torch.all(pred.grad[m > 0] != 0)
    away = pred.detach() + 5 * (1 - m)  # anything at the unmasked pixels
    assert loss_function("mse")(away, target, m).item() == pytest.approx(loss.item(), rel=1e-5)
