"""Out-of-core, resumable and optionally distributed restoration of arrays larger than memory.

The array is never loaded whole. Its percentiles are found exactly, as
``np.percentile`` over each sample and channel would give them, by a radix selection
that reads the array a few times chunk by chunk. The spatial axes are then cut into
blocks aligned to the output chunks; each block reads its window with a halo as wide
as the network's receptive field (and the mirror padding the in-memory path adds at
the array's end), runs the network through :meth:`CARE.run_net`, and writes its
output chunks at once. So the result equals :meth:`CARE.predict` on the whole array
up to float rounding.

Work goes into ``<output>.partial``: every finished block leaves a marker file, a
rerun skips marked blocks, and the folder is renamed to ``<output>`` when all are
done. Blocks are independent tasks that write whole chunks, so they can run on Dask
workers, and a task rerun after a worker dies writes the same data again.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import math
import mmap
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from carekit.errors import CarekitError
from carekit.normalize import PREDICT_PERCENTILES, normalize
from carekit.omezarr import canonical_axes, create_image, is_zarr, open_omezarr, slabs, write_multiscales

BLOCK_MEMORY = 2**30  # bytes per block: window copies plus network activations
READ_VOXELS = 4 * 2**20  # voxels per read when scanning the input for percentiles
SETTINGS = "chunked.json"
MARKERS = "blocks"
MODES = ("denoise", "synthetic")


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


# -- blocks: output chunks, windows with halo and the in-memory path's end padding ---------------
@dataclass(frozen=True)
class Plan:
    """The spatial cut: output chunks, blocks (whole numbers of chunks) and their read windows."""

    shape: tuple[int, ...]
    grid: tuple[int, ...]
    halo: tuple[int, ...]
    chunk: tuple[int, ...]
    block: tuple[int, ...]

    @property
    def padded(self) -> tuple[int, ...]:
        return tuple(math.ceil(s / g) * g for s, g in zip(self.shape, self.grid, strict=True))

    def cores(self) -> list[tuple[tuple[int, int], ...]]:
        starts = [range(0, s, b) for s, b in zip(self.shape, self.block, strict=True)]
        return [tuple((a, min(a + b, s)) for a, b, s in zip(corner, self.block, self.shape, strict=True))
                for corner in itertools.product(*starts)]  # fmt: skip

    def window(self, core: tuple[tuple[int, int], ...]) -> list[np.ndarray]:
        """Per axis, the input indices a core's window reads; past the end they mirror like ``pad_to_grid``."""
        reflect = min(self.shape) > 1
        maps = []
        for (a, b), s, p, g, h in zip(core, self.shape, self.padded, self.grid, self.halo, strict=True):
            stop = min(math.ceil(b / g) * g + h, p)
            i = np.arange(max(a - h, 0), stop)
            if reflect:
                m = i % (2 * (s - 1))
                i = np.where(m < s, m, 2 * (s - 1) - m)
            maps.append(np.minimum(i, s - 1))
        return maps


def window_voxels(core: tuple[int, ...], plan_halo: tuple[int, ...], padded: tuple[int, ...]) -> int:
    return math.prod(min(c + 2 * h, p) for c, h, p in zip(core, plan_halo, padded, strict=True))


def window_bytes_per_voxel(model, channels: int, itemsize: int) -> int:
    """Memory per window voxel: activations plus the input, normalised and output copies."""
    return model.net.bytes_per_voxel() + channels * (12 + itemsize) + 12 * model.config.n_channel_out


