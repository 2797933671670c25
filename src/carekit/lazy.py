"""Large inputs read lazily: network-order views, sources other processes can reopen, exact percentiles.

An array too large for memory (a Zarr array, a memory-mapped TIFF) is read one window at a
time, folded into network order ``(N, C, *spatial)`` by its :class:`~carekit.axes.Layout`. Its
percentiles are found exactly, as ``np.percentile`` over each sample and channel would give them,
by a radix selection that reads the array a few times chunk by chunk.
"""

from __future__ import annotations

import hashlib
import math
import mmap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from carekit.axes import Layout, rearrange
from carekit.errors import CarekitError
from carekit.normalize import PREDICT_PERCENTILES, from_order_statistics
from carekit.omezarr import is_zarr, open_omezarr, slabs

READ_VOXELS = 4 * 2**20  # voxels per read when scanning the input for percentiles


def read_box(array, box: tuple, what: str = "input") -> np.ndarray:
    """``array[box]`` as numpy; a damaged chunk (a decompression error, a truncated file) becomes a
    one-line :class:`CarekitError` naming the input instead of a storage library's traceback."""
    try:
        return np.asarray(array[box])
    except CarekitError:
        raise
    except MemoryError:
        raise
    except Exception as e:  # zarr, numcodecs and tifffile raise many types for damaged data
        first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise CarekitError(f"{what}: cannot read the data at {format_box(box)} ({first}); the image is damaged, "
                           "copy it again") from None  # fmt: skip


def format_box(box: tuple) -> str:
    return "[" + ", ".join(f"{b.start}:{b.stop}" if isinstance(b, slice) else str(b) for b in box) + "]"


def read_window(layout: Layout, array, n: int, maps: list[np.ndarray], what: str = "input") -> np.ndarray:
    """Sample ``n`` of ``array`` at spatial indices ``maps`` (one index array per axis) as ``(1, C, *window)``."""
    boxes = [slice(int(m.min()), int(m.max()) + 1) for m in maps]
    kept = "".join(a for a in layout.axes if a not in layout.sample_axes)
    data = rearrange(read_box(array, layout.select(n, boxes), what), kept, "C" + layout.spatial)
    for i, (m, box) in enumerate(zip(maps, boxes, strict=True)):
        if len(m) != box.stop - box.start or m[0] != box.start:  # mirrored end
            data = np.take(data, m - box.start, axis=1 + i)
    return data[None]


# -- the input: sources other processes can reopen ---------------------------------------------
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


def open_input(path: str | Path, axes: str | None, fallback: str | None, allow_missing: bool = False):
    """Open an OME-Zarr or TIFF lazily: the array, its axes and spacing (micrometres, if known)."""
    from carekit.axes import axes_from_tiff, check_axes
    from carekit.io import read_image, read_spacing

    p = Path(path)
    if is_zarr(p):
        return open_omezarr(p, axes, fallback=fallback, allow_missing=allow_missing)
    if not p.is_file():
        raise CarekitError(f"{p}: no such file; give a TIFF file or an OME-Zarr folder as --input")
    try:
        import tifffile

        array = tifffile.memmap(p, mode="r")
        with tifffile.TiffFile(p) as tif:
            file_axes = axes_from_tiff(tif.series[0].axes, array.ndim)
    except Exception:  # compressed, tiled or damaged TIFFs cannot be mapped: read whole (or explain why not)
        array, file_axes = read_image(p)
    chosen = axes or file_axes or (fallback if fallback and len(fallback) == array.ndim else None)
    if chosen is None:
        raise CarekitError(f"{p}: axes unknown for shape {array.shape}; pass --axes, e.g. --axes ZYX")
    return array, check_axes(chosen, array.ndim, what=str(p)), read_spacing(p)


