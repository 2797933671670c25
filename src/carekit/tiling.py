"""Tiled prediction of normalised arrays, for images of any size.

An image is padded up to the network's pooling grid and cut into equal windows:
a core tile plus a halo at least as wide as the network's receptive field, with
window starts on the pooling grid. Only the cores are kept, so a tiled result
equals the untiled one up to float rounding. Windows are batched, and their
size follows a memory budget.
"""

from __future__ import annotations

import collections
import itertools
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from carekit import threads
from carekit.engine import Engine
from carekit.errors import CarekitError
from carekit.hardware import available_memory

DEFAULT_MEMORY = 1536 * 2**20  # bytes of activations per batch of windows: the least default
CPU_SHARE = 0.25  # on CPU: this share of the available memory ...
CPU_MAX_MEMORY = 5 * 2**30  # ... up to this many bytes
GPU_SHARE = 0.25  # on CUDA: this share of the GPU's free memory ...
GPU_MAX_MEMORY = 8 * 2**30  # ... up to this many bytes
MAX_BATCH = 16
# On CPU in bfloat16 (and int8), 2D windows of more than CPU_LARGE pixels are cut down towards CPU_WINDOW
# pixels while the halos they recompute add at most CPU_OVERHEAD to the work: a window's feature maps then stay in
# cache. The default 2D network restored 2048x2048 at 1.7-3.1 Mpx/s in one window and 4.3-4.6 in
# 4x4 to 6x6 windows (2-core Xeon, bfloat16), 1024x1024 at 3.3 and 4.2-4.4, while 512x512 was faster
# whole (5.2) than in 2x2 windows (3.7). Its kernel-5 variant (wider halo) gained nothing from
# smaller windows, and a 3D network loses more to halos in three axes than cache gives back, so
# volumes keep the memory rule; so does float32, whose slower convolutions make the halos cost more
# than cache saves (2048x2048: 1.08 against 1.18 Mpx/s whole).
CPU_LARGE = 640 * 640
CPU_WINDOW = 400 * 400
CPU_OVERHEAD = 1.5
# How long work reports its progress: a tqdm bar (True), nothing (False), or a callable told
# ``(done, total)`` after each unit (a GUI's progress bar; it may raise to cancel the work).
Progress = bool | Callable[[int, int], None]


def default_memory(engine: Engine, host_arrays: int = 0) -> int:
    """The activation budget when none is given: a share of the free memory of the device.

    Larger windows recompute less halo: on CPU, 5 GiB takes a 64x512x512 volume in one window
    (0.95 Mvox/s on 2 cores, 0.66 at 1.5 GiB), while larger volumes gain nothing past ~3 GiB
    (100x1024x1024: 154 s at 3 and at 5 GiB). On CPU the whole-image arrays of the call
    (``host_arrays`` bytes) count against the same share, so that a large volume's windows and
    its input and output together stay within it. A GPU with tens of GiB free takes far larger
    windows than a CPU (H100: a 64x512x512 volume in one window).
    """
    if engine.device.type != "cuda":
        share, cap, free = CPU_SHARE, CPU_MAX_MEMORY, available_memory()
        return int(max(DEFAULT_MEMORY, min(cap, share * free) - host_arrays))
    share, cap, free = GPU_SHARE, GPU_MAX_MEMORY, torch.cuda.mem_get_info(engine.device)[0]
    return int(max(DEFAULT_MEMORY, min(cap, share * free)))


@dataclass(frozen=True)
class Span:
    """Along one axis: the window read from the padded input and the core it contributes."""

    start: int
    length: int
    core_start: int
    core_stop: int


def spans(size: int, n_tiles: int, halo: int, grid: int) -> list[Span]:
    """Split a padded axis of ``size`` (a multiple of ``grid``) into ``n_tiles`` windows."""
    core = math.ceil(size / n_tiles / grid) * grid
    if core >= size:
        return [Span(0, size, 0, size)]
    length = min(size, core + 2 * halo)
    out = []
    for a in range(0, size, core):
        b = min(a + core, size)
        start = min(max(a - halo, 0), size - length)
        out.append(Span(start, length, a, b))
    return out


def pad_to_grid(x: np.ndarray, grid: tuple[int, ...]) -> tuple[np.ndarray, tuple[int, ...]]:
    """Pad the last ``len(grid)`` axes at their ends to multiples of ``grid`` (mirroring)."""
    shape = x.shape[x.ndim - len(grid) :]
    target = tuple(math.ceil(s / g) * g for s, g in zip(shape, grid, strict=True))
    if target == shape:
        return x, shape
    pad = [(0, 0)] * (x.ndim - len(grid)) + [(0, t - s) for s, t in zip(shape, target, strict=True)]
    mode = "reflect" if min(shape) > 1 else "edge"
    return np.pad(x, pad, mode=mode), shape


