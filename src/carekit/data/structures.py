"""Fully synthetic ground truth and a widefield microscope to image it.

Structures (pure functions of parameters and a ``numpy.random.Generator``, 2D or 3D):

- :func:`tubules`: microtubule-like curves, persistent random walks of sub-pixel width,
  with crossings and per-tubule brightness;
- :func:`granules`: vesicle-like disks/spheres with a log-normal size distribution.

The imaging model (:func:`widefield`) blurs with a PSF (a Gaussian from NA, wavelength
and pixel size, or a given kernel), adds smooth background auto-fluorescence, converts
to photons and applies Poisson-Gaussian camera noise, optionally averaging ``frames``
exposures. Lengths are in pixels unless named otherwise.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.signal import fftconvolve

from carekit.data.camera import poisson_gaussian
from carekit.data.surfaces import smooth_field


def splat(image: np.ndarray, points: np.ndarray, weights: np.ndarray) -> None:
    """Add ``weights`` at sub-pixel ``points`` (``(n, ndim)``) with linear interpolation, in place."""
    base = np.floor(points).astype(int)
    frac = points - base
    ndim = image.ndim
    for corner in range(2**ndim):
        offs = np.array([(corner >> d) & 1 for d in range(ndim)])
        idx = base + offs
        w = weights * np.prod(np.where(offs, frac, 1 - frac), axis=1)
        ok = np.all((idx >= 0) & (idx < np.array(image.shape)), axis=1)
        np.add.at(image, tuple(idx[ok].T), w[ok])


def random_directions(n: int, ndim: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal((n, ndim))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def walk(start: np.ndarray, direction: np.ndarray, n_steps: int, step: float, turn: float, curvature: float,
         rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """Points of a persistent random walk; ``curvature`` (1/px, 2D only) bends it into arcs whose
    curvature itself drifts, so walks range from straight lines to arcs and S-shapes."""
    ndim = len(start)
    points = np.empty((n_steps, ndim))
    pos, bend = start.astype(float), curvature * rng.standard_normal() if curvature else 0.0
    for i in range(n_steps):
        points[i] = pos
        direction = direction + turn * rng.standard_normal(ndim)
        if bend and ndim == 2:
            direction = direction + step * bend * np.array([-direction[1], direction[0]])
            bend += curvature * np.sqrt(step / 100.0) * rng.standard_normal()
        direction /= np.linalg.norm(direction)
        pos = pos + step * direction
    return points


def along(n: int, depth: float, rng: np.random.Generator) -> np.ndarray:
    """Brightness along a structure of ``n`` points: 1 where ``depth`` is 0, else a smooth random
    profile falling to ``1 - depth`` (over 5-40 px at 2 points per pixel), now and then with a gap."""
    if depth <= 0:
        return np.ones(n)
    v = gaussian_filter(rng.standard_normal(n + 160), rng.uniform(10, 80), mode="wrap")[80:-80]
    v = (v - v.min()) / (np.ptp(v) or 1.0)
    profile = 1 - depth + depth * v
    if rng.random() < 0.25 * depth:  # a stretch where the label is missing
        centre, half = rng.integers(n), rng.integers(6, 30)
        profile[max(0, centre - half) : centre + half] *= 0.1
    return profile


def beside(points: np.ndarray, distance: float) -> np.ndarray:
    """A copy of a 2D polyline shifted ``distance`` px along its local normal (a bundled neighbour)."""
    tangent = np.gradient(points, axis=0)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
    return points + distance * normal / (np.linalg.norm(normal, axis=1, keepdims=True) + 1e-9)


def tubules(shape: tuple[int, ...], rng: np.random.Generator, *, density: float = 0.02, length: float = 120.0,
            persistence: float = 40.0, width: float = 0.5, intensity: tuple[float, float] = (0.6, 1.0),
            width_spread: float = 1.0, curvature: float = 0.0, profile: float = 0.0,
            bundles: float = 0.0) -> np.ndarray:  # fmt: skip
    """Curved tubules as persistent random walks.

    Parameters
    ----------
    density : float
        Tubule length per pixel (or voxel) of the image: about ``density * size / length`` tubules.
    length : float
        Length of each tubule in pixels.
    persistence : float
        Persistence length in pixels: the direction decorrelates over this distance
        (larger is straighter).
    width : float
        Gaussian sigma of the tubule cross-section in pixels (below the diffraction limit).
    intensity : (low, high)
        Brightness per unit length, drawn uniformly per tubule.
    width_spread : float
        Each tubule's width is ``width`` times a factor drawn log-uniformly from
        ``[1 / width_spread, width_spread]`` (1: all alike).
    curvature : float
        Typical curvature (1/px) of arcs added to the walk, drifting along it (2D; 0: none).
    profile : float
        Depth of the brightness variation along each tubule, 0..1 (0: uniform).
    bundles : float
        Chance that a tubule runs with one to three parallel neighbours 1.5-5 px away (2D).
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    count = rng.poisson(max(density * np.prod(shape) / length, 0.0))
    step = 0.5
    n_steps = max(2, int(length / step))
    turn = np.sqrt(2 * step / persistence) if persistence > 0 else 0.0
    varied = width_spread > 1 or curvature > 0 or profile > 0 or bundles > 0
    layers: dict[float, np.ndarray] = {}
    for _ in range(count):
        start = rng.uniform(0, 1, ndim) * np.array(shape)
        points = walk(start, random_directions(1, ndim, rng)[0], n_steps, step, turn, curvature, rng)
        weights = np.full(n_steps, rng.uniform(*intensity) * step)
        sigma = width
        if varied:  # draws only where asked, so fixed recipes give the pairs they always gave
            sigma = round(width * width_spread ** rng.uniform(-1, 1), 2)
            weights = weights * along(n_steps, profile, rng)
        group = [(points, weights)]
        if bundles > 0 and ndim == 2 and rng.random() < bundles:
            for k in range(1, rng.integers(2, 5)):
                offset = k * rng.uniform(1.5, 5.0) * rng.choice([-1, 1])
                group.append((beside(points, offset), weights[::-1] * rng.uniform(0.6, 1.2)))
        layer = layers.setdefault(sigma, np.zeros(shape, np.float32))
        for p, w in group:
            splat(layer, p, w)
    out = np.zeros(shape, np.float32)
    for sigma, layer in layers.items():
        out += gaussian_filter(layer, sigma) if sigma > 0 else layer
    return out


