import numpy as np

from carekit.normalize import IntensityMap, denormalize, normalize, percentiles


def test_normalize_is_exactly_inverted():
    rng = np.random.default_rng(0)
    x = rng.gamma(2.0, 100.0, size=(3, 2, 16, 16)).astype(np.float32)
    lo, hi = percentiles(x, (2, 99.8))
    assert lo.shape == (3, 2, 1, 1)
    y = normalize(x, lo, hi)
    assert abs(np.percentile(y[0, 0], 2)) < 1e-5 and abs(np.percentile(y[0, 0], 99.8) - 1) < 1e-5
    np.testing.assert_allclose(denormalize(y, lo, hi), x, rtol=1e-6, atol=1e-3)


def test_flat_images_do_not_divide_by_zero():
    x = np.full((1, 1, 8, 8), 7.0, np.float32)
    lo, hi = percentiles(x, (2, 99.8))
    y = normalize(x, lo, hi)
    assert np.isfinite(y).all()
    np.testing.assert_array_equal(denormalize(y, lo, hi), x)


def test_intensity_map_is_exact_for_one_pair():
    m = IntensityMap.fit([np.array([[10.0, 110.0]])], [np.array([[1000.0, 6000.0]])])
    lo, hi = m.apply(np.array([[[[10.0]]]]), np.array([[[[110.0]]]]))
    assert np.allclose([lo.item(), hi.item()], [1000.0, 6000.0], rtol=1e-5)
    assert IntensityMap.from_dict(m.to_dict()) == m


def test_intensity_map_follows_input_brightness():
    # targets are 3x the inputs plus 50, for images of different brightness
    ins = [np.array([[a, b]]) for a, b in [(0, 100), (10, 300), (5, 50)]]
    outs = [3 * i + 50 for i in ins]
    m = IntensityMap.fit(ins, outs)
    assert np.allclose(m.gain, [3.0]) and np.allclose(m.offset, [50.0])


def test_channel_count_change_maps_from_the_mean_input_channel():
    m = IntensityMap.fit([np.array([[0.0, 1.0], [0.0, 3.0]])], [np.array([[5.0, 9.0]])])
    lo, hi = m.apply(np.zeros((1, 2, 1, 1)), np.array([1.0, 3.0]).reshape(1, 2, 1, 1))
    assert lo.shape == (1, 1, 1, 1)
    assert np.allclose([lo.item(), hi.item()], [5.0, 9.0])
