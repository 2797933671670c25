"""A broad synthetic corpus for pre-training generic restoration networks.

Each clean image mixes one to three kinds of structure (tubules, granules, cell outlines,
nucleus-like blobs, smooth textures, isolated points) at random sizes, densities and brightness,
seen through a Gaussian PSF of random width over a random background; each noisy image is that
truth through a Poisson-Gaussian camera at a random photon count (2 to 300 at the brightest
structures) and read noise. Nothing here is specific to one sample: the networks pre-trained on it
are a starting point that fine-tuning on a user's own pairs adapts in minutes.

:func:`widefield_pair` gives the synthetic mode's kind of pair instead: the structures a recipe can
name (tubules, granules) at random densities, lengths, widths and sizes, through a widefield
microscope of random PSF width, photon count, background and read noise (a random recipe with its
variation on), the target being the structures themselves.

All functions are pure functions of (shape, rng), 2D ``(Y, X)`` or 3D ``(Z, Y, X)``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.ndimage import gaussian_filter

from carekit.data.camera import poisson_gaussian, to_photons
from carekit.data.recipes import generate_pair, parse_recipe
from carekit.data.structures import granules, tubules
from carekit.data.surfaces import smooth_field, voronoi_membranes

PHOTONS = (2.0, 300.0)  # peak photons, drawn log-uniformly
READ_NOISE = (0.0, 4.0)


def log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def some_tubules(shape, rng) -> np.ndarray:
    return tubules(shape, rng, density=log_uniform(rng, 0.004, 0.05), length=rng.uniform(20, 200),
                   persistence=log_uniform(rng, 5, 100), width=rng.uniform(0.3, 1.5))  # fmt: skip


def some_granules(shape, rng) -> np.ndarray:
    per_pixel = log_uniform(rng, 0.0003, 0.01) / (1 if len(shape) == 2 else 8)
    return granules(shape, rng, density=per_pixel, radius=log_uniform(rng, 0.7, 5), radius_sd=rng.uniform(0.1, 0.5))


def some_outlines(shape, rng) -> np.ndarray:
    if len(shape) == 2:
        return voronoi_membranes(shape, rng.uniform(8, 40), rng, width=rng.uniform(0.5, 1.5))
    field = smooth_field(shape, rng.uniform(3, 8), rng)  # 3D: shells around level sets of a smooth field
    level = rng.uniform(0.3, 0.7)
    return np.exp(-0.5 * ((field - level) / rng.uniform(0.01, 0.04)) ** 2).astype(np.float32)


def some_blobs(shape, rng) -> np.ndarray:
    """Nucleus-like regions: a smooth field above a threshold, with a texture inside."""
    field = smooth_field(shape, rng.uniform(4, 16), rng)
    inside = 1 / (1 + np.exp(-(field - rng.uniform(0.5, 0.8)) * rng.uniform(20, 80)))
    return (inside * (0.5 + 0.5 * smooth_field(shape, rng.uniform(0.8, 3), rng))).astype(np.float32)


def some_texture(shape, rng) -> np.ndarray:
    return smooth_field(shape, log_uniform(rng, 0.7, 12), rng) ** rng.uniform(1, 4)


def some_points(shape, rng) -> np.ndarray:
    out = np.zeros(shape, np.float32)
    n = max(1, int(log_uniform(rng, 0.0002, 0.005) * np.prod(shape) / (1 if len(shape) == 2 else 8)))
    np.add.at(out, tuple(rng.integers(0, s, n) for s in shape), rng.uniform(0.2, 1.0, n).astype(np.float32))
    return out


KINDS: dict[str, Callable] = {
    "tubules": some_tubules,
    "granules": some_granules,
    "outlines": some_outlines,
    "blobs": some_blobs,
    "texture": some_texture,
    "points": some_points,
}


def clean(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A clean image: a mix of structure kinds, blurred by a random PSF, over a random background, in [0, ~1]."""
    kinds = rng.choice(list(KINDS), size=int(rng.integers(1, 4)), replace=False)
    image = np.zeros(shape, np.float32)
    for kind in kinds:
        part = KINDS[kind](shape, rng)
        image += rng.uniform(0.3, 1.0) * part / (np.percentile(part, 99.9) or 1.0)
    sigma = rng.uniform(0.0, 2.5)
    if sigma > 0.3:
        lateral = (sigma, sigma) if len(shape) == 2 else (sigma * rng.uniform(1.5, 3.5), sigma, sigma)
        image = gaussian_filter(image, lateral)
    image = np.clip(image, 0, None) / (np.percentile(image, 99.9) or 1.0)
    background = rng.uniform(0.0, 0.3) * smooth_field(shape, rng.uniform(8, 64), rng)
    return (image + background).astype(np.float32)


def noisy(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``truth`` through a Poisson-Gaussian camera at a random photon count and read noise."""
    photons = log_uniform(rng, *PHOTONS)
    return poisson_gaussian(to_photons(truth, photons), rng, read_sigma=rng.uniform(*READ_NOISE))


def pair(shape: tuple[int, ...], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One ``(noisy, clean)`` pair of ``shape``."""
    truth = clean(shape, rng)
    return noisy(truth, rng), truth


PSF_SIGMA = (0.8, 4.0)  # lateral widefield PSF sigma in pixels, drawn log-uniformly
WIDEFIELD_PHOTONS = (10.0, 1000.0)


def random_recipe(shape: tuple[int, ...], rng: np.random.Generator) -> dict:
    """A recipe of tubules and/or granules seen through a random widefield microscope."""
    channel = []
    if rng.random() < 0.8:
        channel.append({"type": "tubules", "density": log_uniform(rng, 0.005, 0.08), "length": rng.uniform(30, 200),
                        "persistence": log_uniform(rng, 10, 200), "width": log_uniform(rng, 0.2, 1.2)})  # fmt: skip
    if not channel or rng.random() < 0.4:
        channel.append({"type": "granules", "density": log_uniform(rng, 3e-4, 5e-3),
                        "radius": log_uniform(rng, 0.5, 4.0), "radius_sd": rng.uniform(0.1, 0.5)})  # fmt: skip
    na, wavelength = 1.3, 520.0  # the PSF's width in pixels is set through the pixel size
    imaging = {"na": na, "wavelength": wavelength, "pixel_size": 0.21 * wavelength / na / log_uniform(rng, *PSF_SIGMA),
               "photons": log_uniform(rng, *WIDEFIELD_PHOTONS), "background": rng.uniform(0.0, 0.4),
               "background_scale": log_uniform(rng, 8, 64), "read_noise": rng.uniform(*READ_NOISE)}  # fmt: skip
    if len(shape) == 3:  # an axial sigma of 1.5-4 times the lateral one, as widefield z-stacks have
        sigma_z_nm = 0.66 * 1.518 * wavelength / na**2
        imaging["z_step"] = sigma_z_nm / (rng.uniform(1.5, 4.0) * 0.21 * wavelength / na / imaging["pixel_size"])
    return {"shape": list(shape), "channels": [channel], "imaging": imaging}


def widefield_pair(shape: tuple[int, ...], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One ``(widefield image, structures)`` pair of ``shape`` from a :func:`random_recipe`."""
    low, high = generate_pair(parse_recipe(random_recipe(shape, rng), "pre-training recipe"), rng)
    return low[0], high[0]
