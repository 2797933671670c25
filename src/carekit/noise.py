"""The camera's noise, read from noisy images alone, and the noisy pixel's share in a blind-spot restoration.

A blind-spot network (Noise2Void) estimates each pixel from its neighbours only: it never reads
the pixel's own value. Where noise is weak that wastes what the pixel knows. Given the camera's
noise variance ``sigma2`` at a pixel and how far the network's estimate strays from the noisy
value on average (``v``, measured per intensity), the mean squared error of
``estimate + w * (noisy - estimate)`` is smallest at ``w = 1 - sigma2 / v`` (the Gaussian
posterior mean of Laine et al. 2019, with the network's error as the prior): close to 0 where the
network is much better than the pixel (low light), larger where the pixel is nearly clean.

A network trained with blind spots still reads the pixel a little when restoring a whole image:
its estimate moves by ``c`` times the pixel's noise (``c`` of 0.05-0.15 is usual). That part of the
noise is already in the estimate and shrinks the gap, so the share becomes
``w = 1 - (1 - c) * sigma2 / v``; ``c`` per intensity is measured by nudging every pixel by a
random sign times half its noise and reading how far each pixel's own estimate follows (the
diagonal of the network's Jacobian, estimated as Hutchinson does). Left out, ``c`` would count the
pixel's noise twice and keep it out where it would help most (weak noise).

The noise variance follows the Poisson-Gaussian line ``a * intensity + b`` of a camera. Where the
user has two or more frames of a static scene taken with the same camera settings (any sample, a
fluorescent slide, a few frames of a fixed specimen), :func:`camera_from_repeats` reads it directly
from their differences, which hold the camera's noise alone. Otherwise it is fitted from the
images themselves, which cannot tell the camera's noise from pixel-to-pixel texture of the sample
(it reads their sum): a curvature filter whose response to white noise has unit variance reads the
noise (its median absolute deviation, per intensity bin); pixels are binned by the mean
of the ring of pixels around them (which shares no noise with the filter) and a bin's intensity is
the mean of its pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import convolve, uniform_filter

from carekit.errors import CarekitError
from carekit.io import check_finite

# second differences along y, x and both: unit variance on white noise (its squares sum to 1)
CURVATURE = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32) / 6.0
MAD_TO_SIGMA = 1.4826
BINS = 16  # intensity bins of the noise fit
TABLE_BINS = 24  # intensity bins of the posterior weights
LEAST_PIXELS = 50  # pixels a bin needs to count
MAX_PIXELS = 4_000_000  # pixels read by a fit (planes spread over the images beyond)


@dataclass(frozen=True)
class Camera:
    """Noise variance ``a * intensity + b``, at least ``floor`` (the least measured: a line fitted to
    bright pixels may pass under the read noise at zero), in the units of the images it was fitted on."""

    a: float
    b: float
    floor: float = 0.0

    def variance(self, intensity: np.ndarray) -> np.ndarray:
        return np.maximum(self.a * np.maximum(intensity, 0) + self.b, max(self.floor, 1e-12))


def planes(images: list[np.ndarray], max_pixels: int = MAX_PIXELS, *, side: int | None = None,
           dtype=np.float32) -> list[np.ndarray]:  # fmt: skip
    """2D planes (last two axes) of ``images``, evenly picked up to about ``max_pixels`` and only those
    converted to ``dtype``; with ``side``, each plane's central crop of at most ``side`` pixels a side."""
    found = [p for image in images for p in np.reshape(image, (-1, *np.shape(image)[-2:]))]
    if side is not None:
        found = [p[tuple(slice(max(0, (s - side) // 2), max(0, (s - side) // 2) + side) for s in p.shape)]
                 for p in found]  # fmt: skip
    total = sum(p.size for p in found)
    step = max(1, int(np.ceil(total / max_pixels)))
    return [np.asarray(p, dtype) for p in found[::step]]


def trimmed(values: np.ndarray, centre: float) -> np.ndarray:
    """``values`` within eight robust deviations (median absolute deviation) of ``centre``: what a
    moving object or a stray bright pixel adds to a bin is left out."""
    spread = MAD_TO_SIGMA * np.median(np.abs(values - np.median(values)))
    return values[np.abs(values - centre) <= 8 * spread] if spread > 0 else values


def intensity_bins(values: np.ndarray, bins: int) -> Iterator[np.ndarray]:
    """Selections of ``values`` (1D) in ``bins`` bins between their quantiles (fewer where quantiles
    coincide), each holding at least :data:`LEAST_PIXELS`."""
    edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)))
    which = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, max(len(edges) - 2, 0))
    for i in range(max(len(edges) - 1, 1)):
        selected = which == i
        if selected.sum() >= LEAST_PIXELS:
            yield selected