def make_plan(shape, grid, halo, *, per_voxel: int, memory: int, out_channels: int) -> Plan:
    """Largest chunks of at most ~2 MB, then blocks of whole chunks whose windows fit ``memory``."""
    from carekit.omezarr import CHUNK_BYTES

    halo = tuple(math.ceil(h / g) * g for h, g in zip(halo, grid, strict=True))
    padded = tuple(math.ceil(s / g) * g for s, g in zip(shape, grid, strict=True))

    def fits(core) -> bool:
        return window_voxels(core, halo, padded) * per_voxel <= memory

    chunk = list(padded)
    while math.prod(chunk) * 4 * out_channels > CHUNK_BYTES or not fits(chunk):
        shrinkable = [i for i in range(len(chunk)) if chunk[i] > max(grid[i], halo[i])]  # smaller saves little
        if not shrinkable:
            break
        i = max(shrinkable, key=lambda k: chunk[k])
        chunk[i] = math.ceil(chunk[i] / 2 / grid[i]) * grid[i]
    chunk = [min(c, s) for c, s in zip(chunk, shape, strict=True)]
    k = [1] * len(chunk)
    growing = {i for i in range(len(k)) if chunk[i] < shape[i]}
    while growing:
        i = min(growing, key=lambda j: (k[j] * chunk[j], -j))
        bigger = [c * (m + (j == i)) for j, (c, m) in enumerate(zip(chunk, k, strict=True))]
        if not fits(bigger):
            growing.discard(i)
            continue
        k[i] += 1
        if k[i] * chunk[i] >= shape[i]:
            growing.discard(i)
    block = tuple(min(c * m, s) for c, m, s in zip(chunk, k, shape, strict=True))
    return Plan(tuple(shape), tuple(grid), halo, tuple(chunk), block)


@dataclass(frozen=True)
class Block:
    """One task: a sample, a spatial core, and that sample's percentiles."""

    name: str
    sample: int
    core: tuple[tuple[int, int], ...]
    lo: tuple[float, ...]
    hi: tuple[float, ...]


@dataclass
class Job:
    """Everything a block task needs; the live objects are dropped before it travels to a worker."""

    view: View
    plan: Plan
    out_axes: str
    partial: str
    run_id: str
    fingerprint: str
    model_dir: str | None
    source: Source | None
    device: str
    precision: str | None
    memory: int
    model: Any = field(default=None, repr=False)
    array: Any = field(default=None, repr=False)

    def remote(self) -> Job:
        """This job without its live model and array, for a worker that reopens both."""
        return replace(self, model=None, array=None)


# -- one block, in this process or on a worker ------------------------------------------------------
_CACHE: dict[str, tuple[Any, Any]] = {}  # per process: what, -> (key, object); one of each kept


def cached(what: str, key, make: Callable[[], Any]):
    if what not in _CACHE or _CACHE[what][0] != key:
        _CACHE[what] = (key, make())
    return _CACHE[what][1]


def fingerprint(model) -> str:
    """A hash of the model's configuration and weights, to recognise the same model in a later run."""
    from carekit.model import state_dict_cpu

    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for name, tensor in state_dict_cpu(model.net).items():
        h.update(name.encode())
        h.update(tensor.numpy().tobytes())
    return h.hexdigest()[:16]


def worker_model(job: Job):
    """The job's model: the live one in-process, else loaded once per worker process from its folder."""
    if job.model is not None:
        return job.model

    def load():
        import torch

        from carekit.model import load as load_model

        with contextlib.suppress(ImportError, ValueError):
            from distributed import get_worker

            torch.set_num_threads(get_worker().state.nthreads)
        model = load_model(job.model_dir)
        if fingerprint(model) != job.fingerprint:
            raise CarekitError(f"{job.model_dir}: the model changed while predicting; rerun the command")
        return model

    return cached("model", (job.model_dir, job.fingerprint), load)


def compute_block(job: Job, block: Block) -> np.ndarray:
    """Restored intensities of a block's core, ``(C_out, *core)`` float32."""
    model = worker_model(job)
    array = job.array
    if array is None:
        array = cached("input", (job.source, job.run_id), lambda: open_source(job.source))
    maps = job.plan.window(block.core)
    x = job.view.read(array, block.sample, maps)
    shape = (1, len(block.lo)) + (1,) * len(maps)
    lo, hi = np.asarray(block.lo, np.float32).reshape(shape), np.asarray(block.hi, np.float32).reshape(shape)
    y = model.run_net(normalize(x, lo, hi), model.engine(job.device, job.precision), memory=job.memory)
    crop = tuple(slice(a - int(m[0]), b - int(m[0])) for (a, b), m in zip(block.core, maps, strict=True))
    return model.to_intensities(y[(slice(None), slice(None), *crop)], lo, hi)[0][0]


