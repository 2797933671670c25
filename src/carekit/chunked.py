"""Out-of-core, resumable and optionally distributed restoration of arrays larger than memory.

The array is never loaded whole. Its percentiles are found exactly by a radix selection that
reads it a few times chunk by chunk (:mod:`carekit.lazy`). The spatial axes are then cut into
blocks aligned to the output chunks; each block reads its window with a halo as wide as the
network's receptive field (and the mirror padding the in-memory path adds at the array's end),
runs the network through :meth:`CARE.run_net`, and writes its output chunks at once. So the
result equals :meth:`CARE.predict` on the whole array up to float rounding.

Work goes into ``<output>.partial``: every finished block leaves a marker file, a rerun skips
marked blocks, and the folder is renamed to ``<output>`` when all are done. Blocks are independent
tasks that write whole chunks, so they can run on Dask workers, and a task rerun after a worker
dies writes the same data again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from carekit import threads
from carekit.axes import Layout, check_axes, rearrange
from carekit.blocks import Plan, make_plan, window_bytes_per_voxel
from carekit.ensemble import load
from carekit.errors import CarekitError
from carekit.io import check_result, inside, read_json, remove_stale_partials, write_failed, write_json
from carekit.lazy import Source, content_state, open_input, open_source, percentiles_chunked, read_window, source_of
from carekit.model import CARE, state_dict_cpu
from carekit.normalize import normalize
from carekit.omezarr import canonical_axes, create_image, write_multiscales
from carekit.registry import supporting

BLOCK_MEMORY = 2**30  # bytes per block: window copies plus network activations
SETTINGS = "chunked.json"
MARKERS = "blocks"


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

    layout: Layout
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

        with contextlib.suppress(ImportError, ValueError):
            from distributed import get_worker

            torch.set_num_threads(get_worker().state.nthreads)
        model = CARE.load(job.model_dir)
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
    x = read_window(job.layout, array, block.sample, maps, job.source.path if job.source else "input")
    shape = (1, len(block.lo)) + (1,) * len(maps)
    lo, hi = np.asarray(block.lo, np.float32).reshape(shape), np.asarray(block.hi, np.float32).reshape(shape)
    y = model.run_net(normalize(x, lo, hi), model.engine(job.device, job.precision), memory=job.memory)
    crop = tuple(slice(a - int(m[0]), b - int(m[0])) for (a, b), m in zip(block.core, maps, strict=True))
    core = (slice(None), slice(None), *crop)
    restored = model.to_intensities(y[core], lo, hi, x[core])[0][0]
    check_result(restored, f"block {block.name}")
    return restored


def write_block(job: Job, block: Block, restored: np.ndarray) -> None:
    """Write a block's chunks into the output, then its marker (so a marker means finished)."""
    import zarr

    out = cached("output", (job.partial, job.run_id), lambda: zarr.open_array(str(Path(job.partial) / "0"), mode="r+"))
    layout = job.layout
    kept = "".join(a for a in job.out_axes if a not in layout.sample_axes)
    marker = Path(job.partial) / MARKERS / f"{block.name}.done"
    tmp = marker.with_suffix(f".{os.getpid()}.tmp")
    try:
        out[layout.select(block.sample, [slice(*c) for c in block.core], job.out_axes)] = rearrange(
            restored, "C" + layout.spatial, kept
        )
        tmp.write_text("")
        os.replace(tmp, marker)
    except OSError as e:  # a full disk: the block stays unmarked, a rerun writes it again
        tmp.unlink(missing_ok=True)
        raise write_failed(Path(job.partial), e) from None


def run_block(job: Job, block: Block) -> str:
    """Restore and write one block; safe to run again (it rewrites the same chunks)."""
    write_block(job, block, compute_block(job, block))
    return block.name


