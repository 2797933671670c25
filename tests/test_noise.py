"""The camera's noise from noisy images alone, and the noisy pixel's share in a blind-spot restoration."""

import numpy as np
import pytest
from conftest import blobs

from carekit.config import Config
from carekit.data.camera import poisson_gaussian, to_photons
from carekit.errors import CarekitError
from carekit.noise import Camera, camera_from_repeats, fit_camera, fit_posterior, reliance


@pytest.mark.parametrize(("peak", "read"), [(20.0, 1.0), (200.0, 3.0)])
def test_camera_noise_is_read_from_the_noisy_images(peak, read):
    clean = blobs((4, 128, 128), seed=2, density=0.002, sigma=4.0) + 0.05  # smooth, as most samples
    photons = to_photons(clean, peak)
    noisy = poisson_gaussian(photons, np.random.default_rng(0), read_sigma=read)
    camera = fit_camera([noisy])
    true = photons + read**2
    fitted = camera.variance(photons)
    assert abs(np.median(fitted / true) - 1) < 0.2  # within 20 % where the pixels are


def test_the_noise_slope_holds_at_few_photons():
    # at 8 photons the ring of pixels that bins them is noisy: binned by it, the outer bins' pixels are
    # less extreme than the ring says, and placing bins at the ring's mean read 0.83 per photon here
    clean = blobs((4, 128, 128), seed=2, density=0.01, sigma=2.0) + 0.05
    noisy = poisson_gaussian(to_photons(clean, 8.0), np.random.default_rng(0), read_sigma=2.0)
    camera = fit_camera([noisy])
    assert abs(camera.a - 1.0) < 0.12 and abs(camera.b - 4.0) < 0.5


def test_constant_noise_has_no_slope():
    noisy = np.random.default_rng(1).normal(10.0, 2.0, (2, 96, 96)).astype(np.float32)
    camera = fit_camera([noisy])
    assert camera.a < 0.05 and abs(camera.b - 4.0) < 0.6


def blend_case(error: float, noise: float, n: int = 200_000):
    rng = np.random.default_rng(3)
    truth = rng.uniform(10, 50, n).astype(np.float32)
    estimate = truth + rng.normal(0, np.sqrt(error), n).astype(np.float32)
    noisy = truth + rng.normal(0, np.sqrt(noise), n).astype(np.float32)
    return truth, estimate, noisy


def test_the_noisy_pixel_gets_the_share_that_minimises_the_error():
    truth, estimate, noisy = blend_case(error=4.0, noise=4.0)  # as good as each other: half each
    table = fit_posterior([noisy], [estimate], Camera(0.0, 4.0))
    # half each (at the ends of the range an estimate's extremes are partly its error: more of the pixel there)
    assert np.allclose(table.weights[2:-2], 0.5, atol=0.05)
    before = np.mean((estimate - truth) ** 2)
    after = np.mean((table.apply(noisy, estimate.copy()) - truth) ** 2)
    assert after < 0.55 * before  # the ideal halves the error


def test_a_good_estimate_keeps_the_noisy_pixel_out():
    truth, estimate, noisy = blend_case(error=0.1, noise=25.0)
    table = fit_posterior([noisy], [estimate], Camera(0.0, 25.0))
    assert max(table.weights) < 0.03
    after = np.mean((table.apply(noisy, estimate.copy()) - truth) ** 2)
    assert after < 0.11  # no worse than the estimate's 0.1 to speak of


def test_an_estimate_that_reads_the_pixel_gets_its_share_from_the_measured_reliance():
    # a blind-spot network restoring a whole image follows its pixel's noise a little (c = 0.3 here)
    rng = np.random.default_rng(4)
    truth = rng.uniform(10, 50, 200_000).astype(np.float32)
    noise = rng.normal(0, 2.0, truth.size).astype(np.float32)
    estimate = truth + rng.normal(0, 2.0, truth.size).astype(np.float32) + 0.3 * noise
    noisy = truth + noise
    camera = Camera(0.0, 4.0)

    def restore(image):  # the same dependence on the pixel, as a function the probe can nudge
        return estimate + 0.3 * (image - noisy)

    c = reliance(restore, noisy, camera, rng)
    assert abs(float(np.mean(c)) - 0.3) < 0.01
    plain = fit_posterior([noisy], [estimate], camera)
    aware = fit_posterior([noisy], [estimate], camera, [c])
    # best share: 1 - (1 - c) sigma2 / v = 1 - 0.7 * 4 / (4 + 0.49 * 4) = 0.53; without c: 0.33
    assert np.allclose(aware.weights[2:-2], 0.53, atol=0.05)
    errors = [np.mean((t.apply(noisy, estimate.copy()) - truth) ** 2) for t in (plain, aware)]
    assert errors[1] < 0.95 * errors[0]