def auto_tiles(shape: tuple[int, ...], halo: tuple[int, ...], grid: tuple[int, ...], budget_voxels: int) -> tuple:
    """Fewest tiles per axis whose windows fit ``budget_voxels``; the largest window is split first."""
    n = [1] * len(shape)

    def window(i: int, k: int) -> int:
        core = math.ceil(shape[i] / k / grid[i]) * grid[i]
        return shape[i] if core >= shape[i] else min(shape[i], core + 2 * halo[i])

    def next_split(i: int) -> int | None:
        now = window(i, n[i])
        return next((k for k in range(n[i] + 1, shape[i] // grid[i] + 1) if window(i, k) < now), None)

    while math.prod(window(i, k) for i, k in enumerate(n)) > budget_voxels:
        options = [(window(i, n[i]), i, k) for i in range(len(n)) if (k := next_split(i)) is not None]
        if not options:
            break
        _, axis, k = max(options)
        n[axis] = k
    return tuple(n)


def window_sizes(shape: tuple[int, ...], halo: tuple[int, ...], grid: tuple[int, ...], n_tiles: tuple) -> tuple:
    """The largest window per axis for ``n_tiles``."""
    axes = zip(shape, n_tiles, halo, grid, strict=True)
    return tuple(max(sp.length for sp in spans(s, k, h, g)) for s, k, h, g in axes)


def recomputed(shape: tuple[int, ...], halo: tuple[int, ...], grid: tuple[int, ...], n_tiles: tuple) -> float:
    """Voxels run through the network for ``n_tiles``, relative to the image's."""
    axes = zip(shape, n_tiles, halo, grid, strict=True)
    total = math.prod(sum(sp.length for sp in spans(s, k, h, g)) for s, k, h, g in axes)
    return total / math.prod(shape)


def cache_tiles(shape: tuple[int, ...], halo: tuple[int, ...], grid: tuple[int, ...], n_tiles: tuple) -> tuple:
    """``n_tiles`` split further while windows exceed :data:`CPU_WINDOW` pixels and the halos add
    at most :data:`CPU_OVERHEAD` to the work (2D prediction on CPU); windows of at most
    :data:`CPU_LARGE` pixels stay whole."""
    voxels = math.prod(window_sizes(shape, halo, grid, n_tiles))
    if voxels <= CPU_LARGE:
        return n_tiles
    while voxels > CPU_WINDOW:
        finer = auto_tiles(shape, halo, grid, voxels - 1)
        finer = tuple(max(a, b) for a, b in zip(finer, n_tiles, strict=True))
        if finer == n_tiles or recomputed(shape, halo, grid, finer) > CPU_OVERHEAD:
            break
        n_tiles, voxels = finer, math.prod(window_sizes(shape, halo, grid, finer))
    return n_tiles


class Ticks:
    """Counts the units of a piece of work for a :data:`Progress`: a tqdm bar from ``least`` units on, or
    the callable after every unit. A context manager that closes the bar."""

    def __init__(self, total: int, progress: Progress, desc: str, unit: str, least: int = 1) -> None:
        self.total, self.done = total, 0
        self.report = progress if callable(progress) else None
        quiet = self.report is not None or not progress or total < least
        self.bar = tqdm(total=total, desc=desc, unit=unit, disable=quiet, leave=False)

    def update(self) -> None:
        self.done += 1
        self.bar.update()
        if self.report is not None:
            self.report(self.done, self.total)

    def __enter__(self) -> Ticks:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()


def check_tiles(n_tiles: tuple[int, ...], size: tuple[int, ...]) -> None:
    """``n_tiles`` must give each tiled axis between 1 tile and one per pixel."""
    if len(n_tiles) != len(size):
        raise CarekitError(f"--n-tiles {','.join(map(str, n_tiles))} needs {len(size)} entries, one per tiled axis "
                           f"(this image's are {','.join(map(str, size))} pixels long)")  # fmt: skip
    if any(not 1 <= k <= s for k, s in zip(n_tiles, size, strict=True)):
        raise CarekitError(f"--n-tiles {','.join(map(str, n_tiles))}: each axis takes from 1 tile up to its size "
                           f"({','.join(map(str, size))}); give positive counts")  # fmt: skip


def to_host(t: torch.Tensor) -> np.ndarray:
    """A tensor as a numpy array; from a GPU through pinned memory (pageable copies run at ~1 GB/s)."""
    if t.device.type != "cuda":
        return t.cpu().numpy()
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t)
    return host.numpy()


def predict_tiled(forward: Callable[[torch.Tensor], torch.Tensor], x: np.ndarray, engine: Engine, *,
                  grid: tuple[int, ...], halo: tuple[int, ...], bytes_per_voxel: int,
                  n_tiles: tuple[int, ...] | None = None, memory: int | None = None,
                  progress: Progress = False) -> np.ndarray:  # fmt: skip
    """Run ``forward`` over ``x`` (``(N, C, *S)`` float32) in tiles; returns ``(N, C_out, *T)`` float32.

    The tiled axes ``T`` are the last ``len(grid)`` axes of ``S``; axes before them (the z of
    a projection) enter each window whole, and the result has only the tiled axes.
    ``n_tiles`` fixes the number of tiles per tiled axis; otherwise it is chosen so that
    a window's activations (``bytes_per_voxel`` per tiled pixel) fit ``memory`` bytes.
    """
    padded, shape = pad_to_grid(np.asarray(x, np.float32), grid)
    size = padded.shape[padded.ndim - len(grid) :]
    whole = (slice(None),) * (padded.ndim - 2 - len(grid))
    budget = memory or default_memory(engine, host_arrays=2 * padded.nbytes)  # padded input, output
    in_cache = engine.cache_windows and len(grid) == 2 and not whole
    if n_tiles is None:
        n_tiles = auto_tiles(size, halo, grid, max(1, budget // bytes_per_voxel))
        if in_cache:
            n_tiles = cache_tiles(size, halo, grid, n_tiles)
    check_tiles(n_tiles, size)
    axis_spans = [spans(s, k, h, g) for s, k, h, g in zip(size, n_tiles, halo, grid, strict=True)]
    jobs = [(i, combo) for i in range(padded.shape[0]) for combo in itertools.product(*axis_spans)]
    window_voxels = math.prod(sp.length for sp in jobs[0][1])
    per_batch = int(max(1, min(MAX_BATCH, budget // (window_voxels * bytes_per_voxel))))
    if in_cache:  # small windows batched up to a cache-sized pass, large ones one at a time
        per_batch = max(1, min(per_batch, CPU_WINDOW // window_voxels))
    chunks = [jobs[b : b + per_batch] for b in range(0, len(jobs), per_batch)]

    def run(chunk: list) -> np.ndarray:
        windows = [padded[(i, slice(None), *whole, *(slice(s.start, s.start + s.length) for s in combo))]
                   for i, combo in chunk]  # fmt: skip
        with torch.inference_mode(), engine.autocast():
            return to_host(forward(engine.tensor(np.stack(windows))).float())

    out = None
    workers = torch.get_num_threads() if in_cache and len(chunks) > 1 else 1
    with Ticks(len(chunks), progress, "predict", "batch", least=2) as ticks:
        for chunk, result in window_results(run, chunks, workers):
            if out is None:
                out = np.empty((padded.shape[0], result.shape[1], *size), np.float32)
            for (i, combo), r in zip(chunk, result, strict=True):
                dst = (i, slice(None), *(slice(s.core_start, s.core_stop) for s in combo))
                src = (slice(None), *(slice(s.core_start - s.start, s.core_stop - s.start) for s in combo))
                out[dst] = r[src]
            ticks.update()
    assert out is not None
    return out[(slice(None), slice(None), *(slice(0, s) for s in shape))]


def window_results(run: Callable[[list], np.ndarray], chunks: list, workers: int) -> Iterator[tuple[list, np.ndarray]]:
    """``(chunk, run(chunk))`` in order. One worker runs the chunks in turn and reports each one's
    time to the thread tuner (:mod:`carekit.threads`). Several run one chunk each at a time, each
    with a single torch thread: with cache-sized windows no thread then waits for another at every
    operation, so a core that another process keeps busy slows its own worker only (2048x2048 in
    400x400 windows beside one busy process on 2 cores: 5.1 Mpx/s with two workers, 3.7 with one
    thread, 0.8 with two threads; idle 7.1 against 7.3 with two threads).
    """
    if workers <= 1:
        for chunk in chunks:
            started = time.perf_counter()
            result = run(chunk)
            threads.report(time.perf_counter() - started)
            yield chunk, result
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    pool = ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,))
    try:
        pending = collections.deque()
        queue = iter(chunks)
        for chunk in itertools.islice(queue, workers + 1):  # a window ahead of the workers, no more
            pending.append((chunk, pool.submit(run, chunk)))
        while pending:
            chunk, future = pending.popleft()
            result = future.result()
            for more in itertools.islice(queue, 1):
                pending.append((more, pool.submit(run, more)))
            yield chunk, result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(before)
