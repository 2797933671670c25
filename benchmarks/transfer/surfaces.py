"""A second surface generator, written for evaluation only (never imported by carekit).

carekit's ``surface_stack`` draws one smooth random height map carrying Voronoi membranes, spread
along z by a Gaussian, over smooth 3D haze. This one draws every part differently:

- height maps from three models: Fourier synthesis with a power-law spectrum, a fold (a
  smoothed step across the image over a tilted plane), or Gaussian bumps on a tilted plane;
- textures from three models: filled nuclei-like ellipses with speckled interiors, membranes
  of a jittered hexagonal lattice (distance to the lattice edges), or bundles of short fibres;
- the layer has a thickness (a top-hat of 1-4 slices, varying across the image) blurred by an
  axial PSF of 1-2 slices, and dims with depth;
- off-surface distractors: bright blobs at least 4 slices away from the surface and, in half
  the stacks, a second, dimmer layer below or above;
- lateral blur, a constant background, Poisson noise (``peak`` photons at the layer's brightest
  texture) and read noise.

The ground truth is the layer's texture as a 2D image.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def spectral_height(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Fourier synthesis: random phases, amplitudes falling as ``k^-beta`` (beta 3-4), in [0, 1]."""
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = np.fft.rfftfreq(shape[1])[None]
    k = np.sqrt(ky**2 + kx**2)
    k[0, 0] = 1.0
    amplitude = k ** -rng.uniform(1.5, 2.0)
    amplitude[0, 0] = 0.0
    amplitude[k > 0.08] = 0.0  # smooth: no features below ~12 px
    spectrum = amplitude * np.exp(2j * np.pi * rng.random(amplitude.shape))
    h = np.fft.irfft2(spectrum, s=shape)
    return (h - h.min()) / (np.ptp(h) or 1.0)


def fold_height(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A tilted plane with a fold: a smoothed step along a random line."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]] / max(shape)
    angle = rng.uniform(0, np.pi)
    across = (yy - 0.5) * np.cos(angle) + (xx - 0.5) * np.sin(angle) - rng.uniform(-0.25, 0.25)
    step = np.tanh(across / rng.uniform(0.04, 0.12))
    h = step + rng.uniform(-1, 1) * yy + rng.uniform(-1, 1) * xx
    return (h - h.min()) / (np.ptp(h) or 1.0)


def bump_height(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Gaussian bumps and dents on a tilted plane."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    h = rng.uniform(-0.5, 0.5) * yy / shape[0] + rng.uniform(-0.5, 0.5) * xx / shape[1]
    for _ in range(rng.integers(3, 9)):
        cy, cx = rng.uniform(0, 1, 2) * np.array(shape)
        r = rng.uniform(0.1, 0.35) * max(shape)
        h = h + rng.uniform(-1, 1) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2))
    return (h - h.min()) / (np.ptp(h) or 1.0)