def write_block(job: Job, block: Block, restored: np.ndarray) -> None:
    """Write a block's chunks into the output, then its marker (so a marker means finished)."""
    import zarr

    out = cached("output", (job.partial, job.run_id), lambda: zarr.open_array(str(Path(job.partial) / "0"), mode="r+"))
    sample = dict(zip(job.view.sample_axes, np.unravel_index(block.sample, job.view.sample_shape), strict=True))
    spatial = job.view.spatial
    sel = tuple(int(sample[a]) if a in sample else slice(*block.core[spatial.index(a)]) if a != "C" else slice(None)
                for a in job.out_axes)  # fmt: skip
    kept = [a for a in job.out_axes if a not in sample]
    data = restored if "C" in kept else restored[0]
    current = ("C" if "C" in kept else "") + spatial
    out[sel] = np.transpose(data, [current.index(a) for a in kept])
    marker = Path(job.partial) / MARKERS / f"{block.name}.done"
    tmp = marker.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text("")
    os.replace(tmp, marker)


def run_block(job: Job, block: Block) -> str:
    """Restore and write one block; safe to run again (it rewrites the same chunks)."""
    write_block(job, block, compute_block(job, block))
    return block.name


# -- the run: settings, resume, local or Dask execution, the final rename -------------------------
def restore_chunked(
    model,
    image,
    output: str | Path,
    *,
    axes: str | None = None,
    spacing: dict[str, float] | None = None,
    memory: int | None = None,
    device: str = "auto",
    precision: str | None = None,
    dask: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    on_block: Callable[[Block], None] | None = None,
) -> Path:
    """Restore an array of any size into an OME-Zarr image, block by block, resumably.

    Parameters
    ----------
    model : CARE or str or Path
        A denoise or synthetic model, or its folder (Dask workers load it from there).
    image : array-like or str or Path
        A zarr array, a ``numpy.memmap`` (e.g. ``tifffile.memmap``), a numpy array, or the
        path of an OME-Zarr image or TIFF file (then ``axes`` and ``spacing`` come from the file).
    output : str or Path
        The OME-Zarr folder to write; work goes into ``<output>.partial`` until every block is done.
    axes : str, optional
        The image's axes; default from the file, else the model's training axes.
    spacing : dict, optional
        Voxel size in micrometres per axis letter, recorded in the output.
    memory : int, optional
        Bytes one block may use (window copies and network activations); sets the block size.
    device, precision : str
        As for :meth:`CARE.predict`.
    dask : str, optional
        ``"local"`` runs blocks on a local cluster of 2 worker processes; ``"tcp://host:8786"``
        on an existing scheduler. Default: blocks run in this process.
    overwrite : bool
        Replace an existing output (and an unfinished run with other settings).
    on_block : callable, optional
        Called with each finished block, in this process.

    Examples
    --------
    >>> restore_chunked("my_model", "huge.zarr", "restored.zarr", dask="local")  # doctest: +SKIP
    """
    model = model_for_chunks(model)
    path = None if not isinstance(image, (str, Path)) else Path(image)
    if path is not None:
        image, axes, file_spacing = open_input(path, axes, model.config.axes)
        spacing = spacing or file_spacing
    if dask and (model.directory is None or source_of(image, path) is None):
        raise CarekitError(
            "Dask workers load the model from its folder and reopen the input from its path; "
            "save the model (model.save(dir)) and pass a zarr array, TIFF path or OME-Zarr path"
        )
    job, blocks = prepare(model, image, path, Path(output), axes or model.config.axes, spacing, memory, device,
                          precision, overwrite)  # fmt: skip
    todo = [b for b in blocks if not (Path(job.partial) / MARKERS / f"{b.name}.done").exists()]
    from tqdm.auto import tqdm

    with tqdm(total=len(blocks), initial=len(blocks) - len(todo), desc="restore", unit="block",
              disable=not progress) as bar:  # fmt: skip

        def finished(block: Block) -> None:
            bar.update()
            if on_block is not None:
                on_block(block)

        if dask and todo:
            run_on_dask(dask, job.remote(), todo, finished)
        else:
            for block in todo:
                run_block(job, block)
                finished(block)
    return finish(job, Path(output), model.output_spacing(spacing), overwrite)


