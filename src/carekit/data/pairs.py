"""Acquired training pairs (low-SNR input, high-SNR target) from folders or arrays.

Pairs stay whole images in memory (in their own dtype); patches are cut on the fly,
so training memory is bounded by the images, not by a pre-cut patch array.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from carekit.axes import check_axes, to_net
from carekit.errors import CarekitError, warn
from carekit.io import check_finite, list_images, read_with_axes, same_path


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


def check_distinct(low_paths: Sequence[str | Path], high_path: str | Path) -> None:
    """Refuse an input path given twice (its pairs would count double) or the targets given as input."""
    for i, a in enumerate(low_paths):
        if same_path(Path(a), Path(high_path)):
            raise CarekitError(f"{a}: is both --low and --high; inputs and targets must be different images")
        for b in low_paths[:i]:
            if same_path(Path(a), Path(b)):
                raise CarekitError(f"--low names {a} twice (as {b} and {a}); give each input once")


def match_files(low_paths: Sequence[str | Path], high_path: str | Path) -> list[tuple[Path, Path]]:
    """Match input files to target files by name. Several input folders may share one target folder."""
    low_paths = [low_paths] if isinstance(low_paths, (str, Path)) else list(low_paths)
    check_distinct(low_paths, high_path)
    high_files = list_images(high_path, role="target (--high)")
    if len(high_files) == 1 and Path(high_path).is_file():
        lows = [f for p in low_paths for f in list_images(p, role="input (--low)")]
        return once([(f, high_files[0]) for f in lows])
    by_name = {f.name: f for f in high_files}
    matched = []
    for p in low_paths:
        for f in list_images(p, role="input (--low)"):
            if f.name not in by_name:
                raise CarekitError(
                    f"{f}: no target named {f.name} in {high_path}; input and target files are matched by name"
                )
            matched.append((f, by_name[f.name]))
    return once(matched)


def once(matched: list[tuple[Path, Path]]) -> list[tuple[Path, Path]]:
    """Refuse an input file reached twice (a folder and a file in it, or a link)."""
    seen: dict[Path, Path] = {}
    for f, target in matched:
        key = f.resolve()
        if key in seen:
            raise CarekitError(f"{f}: given twice as --low (also as {seen[key]}); give each input once")
        if key == target.resolve():
            raise CarekitError(f"{f}: is both input and target; --low and --high must be different images")
        seen[key] = f
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


def check_pairs(pairs: list[ImagePair], self_supervised: bool = False) -> None:
    """Refuse training data with nothing to learn; warn about pairs that teach nothing.

    Constant targets (all 0, say) or inputs, and inputs identical to their targets, are an error
    where every pair is so (a model trained on them would be silently useless) and a warning
    where some are. ``self_supervised`` pairs are noisy images that are their own targets (blind-spot
    training): only constant images are refused.
    """
    if self_supervised:
        problems = {"constant image(s)": [p.name for p in pairs if np.ptp(p.low) == 0]}
        fixes = {"constant image(s)": "check --input (an all-zero image?)"}
    else:
        problems = {
            "constant target(s)": [p.name for p in pairs if np.ptp(p.high) == 0],
            "constant input(s)": [p.name for p in pairs if np.ptp(p.low) == 0],
            "input(s) identical to their targets": [
                p.name for p in pairs if p.low.shape == p.high.shape and np.array_equal(p.low, p.high)
            ],
        }
        fixes = {
            "constant target(s)": "check --high (an all-zero image?)",
            "constant input(s)": "check --low (an all-zero image?)",
            "input(s) identical to their targets": "--low and --high must be low- and high-SNR images",
        }
    for what, names in problems.items():
        if len(names) == len(pairs):
            raise CarekitError(f"{names[0]}: every training pair has {what}, so there is nothing to learn; "
                               f"{fixes[what]}")  # fmt: skip
        if names:
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            warn(f"{len(names)} of {len(pairs)} training pairs have {what} and teach nothing: {shown}")


def fingerprint(pairs: list[ImagePair]) -> str:
    """A hash of the training pairs' contents (shapes, types and every value), to tell whether a resumed
    run trains on the same data."""
    h = hashlib.blake2b(digest_size=16)
    for p in pairs:
        for a in (p.low, p.high):
            h.update(f"{a.shape}{a.dtype}".encode())
            h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()


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