def fit_camera(images: list[np.ndarray]) -> Camera:
    """The Poisson-Gaussian line of the noise in ``images`` (arrays whose last two axes are planes)."""
    noise, level, centre = [], [], []
    for p in planes(images):
        if min(p.shape) < 5:
            continue
        noise.append(convolve(p, CURVATURE, mode="reflect").ravel())
        ring = uniform_filter(p, 5, mode="reflect") * 25 - uniform_filter(p, 3, mode="reflect") * 9
        level.append(ring.ravel() / 16)
        centre.append(p.ravel())
    if not noise:
        return Camera(0.0, 0.0)
    noise, level, centre = np.concatenate(noise), np.concatenate(level), np.concatenate(centre)
    means, variances = [], []
    for sel in intensity_bins(level, BINS):
        h = noise[sel]
        # the bin's intensity: its pixels' own mean, unbiased as their noise is not the ring's (the ring's
        # mean would place the outer bins too far out where it is noisy, flattening the line)
        means.append(float(centre[sel].mean()))
        variances.append(float((MAD_TO_SIGMA * np.median(np.abs(h - np.median(h)))) ** 2))
    return camera_line(means, variances, min(variances, default=0.0))


def camera_line(means: list[float], variances: list[float], least: float) -> Camera:
    """The Poisson-Gaussian line through the noise ``variances`` of intensity bins at ``means``, at
    least ``least``: a constant where the bins hold one intensity or the noise falls with it."""
    if len(means) < 2 or np.ptp(means) == 0:
        return Camera(0.0, float(np.mean(variances)) if variances else 0.0, least)
    a, b = np.polyfit(means, variances, 1)
    if a < 0:  # no signal-dependent part to speak of: a constant read noise
        a, b = 0.0, float(np.mean(variances))
    return Camera(float(a), float(b), float(least))


def camera_from_repeats(frames: np.ndarray, what: str = "noise calibration") -> Camera:
    """The Poisson-Gaussian line of the noise in ``frames``: repeats of one static scene along the
    first axis (any other axes), taken with the camera settings of the images to restore.

    Half the squared difference of consecutive frames is the noise variance at their mean, with
    nothing of the scene in it (a slow drift such as bleaching cancels too); its mean per intensity
    bin, trimmed of differences beyond eight robust deviations (a moving object), gives the line.
    """
    f = np.asarray(frames, np.float32)
    if f.ndim < 3 or f.shape[0] < 2:
        raise CarekitError(f"{what}: needs two or more frames of one static scene along its first axis (frames, "
                           f"then the plane's Y and X), got shape {f.shape}")  # fmt: skip
    check_finite(f, what)
    step = max(1, int(np.ceil(f[0].size * (f.shape[0] - 1) / MAX_PIXELS)))
    diff = np.concatenate([(f[t + 1] - f[t]).ravel()[::step] for t in range(f.shape[0] - 1)]).astype(np.float64)
    level = np.concatenate([(0.5 * (f[t + 1] + f[t])).ravel()[::step] for t in range(f.shape[0] - 1)])
    means, variances = [], []
    for sel in intensity_bins(level, BINS):
        kept = trimmed(diff[sel], 0.0)
        means.append(float(level[sel].mean()))
        variances.append(float(np.mean(kept**2) / 2))
    if not variances or max(variances) <= 0:
        raise CarekitError(f"{what}: its frames do not differ, so they show no camera noise; give raw frames of "
                           "one scene taken one after another")  # fmt: skip
    least = min(v for v in variances if v > 0)  # dark bins clipped at 0 by the camera show no noise
    return camera_line(means, variances, least)


