"""Blind-spot masking for self-supervised training on noisy images alone (Noise2Void and its kin).

A few pixels of every patch (about ``fraction`` of them, one per cell of a regular grid, so that
they spread evenly) are hidden from the network: each takes a value from its neighbourhood, and the
loss counts only these pixels, against their noisy values. Pixel noise that is independent from
pixel to pixel cannot be predicted from the neighbourhood, so the network learns the signal.

Replacements (``replacement``):

- ``"median"`` (N2V2, Hock et al. 2022): the median of the window around the pixel *without* the
  pixel itself (and without the structured mask), so the replacement holds nothing of its noise;
- ``"uniform"`` (the original Noise2Void): a random pixel of the window, the pixel itself included.

A structured mask (structN2V, Broaddus et al. 2020) lists further pixels, relative to the hidden
one, whose noise is correlated with it (e.g. a horizontal line for line noise of scanning or
sCMOS cameras); they are hidden with it (given the same replacement) and left out of its median.
Pure numpy.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from carekit.errors import CarekitError
from carekit.io import read_image

REPLACEMENTS = ("median", "uniform")


def struct_mask(spec, ndim: int | None = None) -> np.ndarray:
    """A structured mask as a 0/1 array with odd edges, centred on the hidden pixel.

    ``spec`` is an array (or nested lists), a ``.tif``/``.npy`` file, or a text such as ``"x:4"``
    (4 pixels on either side along x: a horizontal line of 9), ``"y:2"`` or ``"x:3,y:3"`` (a cross),
    with ``z`` for volumes. The centre is always part of the mask. With ``ndim`` the mask gains
    leading axes of size 1 up to that many axes (a 2D mask acts in every plane of a volume).
    """
    if isinstance(spec, str) and re.fullmatch(r"\s*[zyxZYX]\s*:\s*\d+\s*(,\s*[zyxZYX]\s*:\s*\d+\s*)*", spec):
        spans = {"Z": 0, "Y": 0, "X": 0}
        for part in spec.split(","):
            axis, span = part.split(":")
            spans[axis.strip().upper()] = int(span)
        axes = "ZYX" if spans["Z"] else "YX"
        mask = np.zeros([2 * spans[a] + 1 for a in axes], np.uint8)
        centre = tuple(s // 2 for s in mask.shape)
        for i in range(len(axes)):
            line = list(centre)
            line[i] = slice(None)
            mask[tuple(line)] = 1
    elif isinstance(spec, (str, Path)):
        mask = read_mask_file(Path(spec))
    else:
        mask = np.asarray(spec)
    mask = np.asarray(mask) != 0
    if mask.ndim == 0 or mask.ndim > 3 or any(s % 2 == 0 for s in mask.shape):
        raise CarekitError(
            f"struct mask of shape {mask.shape}: give odd edges (1 to 3 axes) centred on the hidden pixel, "
            "or a text such as x:4 (a horizontal line of 9)"
        )
    if ndim is not None:
        if mask.ndim > ndim:
            raise CarekitError(f"struct mask has {mask.ndim} axes but the network is {ndim}D; give a {ndim}D mask")
        mask = mask.reshape((1,) * (ndim - mask.ndim) + mask.shape)
    mask[tuple(s // 2 for s in mask.shape)] = True
    return mask.astype(np.uint8)


def read_mask_file(path: Path) -> np.ndarray:
    if not path.is_file():
        raise CarekitError(f"--struct-mask {path}: no such file; give a .tif or .npy mask, or a text such as x:4")
    if path.suffix.lower() == ".npy":
        return np.load(path, allow_pickle=False)
    return read_image(path)[0]


def offsets(mask: np.ndarray) -> np.ndarray:
    """Positions ``(K, ndim)`` of a mask's pixels relative to its centre."""
    return np.argwhere(mask) - np.array(mask.shape) // 2