def model_for_chunks(model):
    """The model to restore with (loaded if given as a folder); only plain CARE modes restore in blocks."""
    from carekit.model import CARE, load

    model = load(model) if isinstance(model, (str, Path)) else model
    mode = getattr(getattr(model, "config", None), "mode", "ensemble")
    if not isinstance(model, CARE) or mode not in MODES:
        where = getattr(model, "directory", None) or "model"
        raise CarekitError(f"{where}: chunked prediction supports denoise and synthetic models, not {mode}; "
                           "predict to a TIFF instead")  # fmt: skip
    return model


def prepare(model, image, path, output, axes, spacing, memory, device, precision, overwrite):
    """Check everything, then create or reopen ``<output>.partial``; returns the job and all blocks."""
    from carekit.axes import check_axes

    axes = check_axes(axes, len(image.shape), what=str(path or "image"))
    spatial = model.config.spatial
    if any(a not in axes for a in spatial):
        raise CarekitError(
            f"{path or 'image'}: axes '{axes}' lack {spatial}, which this model needs; pass the full axes"
        )
    view = View(axes, spatial, tuple(image.shape))
    if view.channels != model.config.n_channel_in:
        raise CarekitError(f"{path or 'image'}: {view.channels} channel(s) along C but the model expects "
                           f"{model.config.n_channel_in}; check --axes and the channel order")  # fmt: skip
    out_axes = canonical_axes(model.output_axes(axes), what=str(output))
    if output.exists() and not overwrite:
        raise CarekitError(f"{output}: already exists; pass --overwrite to replace it or choose another --output")
    itemsize = np.dtype(image.dtype).itemsize
    per_voxel = window_bytes_per_voxel(model, view.channels, itemsize)
    plan = make_plan(view.spatial_shape, model.net.divisor(), model.net.halo(), per_voxel=per_voxel,
                     memory=memory or BLOCK_MEMORY, out_channels=model.config.n_channel_out)  # fmt: skip
    source = source_of(image, path)
    settings = {
        "model": fingerprint(model),
        "input": source.path if source else "array",
        "shape": list(view.shape),
        "dtype": str(np.dtype(image.dtype)),
        "axes": axes,
        "output_axes": out_axes,
        "device": device,
        "precision": precision,
    }
    partial = Path(f"{output}.partial")
    recorded = open_partial(partial, settings, overwrite)
    if recorded is None:
        lo, hi = percentiles_chunked(image, axes, spatial, what=str(path or "image"))
        recorded = start_partial(partial, settings, view, plan, out_axes, model.config.n_channel_out, lo, hi)
    plan = Plan(**{k: tuple(v) for k, v in recorded["plan"].items()})
    job = Job(view, plan, out_axes, str(partial), recorded["run_id"], settings["model"],
              str(Path(model.directory).resolve()) if model.directory else None, source, device, precision,
              memory or BLOCK_MEMORY, model, image)  # fmt: skip
    lo, hi = np.asarray(recorded["lo"], np.float32), np.asarray(recorded["hi"], np.float32)
    blocks = [
        Block("_".join(map(str, (n, *(a for a, _ in core)))), n, core, tuple(lo[n].tolist()), tuple(hi[n].tolist()))
        for n in range(math.prod(view.sample_shape))
        for core in plan.cores()
    ]
    return job, blocks


def open_partial(partial: Path, settings: dict, overwrite: bool) -> dict | None:
    """The recorded state of an unfinished run with the same settings, or None to start afresh."""
    from carekit.io import read_json

    if not partial.exists():
        return None
    if not (partial / SETTINGS).exists():  # a start interrupted before its settings were written
        shutil.rmtree(partial)
        return None
    recorded = read_json(partial / SETTINGS)
    changed = [k for k, v in settings.items() if recorded.get(k) != v]
    if not changed:
        return recorded
    if overwrite:
        shutil.rmtree(partial)
        return None
    raise CarekitError(f"{partial}: an unfinished run with a different {', '.join(changed)}; "
                       "delete that folder or pass --overwrite to start over")  # fmt: skip


