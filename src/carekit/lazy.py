"""Large inputs read lazily: network-order views, sources other processes can reopen, exact percentiles.

An array too large for memory (a Zarr array, a memory-mapped TIFF) is read through a
:class:`View` that folds the user's axes into network order ``(N, C, *spatial)`` one
window at a time. Its percentiles are found exactly, as ``np.percentile`` over each
sample and channel would give them, by a radix selection that reads the array a few
times chunk by chunk.
"""

from __future__ import annotations

import math
import mmap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from carekit.errors import CarekitError
from carekit.normalize import PREDICT_PERCENTILES
from carekit.omezarr import is_zarr, open_omezarr, slabs

READ_VOXELS = 4 * 2**20  # voxels per read when scanning the input for percentiles


# -- the input: axes, network order, sources workers can reopen -------------------------------
@dataclass(frozen=True)
class View:
    """How an array in the user's ``axes`` folds into network order ``(N, C, *spatial)``."""

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

    def net_order(self) -> list[int]:
        """Axis permutation from the user's order to samples, channel, spatial."""
        letters = self.sample_axes + ("C" if "C" in self.axes else "") + self.spatial
        return [self.axes.index(a) for a in letters]

    def read(self, array, n: int, maps: list[np.ndarray]) -> np.ndarray:
        """Sample ``n`` at spatial indices ``maps`` (one index array per axis) as ``(1, C, *window)``."""
        sample = dict(zip(self.sample_axes, np.unravel_index(n, self.sample_shape), strict=True))
        boxes = [slice(int(m.min()), int(m.max()) + 1) for m in maps]
        sel = tuple(int(sample[a]) if a in sample else boxes[self.spatial.index(a)] if a != "C" else slice(None)
                    for a in self.axes)  # fmt: skip
        kept = [a for a in self.axes if a not in sample]
        data = np.asarray(array[sel])
        data = np.transpose(data, [kept.index(a) for a in ("C" if "C" in kept else "") + self.spatial])
        data = data if "C" in kept else data[None]
        for i, (m, box) in enumerate(zip(maps, boxes, strict=True)):
            if len(m) != box.stop - box.start or m[0] != box.start:  # mirrored end
                data = np.take(data, m - box.start, axis=1 + i)
        return data[None]


@dataclass(frozen=True)
class Source:
    """Where a worker reopens the input: a ``"zarr"`` array, a ``"memmap"`` or a ``"tiff"`` read whole."""

    kind: str
    path: str
    detail: tuple = ()  # zarr: (array path,); memmap: (dtype, offset, shape)


def source_of(array, path: Path | None) -> Source | None:
    """A description of ``array`` that another process can reopen, or None for in-memory arrays."""
    if isinstance(array, np.memmap) and isinstance(array.base, mmap.mmap) and array.flags.c_contiguous:
        return Source("memmap", str(Path(array.filename).resolve()), (array.dtype.str, array.offset, array.shape))
    root = getattr(getattr(array, "store", None), "root", None)
    if root is not None:
        return Source("zarr", str(Path(root).resolve()), (array.path,))
    if path is not None and path.is_file():
        return Source("tiff", str(path.resolve()))
    return None


def open_source(source: Source):
    """Reopen an input in this process (a Dask worker)."""
    import zarr

    from carekit.io import read_image

    if source.kind == "zarr":
        return zarr.open_array(source.path, path=source.detail[0] or None, mode="r")
    if source.kind == "memmap":
        dtype, offset, shape = source.detail
        return np.memmap(source.path, dtype=np.dtype(dtype), mode="r", offset=offset, shape=tuple(shape))
    return read_image(source.path)[0]  # a compressed TIFF: read whole, once per process


def open_input(path: str | Path, axes: str | None, fallback: str | None):
    """Open an OME-Zarr or TIFF lazily: the array, its axes and spacing (micrometres, if known)."""
    from carekit.axes import axes_from_tiff, check_axes
    from carekit.io import read_image, read_spacing

    p = Path(path)
    if is_zarr(p):
        return open_omezarr(p, axes, fallback=fallback)
    if not p.is_file():
        raise CarekitError(f"{p}: no such file; give a TIFF file or an OME-Zarr folder as --input")
    try:
        import tifffile

        array = tifffile.memmap(p, mode="r")
        with tifffile.TiffFile(p) as tif:
            file_axes = axes_from_tiff(tif.series[0].axes, array.ndim)
    except ValueError:  # compressed or tiled TIFFs cannot be mapped
        array, file_axes = read_image(p)
    chosen = axes or file_axes or (fallback if fallback and len(fallback) == array.ndim else None)
    if chosen is None:
        raise CarekitError(f"{p}: axes unknown for shape {array.shape}; pass --axes, e.g. --axes ZYX")
    return array, check_axes(chosen, array.ndim, what=str(p)), read_spacing(p)


# -- exact percentiles by radix selection --------------------------------------------------------
def key_bits(dtype: np.dtype) -> int:
    if dtype.kind == "f":
        return 64 if dtype.itemsize == 8 else 32
    if dtype.kind in "ui":
        return 8 * dtype.itemsize
    raise CarekitError(f"pixel type {dtype} is not supported; use integer or float images")