@dataclass(frozen=True)
class BlindSpots:
    """How training hides pixels: ``fraction`` of each patch, replaced by ``replacement`` from the
    window of edge ``window`` around them, together with the ``struct`` mask (0/1, centred) if any."""

    fraction: float = 0.02
    replacement: str = "median"
    window: int = 5
    struct: np.ndarray | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 0.25:
            raise CarekitError(f"masked fraction must be in (0, 0.25], got {self.fraction}")
        if self.replacement not in REPLACEMENTS:
            raise CarekitError(f"replacement '{self.replacement}' is unknown; use {' or '.join(REPLACEMENTS)}")
        if self.window < 3 or self.window % 2 == 0:
            raise CarekitError(f"replacement window must be an odd edge of at least 3, got {self.window}")

    def hidden(self, ndim: int) -> np.ndarray:
        """Offsets of the pixels hidden with each chosen one (itself first)."""
        if self.struct is None:
            return np.zeros((1, ndim), int)
        found = offsets(struct_mask(self.struct, ndim))
        return found[np.argsort(np.abs(found).sum(axis=1), kind="stable")]  # the centre first

    def sources(self, ndim: int) -> np.ndarray:
        """Offsets of the window pixels a replacement may come from."""
        r = self.window // 2
        window = np.stack(np.meshgrid(*[np.arange(-r, r + 1)] * ndim, indexing="ij"), -1).reshape(-1, ndim)
        hidden = self.hidden(ndim)
        if self.replacement == "uniform":  # the original N2V: the pixel itself may be drawn
            hidden = hidden[np.abs(hidden).sum(axis=1) > 0]
        keep = ~(window[:, None, :] == hidden[None]).all(axis=-1).any(axis=1)
        return window[keep]


def stratified_positions(rng: np.random.Generator, shape: tuple[int, ...], fraction: float, count: int) -> list:
    """For each of ``count`` patches of spatial ``shape``, positions ``(M_i, ndim)``: one uniform draw in
    every cell of a grid whose cells hold ``1 / fraction`` pixels (draws past the edge are dropped)."""
    ndim = len(shape)
    edge = fraction ** (-1.0 / ndim)
    cells = [int(np.ceil(s / edge)) for s in shape]
    starts = np.stack(np.meshgrid(*[np.arange(c) * edge for c in cells], indexing="ij"), -1).reshape(-1, ndim)
    draws = np.floor(starts[None] + rng.random((count, *starts.shape)) * edge).astype(int)
    inside = (draws < np.array(shape)).all(axis=-1)
    return [d[keep] for d, keep in zip(draws, inside, strict=True)]


def hide(rng: np.random.Generator, x: np.ndarray, spots: BlindSpots) -> tuple[np.ndarray, np.ndarray]:
    """Blind spots in a batch ``x`` ``(N, C, *S)``, chosen anew for every patch and channel.

    Returns the network's input (``x`` with the hidden pixels replaced) and the mask ``(N, C, *S)``
    of the pixels whose loss counts (1): the chosen pixels, not the rest of a structured mask.
    """
    x = np.asarray(x, np.float32)
    n, c, *shape = x.shape
    ndim = len(shape)
    chosen = stratified_positions(rng, tuple(shape), spots.fraction, n * c)
    which = np.repeat(np.arange(n * c), [len(p) for p in chosen])
    centre = np.concatenate(chosen)  # (M, ndim)
    limits = np.array(shape)
    flat = x.reshape(n * c, -1)

    def index(points: np.ndarray) -> np.ndarray:  # flat index within a patch, clipped to it
        return np.ravel_multi_index(tuple(np.clip(points, 0, limits - 1).T), shape)

    near = centre[:, None, :] + spots.sources(ndim)[None]  # (M, W, ndim)
    where = (which[:, None], index(near.reshape(-1, ndim)).reshape(near.shape[:2]))
    inside = ((near >= 0) & (near < limits)).all(axis=-1)
    hidden = []  # (patch, flat index) of every pixel hidden, the chosen ones last
    for offset in spots.hidden(ndim)[::-1]:
        points = centre + offset
        ok = ((points >= 0) & (points < limits)).all(axis=-1)
        hidden.append((which[ok], index(points[ok]), ok))
    if spots.replacement == "median":
        # from the pixels that stay visible: no hidden pixel's noise reaches a replacement
        visible = flat.copy()
        for patch, at, _ in hidden:
            visible[patch, at] = np.nan
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a window with nothing visible: rare, see below
            replaced = np.nanmedian(np.where(inside, visible[where], np.nan), axis=1)
            blind = np.isnan(replaced)
            replaced[blind] = np.nanmedian(np.where(inside, flat[where], np.nan)[blind], axis=1)
    else:
        weights = inside / inside.sum(axis=1, keepdims=True)
        pick = (rng.random((len(centre), 1)) > np.cumsum(weights, axis=1)).sum(axis=1)
        replaced = flat[where][np.arange(len(centre)), np.minimum(pick, near.shape[1] - 1)]
    out = flat.copy()
    for patch, at, ok in hidden:  # the chosen pixel last: it keeps its own replacement
        out[patch, at] = replaced[ok]
    mask = np.zeros_like(flat)
    mask[which, index(centre)] = 1.0
    return out.reshape(x.shape), mask.reshape(x.shape)
