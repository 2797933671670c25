"""Axes strings: validate them, move arrays into network order and back.

Every array enters carekit with an axes string over ``S T C Z Y X`` in any order.
Networks see ``(N, C, *spatial)`` where ``spatial`` is ``"YX"`` or ``"ZYX"`` and ``N``
folds together every axis treated as an independent sample (S and T, and Z for a 2D
network). :func:`to_net` records how it did so in a :class:`Layout`, and
:func:`from_net` uses it to give results back in the user's order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from carekit.errors import CarekitError

LETTERS = "STCZYX"


def check_axes(axes: str, ndim: int | None = None, *, what: str = "array") -> str:
    """Validate an axes string and return it in upper case.

    Parameters
    ----------
    axes : str
        Letters from ``STCZYX``, each at most once, containing Y and X.
    ndim : int, optional
        The number of dimensions of the array the axes describe.
    what : str
        Names the array in error messages (e.g. a file name).
    """
    if not isinstance(axes, str) or not axes:
        raise CarekitError(f"{what}: axes are missing; pass an axes string such as 'YX' or 'ZYX'")
    up = axes.upper()
    bad = sorted(set(up) - set(LETTERS))
    if bad:
        raise CarekitError(
            f"{what}: axes '{axes}' contain unknown letter(s) {''.join(bad)}; use letters from {LETTERS}"
        )
    if len(set(up)) != len(up):
        raise CarekitError(f"{what}: axes '{axes}' repeat a letter; name each axis once")
    if "Y" not in up or "X" not in up:
        raise CarekitError(f"{what}: axes '{axes}' must contain Y and X")
    if ndim is not None and len(up) != ndim:
        raise CarekitError(
            f"{what}: axes '{axes}' name {len(up)} dimensions but the array has {ndim}; give one letter per dimension"
        )
    return up


@dataclass(frozen=True)
class Layout:
    """How an array was folded into network order, so it can be unfolded."""

    axes: str
    sample_axes: str
    sample_shape: tuple[int, ...]
    spatial: str
    had_channel: bool


def to_net(x: np.ndarray, axes: str, spatial: str, *, what: str = "array") -> tuple[np.ndarray, Layout]:
    """Move ``x`` from the user's ``axes`` into ``(N, C, *spatial)``.

    Axes that are neither C nor in ``spatial`` become samples, in the user's order.

    Examples
    --------
    >>> a = np.zeros((3, 5, 4, 2))
    >>> net, layout = to_net(a, "TYXC", "YX")
    >>> net.shape
    (3, 2, 5, 4)
    >>> from_net(net, layout)[0].shape
    (3, 5, 4, 2)
    """
    axes = check_axes(axes, x.ndim, what=what)
    missing = [a for a in spatial if a not in axes]
    if missing:
        raise CarekitError(
            f"{what}: axes '{axes}' lack {''.join(missing)}, which this model needs "
            f"(it works on {spatial} volumes); pass the array's full axes"
        )
    sample_axes = "".join(a for a in axes if a not in spatial and a != "C")
    order = [axes.index(a) for a in sample_axes]
    order += [axes.index("C")] if "C" in axes else []
    order += [axes.index(a) for a in spatial]
    moved = np.transpose(x, order)
    sample_shape = tuple(x.shape[axes.index(a)] for a in sample_axes)
    n = int(np.prod(sample_shape)) if sample_shape else 1
    spatial_shape = moved.shape[len(moved.shape) - len(spatial) :]
    channels = x.shape[axes.index("C")] if "C" in axes else 1
    net = moved.reshape((n, channels, *spatial_shape))
    return net, Layout(axes, sample_axes, sample_shape, spatial, "C" in axes)


def from_net(y: np.ndarray, layout: Layout, spatial: str | None = None) -> tuple[np.ndarray, str]:
    """Unfold a network result ``(N, C, *spatial)`` back into the user's order.

    ``spatial`` names the result's spatial axes when they differ from the input's
    (a projection drops Z). A channel axis is kept when the input had one or the
    result has several channels; a new one is placed just before the spatial axes.
    Returns the array and its axes string.
    """
    spatial = layout.spatial if spatial is None else spatial
    n_channels = y.shape[1]
    keep_channel = layout.had_channel or n_channels > 1
    folded = y.reshape((*layout.sample_shape, n_channels, *y.shape[2:]))
    current = layout.sample_axes + "C" + spatial
    if not keep_channel:
        folded = folded.reshape((*layout.sample_shape, *y.shape[2:]))
        current = layout.sample_axes + spatial
    target = [a for a in layout.axes if a in current]
    if keep_channel and "C" not in target:
        first_spatial = min(target.index(a) for a in spatial)
        target.insert(first_spatial, "C")
    out = np.transpose(folded, [current.index(a) for a in target])
    return out, "".join(target)


def axes_from_tiff(series_axes: str | None, ndim: int) -> str | None:
    """Translate the axes tifffile reports into carekit's letters, or None if unsure.

    tifffile uses I/Q for unknown sequence axes and S for RGB samples; those are not
    trustworthy enough to guess from, so only unambiguous strings are accepted.
    """
    if not series_axes or len(series_axes) != ndim:
        return None
    up = series_axes.upper()
    if set(up) <= set("TCZYX") and len(set(up)) == len(up) and "Y" in up and "X" in up:
        return up
    return None
