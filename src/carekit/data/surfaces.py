"""Curved cell layers in 3D stacks: a synthetic generator and a classical projection.

The generator draws a smooth height map ``z = h(y, x)`` carrying a cell-like texture
(the membranes of a Voronoi tiling), adds out-of-focus haze above and below, and
returns the clean stack, the exact 2D ground truth and the height map. The classical
projection finds the surface as the smoothed height of maximal local intensity (or
local contrast) and samples the stack along it; it makes 2D ground truth from high-SNR
stacks and serves as a baseline.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates, median_filter
from scipy.spatial import cKDTree

from carekit.errors import CarekitError


def smooth_field(shape: tuple[int, ...], scale: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth random field in [0, 1] whose features are about ``scale`` pixels across."""
    field = gaussian_filter(rng.standard_normal(shape), scale, mode="wrap")
    field -= field.min()
    return (field / (field.max() or 1.0)).astype(np.float32)


def random_height(shape: tuple[int, int], depth: int, rng: np.random.Generator, *, scale: float = 24.0,
                  margin: float = 3.0) -> np.ndarray:  # fmt: skip
    """A smooth surface height map inside ``[margin, depth - 1 - margin]`` (in slices)."""
    if depth - 1 - 2 * margin <= 0:
        raise CarekitError(f"a stack of {depth} slices is too thin for a surface with a margin of {margin}")
    return margin + smooth_field(shape, scale, rng) * (depth - 1 - 2 * margin)


def voronoi_membranes(shape: tuple[int, int], cell_size: float, rng: np.random.Generator,
                      *, width: float = 0.8) -> np.ndarray:  # fmt: skip
    """Cell outlines of a random Voronoi tiling (bright membranes, dim interiors), in [0, 1]."""
    n = max(2, int(shape[0] * shape[1] / cell_size**2))
    seeds = rng.uniform(0, 1, (n, 2)) * np.array(shape)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    d, idx = cKDTree(seeds).query(np.stack([yy.ravel(), xx.ravel()], axis=1), k=2)
    gap = (d[:, 1] - d[:, 0]).reshape(shape)
    brightness = rng.uniform(0.6, 1.0, n)[idx[:, 0]].reshape(shape)
    membrane = np.exp(-0.5 * (gap / width) ** 2) * brightness
    interior = 0.15 * rng.uniform(0.5, 1.0, n)[idx[:, 0]].reshape(shape)
    return np.maximum(membrane, interior).astype(np.float32)


def surface_stack(shape: tuple[int, int, int], rng: np.random.Generator, *, height: np.ndarray | None = None,
                  cell_size: float = 10.0, z_sigma: float = 1.2, xy_sigma: float = 1.0,
                  haze: float = 0.4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """A clean stack ``(Z, Y, X)`` holding one textured surface, its 2D truth and its height map.

    The surface signal at ``(y, x)`` is the texture spread along z by a Gaussian of
    ``z_sigma`` slices around ``h(y, x)`` (and blurred laterally by ``xy_sigma``); haze is a
    smooth 3D background of relative strength ``haze`` that max projections pick up.
    """
    z, ny, nx = shape
    h = random_height((ny, nx), z, rng) if height is None else np.asarray(height, np.float32)
    if h.shape != (ny, nx):
        raise CarekitError(f"height map shape {h.shape} does not match the stack's lateral shape {(ny, nx)}")
    texture = gaussian_filter(voronoi_membranes((ny, nx), cell_size, rng), xy_sigma)
    zz = np.arange(z, dtype=np.float32)[:, None, None]
    profile = np.exp(-0.5 * ((zz - h[None]) / z_sigma) ** 2)
    background = haze * smooth_field((z, ny, nx), 6.0, rng) * texture.max()
    stack = texture[None] * profile + background
    return stack.astype(np.float32), texture.astype(np.float32), h.astype(np.float32)


def surface_projection(stack: np.ndarray, *, sigma: float = 2.0, smooth: float = 6.0, measure: str = "intensity",
                       band: int = 1) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Classical projection of a stack ``(Z, Y, X)`` or ``(C, Z, Y, X)`` onto its brightest surface.

    For each pixel the height of maximal local intensity (Gaussian mean of ``sigma``) or local
    contrast (``measure="variance"``) is found, the height map is median- then Gaussian-smoothed
    by ``smooth`` pixels, and the stack is sampled along it (linear in z), averaging the
    ``2 * band + 1`` slices around the surface. Returns the image (``(Y, X)`` or ``(C, Y, X)``)
    and the height map.
    """
    s = np.asarray(stack, np.float32)
    if s.ndim not in (3, 4):
        raise CarekitError(f"surface projection needs a (Z, Y, X) or (C, Z, Y, X) stack, got shape {s.shape}")
    channels = s if s.ndim == 4 else s[None]
    total = channels.sum(axis=0)
    local = gaussian_filter(total, (0, sigma, sigma))
    if measure == "variance":
        local = gaussian_filter(total**2, (0, sigma, sigma)) - local**2
    elif measure != "intensity":
        raise CarekitError(f"focus measure '{measure}' is unknown; use intensity or variance")
    height = np.argmax(local, axis=0).astype(np.float32)
    if smooth > 0:
        height = gaussian_filter(median_filter(height, size=int(2 * smooth) | 1), smooth)
    yy, xx = np.mgrid[0 : s.shape[-2], 0 : s.shape[-1]]
    offsets = np.arange(-band, band + 1)
    image = np.stack(
        [np.mean([map_coordinates(c, [height + o, yy, xx], order=1, mode="nearest") for o in offsets], axis=0)
         for c in channels]
    )  # fmt: skip
    return (image if s.ndim == 4 else image[0]).astype(np.float32), height
