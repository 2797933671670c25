"""Acquired training pairs (low-SNR input, high-SNR target) from folders or arrays.

Pairs stay whole images in memory (in their own dtype); patches are cut on the fly,
so training memory is bounded by the images, not by a pre-cut patch array.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from carekit.axes import check_axes, to_net
from carekit.errors import CarekitError
from carekit.io import check_finite, list_images, read_with_axes


@dataclass
class ImagePair:
    """One registered pair in network order: ``low`` is ``(C_in, *spatial)``, ``high`` ``(C_out, *spatial)``.

    ``source`` names the array or file the pair was cut from: pairs of one source (its
    samples, time points, or the planes of a stack for a 2D network) share one intensity
    normalisation. None: the pair is a source of its own.
    """

    name: str
    low: np.ndarray
    high: np.ndarray
    source: str | None = None


def split_samples(low: np.ndarray, high: np.ndarray, axes: str, spatial: str, name: str) -> list[ImagePair]:
    """Fold sample axes (S, T, and Z for 2D networks) of one registered pair into separate pairs."""
    axes = check_axes(axes, low.ndim, what=name)
    if high.ndim != low.ndim:
        raise CarekitError(
            f"{name}: input has {low.ndim} dimensions but target has {high.ndim}; pairs must share axes {axes}"
        )
    same = [a for i, a in enumerate(axes) if a != "C" and low.shape[i] != high.shape[i]]
    if same:
        raise CarekitError(
            f"{name}: input shape {low.shape} and target shape {high.shape} differ along {''.join(same)}; "
            "training pairs must be registered images of the same size"
        )
    check_finite(low, f"{name} (input)")
    check_finite(high, f"{name} (target)")
    x, _ = to_net(low, axes, spatial, what=name)
    y, _ = to_net(high, axes, spatial, what=name)
    return per_sample(name, x, y)


def per_sample(name: str, x: np.ndarray, y: np.ndarray) -> list[ImagePair]:
    """One pair per sample of network-order inputs ``x`` and targets ``y`` (named ``name[i]``)."""
    if x.shape[0] == 1:
        return [ImagePair(name, x[0], y[0])]
    return [ImagePair(f"{name}[{i}]", x[i], y[i], source=name) for i in range(x.shape[0])]


# how one input and its target become pairs: (low, high, axes, spatial, name) -> pairs
MakePairs = Callable[[np.ndarray, np.ndarray, str, str, str], list[ImagePair]]


def pairs_from_arrays(low, high, axes: str, spatial: str, make: MakePairs = split_samples) -> list[ImagePair]:
    """Pairs from arrays (or equally long lists of arrays) sharing ``axes``."""
    lows = [low] if isinstance(low, np.ndarray) else list(low)
    highs = [high] if isinstance(high, np.ndarray) else list(high)
    if len(lows) != len(highs):
        raise CarekitError(f"got {len(lows)} input arrays but {len(highs)} targets; give one target per input")
    if not lows:
        raise CarekitError("no training arrays given")
    pairs = []
    for i, (lo, hi) in enumerate(zip(lows, highs, strict=True)):
        pairs += make(np.asarray(lo), np.asarray(hi), axes, spatial, f"array {i}")
    return check_channels(pairs)


def match_files(low_paths: Sequence[str | Path], high_path: str | Path) -> list[tuple[Path, Path]]:
    """Match input files to target files by name. Several input folders may share one target folder."""
    high_files = list_images(high_path, role="target (--high)")
    if len(high_files) == 1 and Path(high_path).is_file():
        lows = [f for p in low_paths for f in list_images(p, role="input (--low)")]
        return [(f, high_files[0]) for f in lows]
    by_name = {f.name: f for f in high_files}
    matched = []
    for p in low_paths:
        for f in list_images(p, role="input (--low)"):
            if f.name not in by_name:
                raise CarekitError(
                    f"{f}: no target named {f.name} in {high_path}; input and target files are matched by name"
                )
            matched.append((f, by_name[f.name]))
    return matched


def pairs_from_files(low_paths: Sequence[str | Path], high_path: str | Path, axes: str, spatial: str,
                     make: MakePairs = split_samples, high_axes: str | None = None) -> list[ImagePair]:  # fmt: skip
    """Pairs from TIFF files or folders (see :func:`match_files`); targets have ``high_axes`` (default ``axes``)."""
    pairs = []
    for low_file, high_file in match_files(low_paths, high_path):
        lo, _ = read_with_axes(low_file, axes)
        hi, _ = read_with_axes(high_file, high_axes or axes)
        pairs += make(lo, hi, axes, spatial, str(low_file))
    return check_channels(pairs)


def check_channels(pairs: list[ImagePair]) -> list[ImagePair]:
    """All inputs must share one channel count, and all targets another."""
    c_in = {p.low.shape[0] for p in pairs}
    c_out = {p.high.shape[0] for p in pairs}
    if len(c_in) > 1 or len(c_out) > 1:
        raise CarekitError(
            f"training images disagree on channel counts (inputs {sorted(c_in)}, targets {sorted(c_out)}); "
            "give every pair the same channels"
        )
    return pairs


def load_pairs(low, high, axes: str, spatial: str, make: MakePairs = split_samples,
               high_axes: str | None = None) -> list[ImagePair]:  # fmt: skip
    """Pairs from arrays, lists of arrays, or file/folder paths (several input folders allowed); ``make``
    and ``high_axes`` as for :func:`pairs_from_files`."""
    if isinstance(low, (str, Path)) or (isinstance(low, (list, tuple)) and low and isinstance(low[0], (str, Path))):
        lows = [low] if isinstance(low, (str, Path)) else list(low)
        if not isinstance(high, (str, Path)):
            raise CarekitError("inputs are paths, so the target must be a path (file or folder) too")
        return pairs_from_files(lows, high, axes, spatial, make, high_axes)
    return pairs_from_arrays(low, high, axes, spatial, make)