def test_a_damaged_blend_in_a_configuration_is_refused():
    good = {"camera": [1.0, 4.0, 4.0], "centres": [1.0, 2.0], "weights": [0.1, 0.2]}
    Config(axes="YX", mode="n2v", n2v={"blend": good})
    for bad in ({**good, "weights": [0.1, 1.5]}, {**good, "centres": [2.0, 1.0]}, {**good, "camera": [1.0]},
                {**good, "weights": [0.1]}):  # fmt: skip
        with pytest.raises(CarekitError, match=r"n2v\.blend"):
            Config(axes="YX", mode="n2v", n2v={"blend": bad})


def textured_frames(n: int, gain: float, offset: float, read: float) -> tuple[np.ndarray, np.ndarray]:
    """``n`` frames of one static scene whose pixels carry a texture of their own (as real samples do),
    bleaching by 1 % a frame, and the scene's expected photons."""
    rng = np.random.default_rng(5)
    scene = to_photons(blobs((128, 128), seed=6, density=0.01, sigma=3.0) + 0.1, 150.0)
    scene = scene * rng.uniform(0.6, 1.4, scene.shape).astype(np.float32)  # pixel-to-pixel texture
    frames = [poisson_gaussian(scene * 0.99**t, rng, read_sigma=read, gain=gain, offset=offset) for t in range(n)]
    return np.stack(frames), scene


def test_the_camera_is_read_from_frames_of_a_static_scene():
    gain, offset, read = 2.5, 100.0, 3.0
    frames, scene = textured_frames(6, gain, offset, read)
    camera = camera_from_repeats(frames)
    level = gain * scene + offset  # the camera's line in its own units: a = gain, b = read^2 - gain * offset
    true = gain * scene * gain + read**2
    assert abs(camera.a - gain) < 0.1 * gain
    assert abs(np.median(camera.variance(level) / true) - 1) < 0.05
    # one frame alone cannot tell the texture from the camera's noise and reads far more noise
    assert np.median(fit_camera([frames[0]]).variance(level) / true) > 1.3


def test_calibration_frames_are_checked():
    frames, _ = textured_frames(2, 1.0, 0.0, 1.0)
    with pytest.raises(CarekitError, match="calibration: needs two or more frames"):
        camera_from_repeats(frames[:1])
    with pytest.raises(CarekitError, match="needs two or more frames"):
        camera_from_repeats(frames[0])  # a single plane is not a stack of frames
    with pytest.raises(CarekitError, match="do not differ"):
        camera_from_repeats(np.stack([frames[0], frames[0]]))
    bad = frames.copy()
    bad[1, 3, 3] = np.nan
    with pytest.raises(CarekitError, match="NaN"):
        camera_from_repeats(bad)


# -- fresh inputs for denoising pairs ----------------------------------------------------------------
def test_a_pairs_camera_is_read_from_input_and_target():
    from carekit.noise import redraw_from_pairs

    clean = blobs((2, 128, 128), seed=3, density=0.004, sigma=2.0) * 500 + 20  # a target in its own units
    photons = to_photons(clean, 20.0)
    low = poisson_gaussian(photons, np.random.default_rng(0), read_sigma=2.0) + 100  # camera offset
    found, why = redraw_from_pairs([low], [clean])
    assert found is not None, why
    mean = found.gain * clean + found.offset
    assert np.abs(mean - (photons + 100)).max() < 0.3  # the input's expectation, from the target
    assert abs(found.camera.a - 1.0) < 0.1  # variance photons + 4 at the offset intensity photons + 100
    assert np.abs(found.camera.variance(mean) / (photons + 4.0) - 1).max() < 0.1
    drawn = found.draw(clean, np.random.default_rng(1))
    assert abs(np.var(drawn - mean) / np.var(low - mean) - 1) < 0.05
    assert abs(np.corrcoef((drawn - mean)[..., 1:].ravel(), (low - mean)[..., 1:].ravel())[0, 1]) < 0.05
    skew = np.mean((drawn - mean) ** 3) / np.mean((low - mean) ** 3)  # few photons: skewed, as counted
    assert 0.5 < skew < 1.5


@pytest.mark.parametrize("change", ["blurred", "shifted"])
def test_an_input_that_is_not_its_target_plus_noise_is_left_alone(change):
    from scipy.ndimage import gaussian_filter, shift

    from carekit.noise import redraw_from_pairs

    clean = blobs((2, 128, 128), seed=3, density=0.004, sigma=1.5)
    seen = gaussian_filter(clean, (0, 2, 2)) if change == "blurred" else shift(clean, (0, 0, 1.5), order=1)
    low = poisson_gaussian(to_photons(seen, 100.0), np.random.default_rng(0), read_sigma=2.0)
    found, why = redraw_from_pairs([low], [clean])
    assert found is None and "correlates along" in why


def test_an_input_without_noise_is_left_alone():
    from carekit.noise import redraw_from_pairs

    clean = blobs((2, 96, 96), seed=3)
    found, why = redraw_from_pairs([clean * 3 + 1], [clean])
    assert found is None and why == "the input holds no noise beyond the target"
