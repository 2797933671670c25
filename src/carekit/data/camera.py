"""The camera: photon counts and Poisson-Gaussian noise (pure numpy functions)."""

from __future__ import annotations

import numpy as np


def to_photons(image: np.ndarray, peak: float, *, percentile: float = 99.9) -> np.ndarray:
    """Scale a clean image to expected photon counts.

    The image's minimum maps to 0 photons and its ``percentile`` to ``peak`` photons,
    so ``peak`` sets the signal-to-noise ratio of the bright structures.
    """
    img = np.asarray(image, np.float64)
    lo = img.min()
    hi = np.percentile(img, percentile)
    span = hi - lo if hi > lo else 1.0
    return ((img - lo) / span * peak).clip(0, None).astype(np.float32)


def poisson_gaussian(photons: np.ndarray, rng: np.random.Generator, *, read_sigma: float = 0.0, gain: float = 1.0,
                     offset: float = 0.0) -> np.ndarray:  # fmt: skip
    """Simulate a camera: ``gain * Poisson(photons) + N(0, read_sigma**2) + offset``.

    The result has mean ``gain * photons + offset`` and variance
    ``gain**2 * photons + read_sigma**2`` (float32).
    """
    if np.any(np.asarray(photons) < 0):
        raise ValueError("expected photon counts must be non-negative")
    counts = rng.poisson(np.asarray(photons, np.float64)).astype(np.float32) * np.float32(gain)
    if read_sigma > 0:
        counts += rng.normal(0.0, read_sigma, size=counts.shape).astype(np.float32)
    return counts + np.float32(offset)


def widefield_sigmas(na: float, wavelength: float, refractive_index: float = 1.33) -> tuple[float, float]:
    """Gaussian approximation of a widefield PSF: ``(sigma_z, sigma_xy)`` in the units of ``wavelength``.

    ``sigma_xy = 0.21 wavelength / NA`` and ``sigma_z = 0.66 n wavelength / NA**2``.
    """
    if not 0 < na < refractive_index:
        raise ValueError(f"NA must be in (0, refractive index {refractive_index}), got {na}")
    if wavelength <= 0:
        raise ValueError(f"wavelength must be positive, got {wavelength}")
    return 0.66 * refractive_index * wavelength / na**2, 0.21 * wavelength / na


def gaussian_kernel_1d(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """A normalised 1D Gaussian (a single 1 for ``sigma`` 0)."""
    if sigma <= 0:
        return np.ones(1, np.float32)
    r = max(1, int(np.ceil(truncate * sigma)))
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def resample_axis(x: np.ndarray, axis: int, positions: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``x`` along ``axis`` at fractional ``positions`` (clamped to the ends)."""
    x = np.moveaxis(np.asarray(x, np.float32), axis, 0)
    pos = np.clip(np.asarray(positions, np.float64), 0, x.shape[0] - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, x.shape[0] - 1)
    w = (pos - lo).astype(np.float32).reshape((-1,) + (1,) * (x.ndim - 1))
    out = x[lo] * (1 - w) + x[hi] * w
    return np.moveaxis(out, 0, axis)


def upsampled_positions(n: int, factor: float) -> np.ndarray:
    """Input coordinates of the output samples when ``n`` samples are upsampled by ``factor``.

    Output sample ``k`` lies at input position ``k / factor``, so input sample ``i`` is output
    sample ``i * factor``; the last output sample does not pass the last input sample.
    """
    count = int(np.floor((n - 1) * factor + 1e-9)) + 1
    return np.arange(count) / factor


def subsample_and_interpolate(x: np.ndarray, axis: int, factor: float) -> np.ndarray:
    """Keep every ``factor``-th sample along ``axis`` (fractional positions interpolated), then
    interpolate linearly back onto the original grid. The shape is unchanged."""
    n = x.shape[axis]
    coarse = resample_axis(x, axis, np.arange(0, n - 1 + 1e-9, factor))
    return resample_axis(coarse, axis, np.arange(n) / factor)
