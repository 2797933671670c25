"""Training data from noisy images alone: Noise2Void's images, each its own target, and
Noise2Noise's pairs of adjacent time points.

Images come as arrays, lists of arrays, or TIFF files and folders, and stay whole in memory in
network order; an image is its own target without a second copy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from carekit.axes import check_axes, to_net
from carekit.data.pairs import ImagePair, check_channels, per_sample
from carekit.errors import CarekitError
from carekit.io import check_finite, list_images, read_with_axes


def is_paths(images) -> bool:
    return isinstance(images, (str, Path)) or (
        isinstance(images, (list, tuple)) and bool(images) and isinstance(images[0], (str, Path))
    )


def read_all(images, axes: str | None, what: str = "--input") -> tuple[list[tuple[str, np.ndarray]], str]:
    """``(name, array)`` of every image and their axes: arrays (axes required) or TIFF files and folders
    (axes from the files where not given; every image must have the first one's)."""
    if is_paths(images):
        paths = [images] if isinstance(images, (str, Path)) else list(images)
        files = [f for p in paths for f in list_images(p, role=what)]
        found = [(str(f), *read_with_axes(f, axes)) for f in files]
    else:
        arrays = [images] if isinstance(images, np.ndarray) else list(images)
        if not arrays:
            raise CarekitError(f"{what}: no images given")
        if axes is None:
            raise CarekitError(f"{what}: pass the images' axes, e.g. axes='TYX'")
        found = [(f"array {i}", np.asarray(a), check_axes(axes, np.ndim(a), what=f"array {i}"))
                 for i, a in enumerate(arrays)]  # fmt: skip
        for name, a, _ in found:
            check_finite(a, name)
    first = found[0][2]
    for name, _, image_axes in found:
        if image_axes != first:
            raise CarekitError(f"{name}: axes {image_axes} differ from the first image's {first}; give images "
                               "of one kind")  # fmt: skip
    return [(name, data) for name, data, _ in found], first


def own_targets(found: list[tuple[str, np.ndarray]], axes: str, spatial: str) -> list[ImagePair]:
    """Noise2Void's training data: every sample (S, T, and Z for a 2D network) of every image of
    :func:`read_all` as its own target (one array, no copy)."""
    pairs = []
    for name, data in found:
        x = to_net(data, axes, spatial, what=name)[0]
        pairs += per_sample(name, x, x)
    return check_channels(pairs)


def adjacent_frames(found: list[tuple[str, np.ndarray]], axes: str, spatial: str) -> list[ImagePair]:
    """Noise2Noise pairs from time-lapses of a static sample: frames 0 and 1, 2 and 3, ... of each
    image (every frame in one pair only, so held-out pairs share nothing with training ones)."""
    if "T" not in axes:
        raise CarekitError(f"--input with axes {axes}: Noise2Noise from one image pairs adjacent time points, so "
                           "the axes need a T; or give two acquisitions with --low and --high")  # fmt: skip
    rest = axes.replace("T", "")
    pairs = []
    for name, data in found:
        frames = np.moveaxis(data, axes.index("T"), 0)
        if len(frames) < 2:
            raise CarekitError(f"{name}: {len(frames)} time point(s); Noise2Noise pairs need at least 2")
        for t in range(0, len(frames) - 1, 2):
            a, b = (to_net(frames[k], rest, spatial, what=name)[0] for k in (t, t + 1))
            pairs += [ImagePair(f"{name}[t={t},{t + 1}][{i}]", a[i], b[i], source=name) for i in range(len(a))]
    return check_channels(pairs)
