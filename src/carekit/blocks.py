"""How an out-of-core restoration cuts an array: output chunks, blocks and read windows.

Blocks are whole numbers of output chunks; each reads a window with a halo as wide as the
network's receptive field, and past the array's end the window mirrors as the in-memory
path's padding does, so blocks reproduce :meth:`CARE.predict` on the whole array.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np


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