def to_keys(values: np.ndarray) -> np.ndarray:
    """Unsigned integers that sort like ``values`` (floats: sign bit flipped, negatives inverted)."""
    bits = key_bits(values.dtype)
    utype = np.uint32 if bits <= 32 else np.uint64
    if values.dtype.kind == "u":
        return values.astype(utype)
    if values.dtype.kind == "i" and bits == 64:
        return values.view(np.uint64) ^ np.uint64(1 << 63)
    if values.dtype.kind == "i":
        return (values.astype(np.int64) + 2 ** (bits - 1)).astype(utype)
    u = values.astype(np.float32 if bits == 32 else np.float64).view(utype)
    sign = utype(1 << (bits - 1))
    return np.where(u & sign, ~u, u | sign)


def from_keys(keys: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Inverse of :func:`to_keys`."""
    bits = key_bits(dtype)
    utype = np.uint32 if bits <= 32 else np.uint64
    keys = keys.astype(utype)
    if dtype.kind == "u":
        return keys.astype(dtype)
    if dtype.kind == "i" and bits == 64:
        return (keys ^ np.uint64(1 << 63)).view(np.int64)
    if dtype.kind == "i":
        return (keys.astype(np.int64) - 2 ** (bits - 1)).astype(dtype)
    sign = utype(1 << (bits - 1))
    u = np.where(keys & sign, keys & ~sign, ~keys)
    return u.view(np.float32 if bits == 32 else np.float64).astype(dtype)


def scan(array, view: View, what: str):
    """Yield ``(sample ids, keys (n, C, voxels))`` for chunk-aligned boxes covering ``array``."""
    chunks = getattr(array, "chunks", None) or (1,) * len(view.shape)
    sample_dims = [view.axes.index(a) for a in view.sample_axes]
    for box in slabs(view.shape, tuple(chunks), READ_VOXELS):
        data = np.asarray(array[box])
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            raise CarekitError(f"{what}: NaN or infinite values; replace them (e.g. with 0) before using carekit")
        ranges = [np.arange(box[d].start, box[d].stop) for d in sample_dims]
        ids = np.ravel_multi_index(np.meshgrid(*ranges, indexing="ij"), view.sample_shape).ravel() if ranges else [0]
        moved = np.transpose(data, view.net_order()).reshape(len(ids), view.channels, -1)
        yield ids, to_keys(moved)


def select_keys(array, view: View, ranks: list[int], what: str) -> np.ndarray:
    """Keys of the order statistics ``ranks`` (0-based) per sample and channel: ``(N, C, len(ranks))``."""
    groups = math.prod(view.sample_shape) * view.channels
    width = 16 if groups <= 64 else 8  # digit width: histogram memory is groups * 2**width counts
    bits = key_bits(np.dtype(array.dtype))
    prefix = np.zeros((groups, len(ranks)), np.uint64)
    below = np.zeros((groups, len(ranks)), np.int64)
    done = 0
    while done < bits:
        w = min(width, bits - done)
        shift = bits - done - w
        hist: dict[tuple[int, int], np.ndarray] = {(g, int(p)): np.zeros(2**w, np.int64) for g in range(groups)
                                                   for p in prefix[g]}  # fmt: skip
        for ids, keys in scan(array, view, what):
            for i, n in enumerate(ids):
                for c in range(view.channels):
                    g = int(n) * view.channels + c
                    top = keys[i, c] >> (shift + w) if done else None
                    for p in {int(p) for p in prefix[g]}:
                        sel = keys[i, c] if top is None else keys[i, c][top == p]
                        hist[g, p] += np.bincount((sel >> shift) & (2**w - 1), minlength=2**w)
        for g in range(groups):
            for r, rank in enumerate(ranks):
                cum = np.cumsum(hist[g, int(prefix[g, r])])
                digit = int(np.searchsorted(cum, rank - below[g, r], side="right"))
                below[g, r] += int(cum[digit - 1]) if digit else 0
                prefix[g, r] = (int(prefix[g, r]) << w) | digit
        done += w
    return prefix.reshape(*(math.prod(view.sample_shape), view.channels, len(ranks)))


def percentiles_chunked(
    array, axes: str, spatial: str, q: tuple[float, float] = PREDICT_PERCENTILES, *, what: str = "image"
) -> tuple[np.ndarray, np.ndarray]:
    """Exactly :func:`carekit.normalize.percentiles` of the network-order array, read chunk by chunk.

    Returns ``lo, hi`` of shape ``(N, C, 1, ...)`` (float32), where ``N`` runs over the samples
    of ``array`` (axes other than C and ``spatial``) and the percentiles are linear
    interpolations of order statistics, as ``np.percentile`` computes them.
    """
    view = View(axes, spatial, tuple(array.shape))
    n = math.prod(view.spatial_shape)
    virtual = (n - 1) * np.true_divide(np.asarray(q, np.float64), 100)
    lower = np.floor(virtual)
    gamma = virtual - lower
    ranks = [int(min(i, n - 1)) for v in lower for i in (v, v + 1)]
    values = from_keys(select_keys(array, view, ranks, what), np.dtype(array.dtype))  # (N, C, 4)
    out = []
    for k, t in enumerate(gamma):
        a, b = values[..., 2 * k], values[..., 2 * k + 1]
        diff = b - a  # numpy's interpolation, step by step, so the result is bit-identical
        out.append(np.where(t >= 0.5, b - diff * (1 - t), a + diff * t).astype(np.float32))
    shape = (*out[0].shape, *(1,) * len(spatial))
    return out[0].reshape(shape), out[1].reshape(shape)