def start_partial(partial: Path, settings, view: View, plan: Plan, out_axes: str, c_out: int, lo, hi) -> dict:
    """Create the output array and the block markers' folder, then record the settings (last)."""
    from carekit.io import write_json

    sizes = {a: view.shape[view.axes.index(a)] for a in view.axes if a != "C"}
    shape = tuple(c_out if a == "C" else sizes[a] for a in out_axes)
    chunks = tuple(c_out if a == "C" else plan.chunk[view.spatial.index(a)] if a in view.spatial else 1
                   for a in out_axes)  # fmt: skip
    create_image(partial, shape, chunks)
    (partial / MARKERS).mkdir()
    n, c = lo.shape[:2]
    recorded = {**settings, "run_id": uuid.uuid4().hex, "plan": {k: list(v) for k, v in vars(plan).items()},
                "lo": lo.reshape(n, c).tolist(), "hi": hi.reshape(n, c).tolist()}  # fmt: skip
    write_json(partial / SETTINGS, recorded)
    return recorded


def finish(job: Job, output: Path, spacing, overwrite: bool) -> Path:
    """Describe the finished image, move it into place and drop the bookkeeping."""
    partial = Path(job.partial)
    write_multiscales(partial, job.out_axes, spacing, name=output.stem)
    if output.exists() and overwrite:
        shutil.rmtree(output) if output.is_dir() else output.unlink()
    os.replace(partial, output)
    shutil.rmtree(output / MARKERS, ignore_errors=True)
    (output / SETTINGS).unlink(missing_ok=True)
    return output


def run_on_dask(address: str, job: Job, todo: list[Block], finished: Callable[[Block], None]) -> None:
    """One task per block on a local 2-worker cluster (``"local"``) or the scheduler at ``address``."""
    from distributed import Client, LocalCluster, as_completed

    with contextlib.ExitStack() as stack:
        if address == "local":
            target = stack.enter_context(LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                                      dashboard_address=None))  # fmt: skip
        else:
            target = address
        try:
            client = stack.enter_context(Client(target, timeout=30))
        except OSError as e:
            raise CarekitError(f"cannot reach the Dask scheduler at {address} ({e}); check --dask") from None
        by_key = {f"carekit-block-{b.name}-{uuid.uuid4().hex[:8]}": b for b in todo}
        futures = [client.submit(run_block, job, b, key=k) for k, b in by_key.items()]
        try:
            for future in as_completed(futures):
                future.result()
                finished(by_key[future.key])
        finally:
            client.cancel(futures)


def run_predict_chunked(a: argparse.Namespace) -> None:
    """``carekit predict`` for OME-Zarr input or output, or with ``--dask``."""
    unsupported = {"--tta": a.tta, "--uncertainty": a.uncertainty, "--movie": a.movie,
                   "--height-map": a.height_map, "--factor": a.factor, "--n-tiles": a.n_tiles}  # fmt: skip
    flags = [flag for flag, value in unsupported.items() if value]
    if flags:
        raise CarekitError(f"{', '.join(flags)} cannot be combined with OME-Zarr or --dask prediction; "
                           "predict to a TIFF instead")  # fmt: skip
    out = Path(a.output)
    if out.suffix.lower() != ".zarr":
        raise CarekitError(f"{out}: OME-Zarr and --dask prediction write OME-Zarr; give an --output ending in .zarr")
    if Path(a.input).is_dir() and not is_zarr(a.input):
        raise CarekitError(f"{a.input}: a folder of TIFFs cannot go to one OME-Zarr; predict the files one by one")
    memory = int(a.memory * 2**30) if a.memory else None
    options = {"memory": memory, "device": a.device, "precision": a.precision, "dask": a.dask}
    written = restore_chunked(
        a.model, a.input, out, axes=a.axes, overwrite=a.overwrite, progress=not a.quiet, **options
    )
    print(f"{a.input} -> {written}")
