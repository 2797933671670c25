"""Axes strings: validate them, move arrays into network order and back.

Every array enters carekit with an axes string over ``S T C Z Y X`` in any order.
Networks see ``(N, C, *spatial)`` where ``spatial`` is ``"YX"`` or ``"ZYX"`` and ``N``
folds together every axis treated as an independent sample (S and T, and Z for a 2D
network). A :class:`Layout` records how, folds arrays (or boxes of them) and unfolds results
back into the user's order.
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


def rearrange(x: np.ndarray, have: str, want: str) -> np.ndarray:
    """``x``, whose axes are the letters ``have``, with its axes in the order ``want``.

    Letters of ``have`` missing from ``want`` are dropped (those axes must have size 1); letters of
    ``want`` missing from ``have`` become new axes of size 1.
    """
    dropped = tuple(i for i, a in enumerate(have) if a not in want)
    kept = "".join(a for a in have if a in want)
    moved = np.transpose(np.squeeze(x, axis=dropped), [kept.index(a) for a in want if a in kept])
    sizes = iter(moved.shape)
    return moved.reshape([next(sizes) if a in kept else 1 for a in want])


@dataclass(frozen=True)
class Layout:
    """How an array of ``shape`` with ``axes`` folds into network order ``(N, C, *spatial)`` and back.

    Axes that are neither C nor in ``spatial`` become the samples ``N``, in the user's order. The
    in-memory, out-of-core and packaged paths all fold through this class and :func:`rearrange`.
    """

    axes: str
    spatial: str
    shape: tuple[int, ...]

    @property
    def sample_axes(self) -> str:
        return "".join(a for a in self.axes if a != "C" and a not in self.spatial)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[self.axes.index(a)] for a in self.sample_axes)

    @property
    def channels(self) -> int:
        return self.shape[self.axes.index("C")] if "C" in self.axes else 1

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[self.axes.index(a)] for a in self.spatial)

    def fold(self, x: np.ndarray) -> np.ndarray:
        """``x`` (a box of the array: any sizes, these axes) as ``(N, C, *spatial)``."""
        moved = rearrange(x, self.axes, self.sample_axes + "C" + self.spatial)
        return moved.reshape(-1, *moved.shape[len(self.sample_axes) :])

    def unfold(self, y: np.ndarray, spatial: str | None = None) -> tuple[np.ndarray, str]:
        """A network result ``(N, C, *spatial)`` back in the user's order, and its axes.

        ``spatial`` names the result's spatial axes where they differ from the input's (a projection
        drops Z). A channel axis is kept where the input had one or the result has several; a new one
        goes just before the spatial axes.
        """
        spatial = self.spatial if spatial is None else spatial
        current = self.sample_axes + "C" + spatial
        target = [a for a in self.axes if a in current]
        if "C" not in self.axes and y.shape[1] > 1:
            target.insert(min(target.index(a) for a in spatial), "C")
        elif "C" not in self.axes:
            current = current.replace("C", "")
        folded = y.reshape((*self.sample_shape, *y.shape[1 if "C" in current else 2 :]))
        return rearrange(folded, current, "".join(target)), "".join(target)

    def select(self, n: int, boxes: list[slice], axes: str | None = None) -> tuple:
        """Indices into an array with ``axes`` (default these) for sample ``n``, ``boxes`` along the
        spatial axes and every channel."""
        sample = dict(zip(self.sample_axes, np.unravel_index(n, self.sample_shape), strict=True))
        return tuple(int(sample[a]) if a in sample else boxes[self.spatial.index(a)] if a != "C" else slice(None)
                     for a in axes or self.axes)  # fmt: skip


def to_net(x: np.ndarray, axes: str, spatial: str, *, what: str = "array") -> tuple[np.ndarray, Layout]:
    """Move ``x`` from the user's ``axes`` into ``(N, C, *spatial)``.

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
    layout = Layout(axes, spatial, tuple(x.shape))
    return layout.fold(x), layout


def from_net(y: np.ndarray, layout: Layout, spatial: str | None = None) -> tuple[np.ndarray, str]:
    """Unfold a network result ``(N, C, *spatial)`` back into the user's order (see :meth:`Layout.unfold`)."""
    return layout.unfold(y, spatial)


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