def granules(shape: tuple[int, ...], rng: np.random.Generator, *, density: float = 0.002, radius: float = 2.0,
             radius_sd: float = 0.3, intensity: tuple[float, float] = (0.6, 1.0)) -> np.ndarray:  # fmt: skip
    """Disks (2D) or spheres (3D) with log-normal radii (median ``radius``, log-sd ``radius_sd``).

    ``density`` is the expected number of granules per pixel; brightness is uniform per
    granule. Edges are anti-aliased by 4x supersampling of the radius test.
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    count = rng.poisson(density * np.prod(shape))
    out = np.zeros(shape, np.float32)
    radii = radius * np.exp(radius_sd * rng.standard_normal(count))
    for r, b in zip(radii, rng.uniform(*intensity, count), strict=True):
        centre = rng.uniform(0, 1, ndim) * np.array(shape)
        lo = np.maximum(np.floor(centre - r - 1).astype(int), 0)
        hi = np.minimum(np.ceil(centre + r + 2).astype(int), shape)
        if np.any(hi <= lo):
            continue
        grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij")
        cover = np.zeros(grids[0].shape, np.float32)
        for sub in np.linspace(-0.375, 0.375, 4):  # supersample along the radius
            dist = np.sqrt(sum((g + 0.5 + sub - c) ** 2 for g, c in zip(grids, centre, strict=True)))
            cover += (dist <= r).astype(np.float32) / 4
        out[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] += b * cover
    return out


def gaussian_psf(sigmas: tuple[float, ...], truncate: float = 4.0) -> np.ndarray:
    """A normalised Gaussian kernel with one sigma per axis (in pixels)."""
    radius = [max(1, int(np.ceil(truncate * s))) for s in sigmas]
    grids = np.meshgrid(*[np.arange(-r, r + 1) for r in radius], indexing="ij")
    k = np.exp(-0.5 * sum((g / max(s, 1e-6)) ** 2 for g, s in zip(grids, sigmas, strict=True)))
    return (k / k.sum()).astype(np.float32)


def blur(image: np.ndarray, psf: np.ndarray) -> np.ndarray:
    """Convolve with a PSF of the same dimensionality (reflecting borders)."""
    pad = [(s // 2, s // 2) for s in psf.shape]
    padded = np.pad(image, pad, mode="reflect")
    return fftconvolve(padded, psf, mode="valid").astype(np.float32)


def widefield(truth: np.ndarray, psf: np.ndarray, rng: np.random.Generator, *, photons: float = 50.0,
              background: float = 0.1, background_scale: float = 32.0, read_sigma: float = 2.0,
              frames: int = 1, field: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    """Image ``truth`` with a widefield microscope; returns camera counts (float32).

    The blurred truth is scaled so its brightest structures give ``photons`` per pixel;
    a smooth auto-fluorescence field adds up to ``background * photons``; each of
    ``frames`` exposures gets independent Poisson and Gaussian read noise, and their mean
    is returned (so noise falls as ``1/sqrt(frames)``).
    """
    return widefield_counts(truth, psf, rng, photons=photons, background=background, background_scale=background_scale,
                            read_sigma=read_sigma, frames=frames, field=field)[0]  # fmt: skip


def widefield_counts(truth: np.ndarray, psf: np.ndarray, rng: np.random.Generator, *, photons: float = 50.0,
                     background: float = 0.1, background_scale: float = 32.0, read_sigma: float = 2.0,
                     frames: int = 1, field: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """:func:`widefield`'s image and ``truth`` in the same units: the counts each structure adds before
    the blur spreads them (so the image's signal is this truth blurred, plus background and noise)."""
    blurred = np.clip(blur(truth, psf), 0, None)
    scale = photons / (float(np.percentile(blurred, 99.9)) or 1.0)
    expected = blurred * scale
    if background > 0:
        shape = smooth_field(truth.shape, background_scale, rng) if field is None else field
        expected = expected + background * photons * shape
    frames = max(1, int(frames))
    total = sum(poisson_gaussian(expected, rng, read_sigma=read_sigma) for _ in range(frames))
    return (total / frames).astype(np.float32), (truth * np.float32(scale)).astype(np.float32)


def line_pair(shape: tuple[int, int], separation: float, *, width: float = 0.5, margin: float = 8.0) -> np.ndarray:
    """Two parallel vertical tubules ``separation`` pixels apart, centred in a 2D image (a resolution target)."""
    ny, nx = shape
    out = np.zeros(shape, np.float32)
    ys = np.arange(margin, ny - margin, 0.25)
    for x in (nx / 2 - separation / 2, nx / 2 + separation / 2):
        splat(out, np.stack([ys, np.full_like(ys, x)], axis=1), np.full(len(ys), 0.25))
    return gaussian_filter(out, width) if width > 0 else out