@dataclass(frozen=True)
class Posterior:
    """The noisy pixel's weight ``weights[i]`` at restored intensity ``centres[i]`` (interpolated between)."""

    centres: tuple[float, ...]
    weights: tuple[float, ...]

    def apply(self, noisy: np.ndarray, estimate: np.ndarray) -> np.ndarray:
        """``estimate + w * (noisy - estimate)``, in place in ``estimate``; returns it."""
        w = np.interp(estimate, self.centres, self.weights).astype(estimate.dtype)
        estimate += w * (noisy - estimate)
        return estimate

    def to_dict(self) -> dict:
        return {"centres": list(self.centres), "weights": list(self.weights)}

    @classmethod
    def from_dict(cls, d: dict) -> Posterior:
        return cls(tuple(float(c) for c in d["centres"]), tuple(float(w) for w in d["weights"]))


def reliance(restore: Callable[[np.ndarray], np.ndarray], image: np.ndarray, camera: Camera,
             rng: np.random.Generator, probes: int = 1) -> np.ndarray:  # fmt: skip
    """How far ``restore``'s estimate of each pixel follows that pixel's own noise (per pixel, noisy;
    average it over many pixels): central differences along random signs of half the noise."""
    step = 0.5 * np.sqrt(camera.variance(image)).astype(np.float32)
    found = np.zeros(image.shape, np.float32)
    for _ in range(probes):
        nudge = step * rng.choice(np.array([-1.0, 1.0], np.float32), size=image.shape)
        found += (restore(image + nudge) - restore(image - nudge)) / (2 * nudge)
    return found / probes


def fit_posterior(noisy: list[np.ndarray], estimates: list[np.ndarray], camera: Camera,
                  reliances: list[np.ndarray] | None = None) -> Posterior:  # fmt: skip
    """The weights that make ``estimate + w * (noisy - estimate)`` closest to the truth, per intensity
    bin of the estimates: ``1 - (1 - c) * sigma2 / v`` with ``v`` the bin's mean squared gap and ``c``
    its mean reliance on the pixel (:func:`reliance`; 0 where not given), clipped to [0, 1]."""
    x = np.concatenate([np.ravel(a) for a in noisy]).astype(np.float64)
    m = np.concatenate([np.ravel(a) for a in estimates]).astype(np.float64)
    c = np.concatenate([np.ravel(a) for a in reliances]) if reliances is not None else np.zeros_like(m)
    centres, weights = [], []
    for sel in intensity_bins(m, TABLE_BINS):
        gap = float(np.mean((x[sel] - m[sel]) ** 2))
        # the camera's noise at the bin's true intensity: its noisy pixels' mean (the estimates' own
        # mean leans towards the middle of the range where they are unsure)
        noise = float(camera.variance(np.mean(x[sel]))) * (1 - float(np.clip(np.mean(c[sel]), 0, 1)))
        centres.append(float(np.mean(m[sel])))
        weights.append(float(np.clip(1 - noise / gap, 0, 1)) if gap > 0 else 0.0)
    if not centres:
        return Posterior((0.0,), (0.0,))
    return Posterior(tuple(centres), tuple(weights))


# -- fresh inputs for denoising pairs ------------------------------------------------------------
WHITE_LIMIT = 0.1  # neighbour correlation of a pair's residual beyond which it is not the camera's noise alone
LEAST_RESIDUAL_PIXELS = 4096  # 16 intensity bins of 256
MAX_SIDE = 2048  # a plane's central crop read by the paired fit