def nuclei_texture(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Filled ellipses 4-9 px across with a speckled interior, on a dark background."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
    out = np.zeros(shape)
    for _ in range(int(np.prod(shape) / rng.uniform(90, 200))):
        cy, cx = rng.uniform(0, 1, 2) * np.array(shape)
        a, b, th = rng.uniform(2.5, 5.0), rng.uniform(2.0, 4.0), rng.uniform(0, np.pi)
        u = ((yy - cy) * np.cos(th) + (xx - cx) * np.sin(th)) / a
        v = (-(yy - cy) * np.sin(th) + (xx - cx) * np.cos(th)) / b
        out = np.maximum(out, rng.uniform(0.4, 1.0) / (1 + np.exp(np.clip((np.hypot(u, v) - 1) * 8, -50, 50))))
    speckle = 0.7 + 0.3 * ndi.gaussian_filter(rng.random(shape), 0.8) / 0.5
    return out * speckle


def hexagonal_membranes(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Edges of a jittered hexagonal lattice of cells 7-14 px across, uneven brightness."""
    spacing = rng.uniform(7, 14)
    rows = int(shape[0] / (spacing * 0.866)) + 3
    cols = int(shape[1] / spacing) + 3
    r, c = np.mgrid[-1:rows, -1:cols]
    centres = np.stack([r * spacing * 0.866, c * spacing + (r % 2) * spacing / 2], -1).reshape(-1, 2)
    centres = centres + rng.normal(0, 0.15 * spacing, centres.shape)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    pixels = np.stack([yy.ravel(), xx.ravel()], 1)
    d = np.sort(np.linalg.norm(pixels[:, None] - centres[None], axis=2), axis=1)[:, :2]
    edge = np.exp(-0.5 * ((d[:, 1] - d[:, 0]) / rng.uniform(0.6, 1.2)) ** 2).reshape(shape)
    return edge * (0.4 + 0.6 * ndi.gaussian_filter(rng.random(shape), 5) / 0.5).clip(0.2, 1.5)


def fibre_texture(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Short straight fibres in a few preferred directions (cortical actin-like)."""
    out = np.zeros(shape)
    directions = rng.uniform(0, np.pi, rng.integers(1, 4))
    for _ in range(int(np.prod(shape) / 40)):
        th = rng.choice(directions) + rng.normal(0, 0.2)
        length = rng.uniform(5, 25)
        c = rng.uniform(0, 1, 2) * np.array(shape)
        t = np.linspace(-length / 2, length / 2, int(2 * length))
        pts = np.round(c + t[:, None] * np.array([np.sin(th), np.cos(th)])).astype(int)
        ok = np.all((pts >= 0) & (pts < np.array(shape)), axis=1)
        np.add.at(out, tuple(pts[ok].T), rng.uniform(0.3, 1.0))
    return ndi.gaussian_filter(out, 0.7)


HEIGHTS = (spectral_height, fold_height, bump_height)
TEXTURES = (nuclei_texture, hexagonal_membranes, fibre_texture)


def layer(z: int, height: np.ndarray, thickness: np.ndarray, axial: float) -> np.ndarray:
    """Axial profile ``(Z, Y, X)``: a top-hat of ``thickness`` slices around ``height``, blurred by ``axial``."""
    zz = np.arange(z, dtype=float)[:, None, None]
    inside = np.clip(thickness[None] / 2 + 0.5 - np.abs(zz - height[None]), 0, 1)
    return ndi.gaussian_filter1d(inside, axial, axis=0)


def draw(shape: tuple[int, int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A clean stack ``(Z, Y, X)`` and its 2D truth (the layer's texture)."""
    z, ny, nx = shape
    margin = 4.0
    height = margin + HEIGHTS[rng.integers(3)]((ny, nx), rng) * (z - 1 - 2 * margin)
    texture = TEXTURES[rng.integers(3)]((ny, nx), rng)
    texture = (texture / (np.percentile(texture, 99.9) or 1.0)).astype(np.float32)
    thickness = 1 + 3 * ndi.gaussian_filter(rng.random((ny, nx)), 20) / 0.5 * rng.uniform(0.3, 1.0)
    axial = rng.uniform(1.0, 2.0)
    depth = np.exp(-np.arange(z) / rng.uniform(20, 80))[:, None, None]  # attenuation with depth
    stack = texture[None] * layer(z, height, thickness, axial) * depth
    unit = float(np.percentile(ndi.gaussian_filter(stack, (0, 1.0, 1.0)), 99.9)) or 1.0  # the layer's brightest
    if rng.random() < 0.5:  # a second, dimmer layer of other texture
        other = TEXTURES[rng.integers(3)]((ny, nx), rng)
        shift = rng.choice([-1, 1]) * rng.uniform(5, 8)
        stack += rng.uniform(0.2, 0.5) * other[None] * layer(z, np.clip(height + shift, 0, z - 1), thickness, axial)
    zz, yy, xx = np.mgrid[0:z, 0:ny, 0:nx]
    for _ in range(rng.integers(5, 25)):  # bright blobs off the surface
        cy, cx = rng.integers(0, ny), rng.integers(0, nx)
        options = [k for k in range(z) if abs(k - height[cy, cx]) >= 4]
        if not options:
            continue
        cz, r = rng.choice(options), rng.uniform(1.5, 4.0)
        lo = [max(0, int(c - 3 * r)) for c in (cz, cy, cx)]
        hi = [min(s, int(c + 3 * r) + 1) for c, s in zip((cz, cy, cx), shape, strict=True)]
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        d2 = (zz[box] - cz) ** 2 / 2.0 + (yy[box] - cy) ** 2 + (xx[box] - cx) ** 2  # axially elongated
        stack[box] += rng.uniform(0.5, 2.0) * np.exp(-d2 / (2 * r**2))
    stack = ndi.gaussian_filter(stack, (0, 1.0, 1.0)) / unit
    return stack.astype(np.float32), texture


def noisy(stack: np.ndarray, rng: np.random.Generator, peak: float, read_noise: float = 1.0) -> np.ndarray:
    """Photons: the layer's brightest texture (1 in ``draw``'s stacks) at ``peak``, a background of
    10 % of it, Poisson and read noise."""
    expected = stack * peak + 0.1 * peak
    return (rng.poisson(expected) + rng.normal(0, read_noise, stack.shape)).astype(np.float32)


def data_set(n: int, shape: tuple[int, int, int], seed: int, peak: float = 8.0) -> tuple[list, list]:
    """``n`` noisy stacks and their 2D truths drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    stacks, truths = [], []
    for _ in range(n):
        stack, truth = draw(shape, rng)
        stacks.append(noisy(stack, rng, peak))
        truths.append(truth)
    return stacks, truths
