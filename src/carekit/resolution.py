"""Resolution as a number: line profiles, peak separation, FWHM and decorrelation analysis.

- :func:`line_profile` samples an image along a segment (averaged over a width);
- :func:`dip` says how deep the valley between the two strongest peaks of a profile is
  (0: one blob, 0.2: the 20 % dip of a resolved pair, 1: fully separated), and
  :func:`pair_dip` the same for two structures at known positions;
- :func:`fwhm` measures the width of a profile's main peak;
- :func:`decorrelation_resolution` estimates the resolution of a whole image from its
  Fourier spectrum alone (Descloux, Grußmayer & Radenovic, Nat. Methods 2019), so
  restorations of real images can be compared without ground truth.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates


def line_profile(image: np.ndarray, start, end, *, width: int = 1, step: float = 0.25) -> np.ndarray:
    """Bilinear samples of a 2D ``image`` from ``start`` to ``end`` ((y, x)), every ``step`` px,
    averaged over ``width`` parallel lines one pixel apart."""
    p0, p1 = np.asarray(start, float), np.asarray(end, float)
    length = float(np.linalg.norm(p1 - p0))
    n = max(2, int(length / step) + 1)
    t = np.linspace(0, 1, n)
    normal = np.array([-(p1 - p0)[1], (p1 - p0)[0]]) / (length or 1.0)
    offsets = np.arange(width) - (width - 1) / 2
    lines = [map_coordinates(np.asarray(image, np.float64), (p0 + np.outer(t, p1 - p0) + o * normal).T, order=1)
             for o in offsets]  # fmt: skip
    return np.mean(lines, axis=0)


def local_maxima(profile: np.ndarray) -> np.ndarray:
    p = np.asarray(profile, float)
    inner = np.flatnonzero((p[1:-1] > p[:-2]) & (p[1:-1] >= p[2:])) + 1
    return inner


def dip(profile: np.ndarray) -> float:
    """Relative depth of the valley between the two highest peaks: ``1 - valley / lower peak``.

    The profile's minimum is taken as the baseline. Returns 0 when there are fewer than two peaks.
    """
    p = np.asarray(profile, float)
    p = p - p.min()
    peaks = local_maxima(p)
    if len(peaks) < 2:
        return 0.0
    a, b = sorted(peaks[np.argsort(p[peaks])[-2:]])
    lower = min(p[a], p[b])
    return float(1 - p[a : b + 1].min() / lower) if lower > 0 else 0.0


def pair_dip(profile: np.ndarray, first: float, second: float) -> float:
    """Dip between two structures at known profile positions (indices, fractional allowed).

    ``1 - I(midpoint) / min(I(first), I(second))`` after subtracting the profile's background
    (the median of its outer quarters). Unlike :func:`dip`, noise peaks elsewhere cannot be
    mistaken for the pair; a negative value means the midpoint is brighter than the pair.
    """
    p = np.asarray(profile, float)
    q = max(1, len(p) // 4)
    p = p - np.median(np.concatenate([p[:q], p[-q:]]))
    at = np.interp([first, (first + second) / 2, second], np.arange(len(p)), p)
    lower = min(at[0], at[2])
    return float(1 - at[1] / lower) if lower > 0 else 0.0


def fwhm(profile: np.ndarray, spacing: float = 1.0) -> float:
    """Full width at half maximum of the highest peak (baseline = the profile's minimum)."""
    p = np.asarray(profile, float)
    p = p - p.min()
    i = int(np.argmax(p))
    half = p[i] / 2
    if half <= 0:
        return float("nan")
    left = i
    while left > 0 and p[left - 1] > half:
        left -= 1
    right = i
    while right < len(p) - 1 and p[right + 1] > half:
        right += 1
    if left == 0 or right == len(p) - 1:
        return float("nan")  # the peak does not fall to half within the profile
    lx = left - 1 + (half - p[left - 1]) / (p[left] - p[left - 1])
    rx = right + (p[right] - half) / (p[right] - p[right + 1])
    return float((rx - lx) * spacing)


def decorrelation_curve(image: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Pearson correlation between the image spectrum and its normalised spectrum masked at each radius."""
    img = np.asarray(image, np.float64)
    img = (img - img.mean()) * apodisation(img.shape)
    f = np.fft.fftshift(np.fft.fft2(img))
    fn = f / np.maximum(np.abs(f), 1e-12)
    ky, kx = np.meshgrid(*[np.fft.fftshift(np.fft.fftfreq(s)) * 2 for s in img.shape], indexing="ij")
    k = np.sqrt(ky**2 + kx**2)
    energy = np.sum(np.abs(f) ** 2)
    out = []
    for r in radii:
        m = k <= r
        num = np.sum(np.real(f[m] * np.conj(fn[m])))
        den = np.sqrt(energy * np.sum(np.abs(fn[m]) ** 2))
        out.append(num / den if den > 0 else 0.0)
    return np.asarray(out)


def apodisation(shape: tuple[int, ...], edge: int = 8) -> np.ndarray:
    """A window that falls smoothly to 0 over ``edge`` pixels at the borders (no edge artefacts)."""
    w = np.ones(shape)
    for axis, n in enumerate(shape):
        ramp = np.ones(n)
        e = min(edge, n // 4)
        if e > 0:
            taper = np.sin(np.linspace(0, np.pi / 2, e)) ** 2
            ramp[:e], ramp[-e:] = taper, taper[::-1]
        w *= ramp.reshape([-1 if i == axis else 1 for i in range(len(shape))])
    return w


def decorrelation_resolution(image: np.ndarray, *, n_radii: int = 50, n_filters: int = 8) -> float:
    """Image resolution in pixels by decorrelation analysis (smaller is sharper).

    The normalised spectrum, cut off at radius ``r`` (1 = Nyquist), correlates best with the
    image when ``r`` reaches the highest frequency that still carries signal. High-pass
    filtered copies let weak high frequencies count; the largest peak position ``r0`` over
    all of them gives the resolution ``2 / r0`` pixels.
    """
    img = np.asarray(image, np.float64)
    radii = np.linspace(0.02, 1.0, n_radii)
    best = 0.0
    sigmas = [None, *np.geomspace(max(img.shape) / 4, 0.5, n_filters)]
    for s in sigmas:
        filtered = img if s is None else img - gaussian_filter(img, s)
        d = decorrelation_curve(filtered, radii)
        peaks = [i for i in local_maxima(np.concatenate([[0.0], d, [0.0]])) - 1 if 0 <= i < len(d)]
        for i in peaks:
            if d[i] > 0.05 and radii[i] < 0.99:
                best = max(best, radii[i])
    return float(2.0 / best) if best > 0 else float("inf")


def checkerboard_peaks(image: np.ndarray, *, box: int = 3) -> dict[str, float]:
    """How far the spectrum rises at the frequencies of a 2x2 (Nyquist) and 4x4 (half-Nyquist) grid
    pattern above its surroundings: the checkerboard artefacts of networks that pool by 2.

    The power spectrum of the 2D planes (last two axes, apodised, averaged over the planes) is read
    at 0.25 and 0.5 cycles per pixel along y, x and both; each value is divided by the median of the
    power in the ``(2 box + 1)²`` bins around it (itself left out). Returns the largest ratio at
    each frequency: about 1 for images without such patterns, well above where they show.
    """
    planes = np.asarray(image, np.float64).reshape(-1, *np.shape(image)[-2:])
    planes = planes - planes.mean(axis=(1, 2), keepdims=True)
    window = apodisation(planes.shape[1:], edge=max(planes.shape[1:]) // 8)
    power = np.fft.fftshift(np.mean(np.abs(np.fft.fft2(planes * window)) ** 2, axis=0))
    centre = np.array(power.shape) // 2
    ratios = {}
    for name, f in (("half_nyquist", 0.25), ("nyquist", 0.5)):
        found = []
        for fy, fx in ((f, 0.0), (0.0, f), (f, f), (f, -f)):
            at = centre + np.round(np.array([fy, fx]) * power.shape).astype(int)
            at = np.where(at >= power.shape, at - power.shape, at)  # +Nyquist is -Nyquist
            rows = np.arange(at[0] - box, at[0] + box + 1) % power.shape[0]
            cols = np.arange(at[1] - box, at[1] + box + 1) % power.shape[1]
            around = power[np.ix_(rows, cols)].ravel()
            around = np.delete(around, around.size // 2)
            found.append(power[tuple(at)] / max(np.median(around), 1e-300))
        ratios[name] = float(max(found))
    return ratios