@dataclass(frozen=True)
class Redraw:
    """A low-SNR input as ``gain * high + offset`` plus the camera's noise, in the input's units.

    Training on registered pairs shows the network one noise realisation of each target, again and
    again; on a few small images it learns that realisation. Redrawing the noise around the target
    gives it new ones (fitted per channel by :func:`redraw_from_pairs`). The noise is drawn as a
    camera makes it: photons counted above the darkest expected intensity ``dark`` (Poisson, ``a``
    units each), plus Gaussian read noise of the variance left at ``dark``, so that dim pixels get
    the skew of few photons and not a symmetric spread.
    """

    gain: float
    offset: float
    camera: Camera
    dark: float

    def draw(self, high: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        mean = (self.gain * np.asarray(high, np.float32) + self.offset).astype(np.float32)
        a, read = self.camera.a, float(self.camera.variance(np.float32(self.dark)))
        if a <= 0:  # no photon part: the read noise alone
            return mean + np.sqrt(read).astype(np.float32) * rng.standard_normal(mean.shape, dtype=np.float32)
        photons = np.maximum(mean - self.dark, 0) / a
        out = (rng.poisson(photons).astype(np.float32) - photons) * np.float32(a) + mean
        return out + np.float32(np.sqrt(read)) * rng.standard_normal(mean.shape, dtype=np.float32)


def redraw_from_pairs(lows: list[np.ndarray], highs: list[np.ndarray]) -> tuple[Redraw | None, str]:
    """How the inputs ``lows`` follow their targets ``highs`` (one channel: arrays of the same shape
    whose last two axes are planes), or None and why not.

    ``low = gain * high + offset`` by least squares; what is left must be the camera's noise: white
    (neighbouring pixels correlate by less than :data:`WHITE_LIMIT` along y and along x; a blurred,
    shifted or differently lit input leaves structure that is not) and of a variance that follows
    the Poisson-Gaussian line of the intensity (fitted per intensity bin, as :func:`camera_from_repeats`).
    """
    picked = [planes(images, side=MAX_SIDE, dtype=np.float64) for images in (lows, highs)]
    pl = [(a, b) for a, b in zip(*picked, strict=True) if min(a.shape) >= 3]
    if not pl or sum(a.size for a, _ in pl) < LEAST_RESIDUAL_PIXELS:
        return None, "too few pixels to read the camera's noise from"
    x = np.concatenate([b.ravel() for _, b in pl])
    y = np.concatenate([a.ravel() for a, _ in pl])
    if np.ptp(x) == 0:
        return None, "the target is constant"
    gain, offset = np.polyfit(x, y, 1)
    if gain <= 0:
        return None, "the input does not grow with the target"
    residuals = [a - (gain * b + offset) for a, b in pl]
    variance = sum(float(np.sum(r**2)) for r in residuals) / sum(r.size for r in residuals)
    if variance <= 1e-8 * np.var(y):  # float rounding at most
        return None, "the input holds no noise beyond the target"
    for axis, name in ((-1, "x"), (-2, "y")):
        # mean squared step between neighbours = 2 * variance * (1 - correlation)
        steps = [np.diff(r, axis=axis) for r in residuals]
        step2 = sum(float(np.sum(s**2)) for s in steps) / sum(s.size for s in steps)
        corr = 1 - step2 / (2 * variance)
        if abs(corr) > WHITE_LIMIT:
            return None, (f"what the input holds beyond the target correlates along {name} by {corr:.2f} "
                          "(not the camera's noise alone: blur, shifts or other light)")  # fmt: skip
    level = gain * x + offset
    r = y - level
    means, variances = [], []
    for sel in intensity_bins(level, BINS):
        kept = trimmed(r[sel], float(np.median(r[sel])))
        means.append(float(level[sel].mean()))
        variances.append(float(np.var(kept)))
    if not variances or max(variances) <= 0:
        return None, "the input holds no noise beyond the target"  # every bin's spread trimmed to none
    camera = camera_line(means, variances, min(v for v in variances if v > 0))
    return Redraw(float(gain), float(offset), camera, float(np.percentile(level, 0.1))), ""


def describe_redraw(report: dict | None) -> str:
    """One line on a model's redrawn training inputs (empty where they were not redrawn)."""
    if not report:
        return ""
    line = (f"{report['share']:.0%} of training inputs redrawn around their targets with the camera noise fitted to "
            f"the pairs ({report['pairs']} of {report['of']} pairs)")  # fmt: skip
    return line + (f"; kept as acquired: {report['notes'][0]}" if report.get("notes") else "")