# -- the run: settings, resume, local or Dask execution, the final rename -------------------------
def restore_chunked(model, image, output: str | Path, *, axes: str | None = None,
                    spacing: dict[str, float] | None = None, memory: int | None = None, device: str = "auto",
                    precision: str | None = None, dask: str | None = None, overwrite: bool = False,
                    progress: bool = True, on_block: Callable[[Block], None] | None = None,
                    allow_missing_chunks: bool = False) -> Path:  # fmt: skip
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
        ``"local"`` runs blocks on a local cluster (a single-threaded worker process per free core);
        ``"tcp://host:8786"`` on an existing scheduler. Default: blocks run in this process.
    overwrite : bool
        Replace an existing output (and an unfinished run with other settings).
    on_block : callable, optional
        Called with each finished block, in this process.
    allow_missing_chunks : bool
        Read chunks missing from a zarr input as its fill value (by default an error).

    Examples
    --------
    >>> restore_chunked("my_model", "huge.zarr", "restored.zarr", dask="local")  # doctest: +SKIP
    """
    model = model_for_chunks(model)
    path = None if not isinstance(image, (str, Path)) else Path(image)
    if path is not None:
        image, axes, file_spacing = open_input(path, axes, model.config.axes, allow_missing_chunks)
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

        try:
            if dask and todo:
                run_on_dask(dask, job.remote(), todo, finished)
            else:
                with threads.scope(shared_cores=True, tune=False):  # every usable core: reruns repeat bit for bit
                    for block in todo:
                        run_block(job, block)
                        finished(block)
        except CarekitError:  # a run that finished no block (a scheduler out of reach) leaves nothing to resume
            if not any((Path(job.partial) / MARKERS).glob("*.done")):
                shutil.rmtree(job.partial, ignore_errors=True)
            raise
    return finish(job, Path(output), model.output_spacing(spacing), overwrite)


def model_for_chunks(model):
    """The model to restore with (loaded if given as a folder); only plain CARE modes restore in blocks."""
    model = load(model) if isinstance(model, (str, Path)) else model
    if not isinstance(model, CARE) or "out_of_core" not in model.kind.supports:
        mode = model.config.mode if isinstance(model, CARE) else "ensemble"
        where = getattr(model, "directory", None) or "model"
        raise CarekitError(f"{where}: chunked prediction supports {supporting('out_of_core')} models, not {mode}; "
                           "predict to a TIFF instead")  # fmt: skip
    return model


def prepare(model, image, path, output, axes, spacing, memory, device, precision, overwrite):
    """Check everything, then create or reopen ``<output>.partial``; returns the job and all blocks."""
    axes = check_axes(axes, len(image.shape), what=str(path or "image"))
    spatial = model.config.spatial
    if any(a not in axes for a in spatial):
        raise CarekitError(
            f"{path or 'image'}: axes '{axes}' lack {spatial}, which this model needs; pass the full axes"
        )
    layout = Layout(axes, spatial, tuple(image.shape))
    if layout.channels != model.config.n_channel_in:
        raise CarekitError(f"{path or 'image'}: {layout.channels} channel(s) along C but the model expects "
                           f"{model.config.n_channel_in}; check --axes and the channel order")  # fmt: skip
    out_axes = canonical_axes(model.output_axes(axes), what=str(output))
    if path is not None and (inside(path, output) or inside(output, path)):
        raise CarekitError(
            f"{output}: the output would overwrite or lie inside the input {path}; choose another output"
        )
    if output.exists() and not overwrite:
        raise CarekitError(f"{output}: already exists; pass --overwrite to replace it or choose another --output")
    itemsize = np.dtype(image.dtype).itemsize
    per_voxel = window_bytes_per_voxel(model, layout.channels, itemsize)
    plan = make_plan(layout.spatial_shape, model.net.divisor(), model.net.halo(), per_voxel=per_voxel,
                     memory=memory or BLOCK_MEMORY, out_channels=model.config.n_channel_out)  # fmt: skip
    source = source_of(image, path)
    settings = {
        "model": fingerprint(model),
        "input": source.path if source else "array",
        "shape": list(layout.shape),
        "dtype": str(np.dtype(image.dtype)),
        "axes": axes,
        "output_axes": out_axes,
        "device": device,
        "precision": precision,
        "content": content_state(image, source),
    }
    partial = Path(f"{output}.partial")
    remove_stale_partials(output)
    recorded = open_partial(partial, settings, overwrite)
    if recorded is None:
        lo, hi = percentiles_chunked(image, axes, spatial, what=str(path or "image"))
        recorded = start_partial(partial, settings, layout, plan, out_axes, model.config.n_channel_out, lo, hi)
    try:
        plan = Plan(**{k: tuple(v) for k, v in recorded["plan"].items()})
        lo, hi = np.asarray(recorded["lo"], np.float32), np.asarray(recorded["hi"], np.float32)
        blocks = [
            Block("_".join(map(str, (n, *(a for a, _ in core)))), n, core, tuple(lo[n].tolist()), tuple(hi[n].tolist()))
            for n in range(math.prod(layout.sample_shape))
            for core in plan.cores()
        ]
    except (KeyError, TypeError, ValueError, IndexError):
        raise CarekitError(
            f"{partial}: the unfinished run's record is damaged; pass --overwrite to start over"
        ) from None
    job = Job(layout, plan, out_axes, str(partial), str(recorded["run_id"]), settings["model"],
              str(Path(model.directory).resolve()) if model.directory else None, source, device, precision,
              memory or BLOCK_MEMORY, model, image)  # fmt: skip
    return job, blocks


def open_partial(partial: Path, settings: dict, overwrite: bool) -> dict | None:
    """The recorded state of an unfinished run with the same settings, or None to start afresh."""
    if not partial.exists():
        return None
    if not (partial / SETTINGS).exists():  # a start interrupted before its settings were written
        shutil.rmtree(partial)
        return None
    try:
        recorded = read_json(partial / SETTINGS)
        changed = [k if k != "content" else "input content" for k, v in settings.items() if recorded.get(k) != v]
        readable = isinstance(recorded.get("plan"), dict) and all(k in recorded for k in ("run_id", "lo", "hi"))
    except CarekitError:
        recorded, changed, readable = {}, ["record (damaged)"], False
    if not changed and not readable:
        changed = ["record (damaged)"]
    if not changed:
        return recorded
    if overwrite:
        shutil.rmtree(partial)
        return None
    raise CarekitError(f"{partial}: an unfinished run with a different {', '.join(changed)}; "
                       "delete that folder or pass --overwrite to start over")  # fmt: skip


def start_partial(partial: Path, settings, layout: Layout, plan: Plan, out_axes: str, c_out: int, lo, hi) -> dict:
    """Create the output array and the block markers' folder, then record the settings (last)."""
    sizes = {a: layout.shape[layout.axes.index(a)] for a in layout.axes if a != "C"}
    shape = tuple(c_out if a == "C" else sizes[a] for a in out_axes)
    chunks = tuple(c_out if a == "C" else plan.chunk[layout.spatial.index(a)] if a in layout.spatial else 1
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
    """One task per block on a local cluster (``"local"``: a single-threaded worker per free core) or
    the scheduler at ``address``."""
    from distributed import Client, LocalCluster, as_completed

    with contextlib.ExitStack() as stack:
        if address == "local":
            workers = threads.initial_threads()  # one single-threaded worker per free core
            target = stack.enter_context(LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
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