def content_state(array, source: Source | None) -> str:
    """A fingerprint of the input's content, so that a resumed run notices an input that changed.

    Arrays in memory are hashed whole. Inputs on disk are fingerprinted by their files (names, sizes,
    modification times) and a hash of up to 16 evenly spread samples of their values, so that
    resuming a large restore costs seconds, not a full read.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{tuple(array.shape)}{np.dtype(array.dtype)}".encode())
    if source is None:
        h.update(np.ascontiguousarray(np.asarray(array)).data)
        return h.hexdigest()
    root = Path(source.path) / (source.detail[0] if source.kind == "zarr" and source.detail[0] else "")
    files = sorted(f for f in root.rglob("*") if f.is_file()) if root.is_dir() else [root]
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(root) if root.is_dir() else f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    chunks = getattr(array, "chunks", None) or (1,) * len(array.shape)
    boxes = slabs(tuple(array.shape), tuple(chunks), 2**16)
    for i in np.unique(np.linspace(0, len(boxes) - 1, min(16, len(boxes))).round().astype(int)):
        h.update(np.ascontiguousarray(read_box(array, boxes[i], source.path)).data)
    return h.hexdigest()


# -- exact percentiles by radix selection --------------------------------------------------------
def key_type(dtype: np.dtype) -> tuple[int, type]:
    """Bits and unsigned integer type of the sort keys of ``dtype`` (see :func:`to_keys`)."""
    if dtype.kind not in "uif":
        raise CarekitError(f"pixel type {dtype} is not supported; use integer or float images")
    bits = 64 if dtype.kind == "f" and dtype.itemsize == 8 else 32 if dtype.kind == "f" else 8 * dtype.itemsize
    return bits, np.uint32 if bits <= 32 else np.uint64


def to_keys(values: np.ndarray) -> np.ndarray:
    """Unsigned integers that sort like ``values`` (floats: sign bit flipped, negatives inverted)."""
    bits, utype = key_type(values.dtype)
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
    bits, utype = key_type(dtype)
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


def scan(array, layout: Layout, what: str):
    """Yield ``(sample ids, keys (n, C, voxels))`` for chunk-aligned boxes covering ``array``."""
    chunks = getattr(array, "chunks", None) or (1,) * len(layout.shape)
    sample_dims = [layout.axes.index(a) for a in layout.sample_axes]
    for box in slabs(layout.shape, tuple(chunks), READ_VOXELS):
        data = read_box(array, box, what)
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            raise CarekitError(f"{what}: NaN or infinite values; replace them (e.g. with 0) before using carekit")
        ranges = [np.arange(box[d].start, box[d].stop) for d in sample_dims]
        ids = np.ravel_multi_index(np.meshgrid(*ranges, indexing="ij"), layout.sample_shape).ravel() if ranges else [0]
        yield ids, to_keys(layout.fold(data).reshape(len(ids), layout.channels, -1))


def select_keys(array, layout: Layout, ranks: list[int], what: str) -> np.ndarray:
    """Keys of the order statistics ``ranks`` (0-based) per sample and channel: ``(N, C, len(ranks))``."""
    groups = math.prod(layout.sample_shape) * layout.channels
    width = 16 if groups <= 64 else 8  # digit width: histogram memory is groups * 2**width counts
    bits, _ = key_type(np.dtype(array.dtype))
    prefix = np.zeros((groups, len(ranks)), np.uint64)
    below = np.zeros((groups, len(ranks)), np.int64)
    done = 0
    while done < bits:
        w = min(width, bits - done)
        shift = bits - done - w
        hist: dict[tuple[int, int], np.ndarray] = {(g, int(p)): np.zeros(2**w, np.int64) for g in range(groups)
                                                   for p in prefix[g]}  # fmt: skip
        for ids, keys in scan(array, layout, what):
            for i, n in enumerate(ids):
                for c in range(layout.channels):
                    g = int(n) * layout.channels + c
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
    return prefix.reshape(math.prod(layout.sample_shape), layout.channels, len(ranks))


def percentiles_chunked(
    array, axes: str, spatial: str, q: tuple[float, float] = PREDICT_PERCENTILES, *, what: str = "image"
) -> tuple[np.ndarray, np.ndarray]:
    """Exactly :func:`carekit.normalize.percentiles` of the network-order array, read chunk by chunk.

    Returns ``lo, hi`` of shape ``(N, C, 1, ...)`` (float32), where ``N`` runs over the samples of
    ``array`` (axes other than C and ``spatial``); the order statistics come from a radix selection,
    the rule that interpolates them is the in-memory path's.
    """
    layout = Layout(axes, spatial, tuple(array.shape))

    def select(ranks: list[int]) -> np.ndarray:
        return from_keys(select_keys(array, layout, ranks, what), np.dtype(array.dtype))

    lo, hi = from_order_statistics(select, math.prod(layout.spatial_shape), q)
    shape = (*lo.shape, *(1,) * len(spatial))
    return lo.reshape(shape), hi.reshape(shape)
