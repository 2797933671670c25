"""A second tubule generator, written for evaluation only (never imported by carekit).

carekit's recipes draw tubules as persistent random walks splatted onto the grid and blurred
by one width per tubule. This generator draws them differently, so a network trained on
recipes is tested on structure it has never seen:

- centre lines are Catmull-Rom splines through a few random control points, some with a
  sinusoidal wobble on top, some nearly straight;
- the cross-section is rendered from the distance to the centre line (not by blurring a
  splat), a Gaussian whose width changes along each curve (0.3-1.2 px sigma);
- brightness varies along each curve (a random smooth profile, with occasional gaps) and
  between curves (log-normal);
- bundles: some curves get one to three companions at 1.5-5 px beside them;
- the microscope: the recipe's Gaussian PSF and photon scale, but a background of its own
  (out-of-focus curves blurred by a wide kernel, a constant offset and a linear gradient),
  Poisson noise and Gaussian read noise.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree


def catmull_rom(points: np.ndarray, samples: int) -> np.ndarray:
    """A centripetal-free (uniform) Catmull-Rom spline through ``points`` ``(k, 2)``, ``samples`` points."""
    p = np.concatenate([2 * points[:1] - points[1:2], points, 2 * points[-1:] - points[-2:-1]])
    segments = len(points) - 1
    t = np.linspace(0, segments, samples, endpoint=False)
    i = np.minimum(t.astype(int), segments - 1)
    u = (t - i)[:, None]
    p0, p1, p2, p3 = p[i], p[i + 1], p[i + 2], p[i + 3]
    return 0.5 * (
        2 * p1 + (-p0 + p2) * u + (2 * p0 - 5 * p1 + 4 * p2 - p3) * u**2 + (-p0 + 3 * p1 - 3 * p2 + p3) * u**3
    )


def smooth_profile(n: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    """A smooth random profile of length ``n`` in [0, 1] varying over about ``scale`` samples."""
    v = ndi.gaussian_filter1d(rng.standard_normal(n + 64), scale, mode="wrap")[32:-32]
    return (v - v.min()) / (np.ptp(v) or 1.0)


def centre_line(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Sample points (about 4 per pixel) of one curve crossing part of the image."""
    size = np.array(shape, float)
    start = rng.uniform(-0.1, 1.1, 2) * size
    heading = rng.uniform(0, 2 * np.pi)
    length = rng.uniform(0.4, 1.4) * size.mean()
    k = rng.integers(3, 7)
    bend = rng.choice([0.05, 0.3, 0.8])  # nearly straight, gently curved, tortuous
    angles = heading + np.cumsum(rng.normal(0, bend, k))
    steps = (length / k) * np.stack([np.sin(angles), np.cos(angles)], axis=1)
    control = np.concatenate([start[None], start + np.cumsum(steps, axis=0)])
    line = catmull_rom(control, int(4 * length) + 8)
    if rng.random() < 0.4:  # a wobble along the normal
        tangent = np.gradient(line, axis=0)
        normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
        normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-9
        s = np.arange(len(line)) / 4.0
        line = line + normal * (rng.uniform(0.5, 2.5) * np.sin(2 * np.pi * s / rng.uniform(15, 40)))[:, None]
    return line


def offset_line(line: np.ndarray, distance: float) -> np.ndarray:
    tangent = np.gradient(line, axis=0)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-9
    return line + distance * normal


def render(shape: tuple[int, int], lines: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    """Sum of Gaussian cross-sections around each centre line: ``(points, sigma, brightness)`` per point.

    Each pixel takes the nearest point of each curve, so the profile across a curve is
    ``brightness * exp(-d^2 / 2 sigma^2)`` with the local width and brightness.
    """
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    pixels = np.stack([yy.ravel(), xx.ravel()], axis=1).astype(float)
    out = np.zeros(shape[0] * shape[1])
    for points, sigma, brightness in lines:
        d, idx = cKDTree(points).query(pixels, distance_upper_bound=4 * sigma.max() + 1)
        near = np.isfinite(d)
        s, b = sigma[idx[near]], brightness[idx[near]]
        out[near] += b * np.exp(-0.5 * (d[near] / s) ** 2) / s  # equal mass per length across widths
    return out.reshape(shape).astype(np.float32)


def curves(shape: tuple[int, int], rng: np.random.Generator, count: int) -> list:
    """Centre lines with per-point width and brightness, including bundled companions."""
    out = []
    for _ in range(count):
        line = centre_line(shape, rng)
        n = len(line)
        width = rng.uniform(0.3, 1.0) * (1 + 0.4 * (smooth_profile(n, rng, 60) - 0.5))
        level = rng.lognormal(0, 0.35)
        along = 0.25 + 0.75 * smooth_profile(n, rng, rng.uniform(10, 80))
        if rng.random() < 0.3:  # a gap: the curve fades out over a stretch
            centre, half = rng.integers(n), rng.integers(8, 40)
            along[max(0, centre - half) : centre + half] *= 0.1
        out.append((line, np.clip(width, 0.3, 1.2), level * along))
        if rng.random() < 0.3:  # a bundle of parallel curves
            for j in range(rng.integers(1, 4)):
                side = (j + 1) * rng.uniform(1.5, 5.0) * rng.choice([-1, 1])
                out.append((offset_line(line, side), np.clip(width * rng.uniform(0.8, 1.2), 0.3, 1.2),
                            level * rng.uniform(0.6, 1.2) * along[::-1] ** 0.5))  # fmt: skip
    return out


def draw(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A clean 2D tubule image (ground truth), 6-14 curves per 128x128 plus bundles."""
    count = max(2, int(rng.integers(6, 15) * np.prod(shape) / 128**2))
    return render(shape, curves(shape, rng, count))


def gaussian_psf_2d(sigma: float) -> np.ndarray:
    r = int(np.ceil(4 * sigma))
    x = np.arange(-r, r + 1)
    k = np.exp(-0.5 * (x[:, None] ** 2 + x[None] ** 2) / sigma**2)
    return k / k.sum()


def image(truth: np.ndarray, psf_sigma: float, rng: np.random.Generator, *, photons: float = 100.0,
          read_noise: float = 2.0, background: float = 0.1) -> np.ndarray:  # fmt: skip
    """The widefield image of ``truth``: Gaussian PSF, photons at the 99.9th percentile, out-of-focus
    curves, an offset and a gradient as background, Poisson and read noise."""
    blurred = np.clip(ndi.gaussian_filter(truth.astype(np.float64), psf_sigma, mode="reflect"), 0, None)
    signal = blurred / (np.percentile(blurred, 99.9) or 1.0) * photons
    haze = ndi.gaussian_filter(draw(truth.shape, rng).astype(np.float64), 4 * psf_sigma, mode="reflect")
    haze = haze / (haze.max() or 1.0)
    yy, xx = np.mgrid[0 : truth.shape[0], 0 : truth.shape[1]] / max(truth.shape)
    gradient = 1 + rng.uniform(-0.8, 0.8) * (yy - 0.5) + rng.uniform(-0.8, 0.8) * (xx - 0.5)  # positive
    level = background * photons * rng.uniform(0.5, 2.0)
    expected = signal + level * (0.6 * haze + 0.4 * gradient)
    return (rng.poisson(expected) + rng.normal(0, read_noise, truth.shape)).astype(np.float32)


def test_set(n: int, shape: tuple[int, int], psf_sigma: float, seed: int, **imaging) -> list[tuple]:
    """``n`` pairs (widefield image, truth) drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        truth = draw(shape, rng)
        out.append((image(truth, psf_sigma, rng, **imaging), truth))
    return out
