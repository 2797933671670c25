"""Peak memory and time of out-of-core restoration of a 2 GB OME-Zarr volume.

    python benchmarks/large_zarr.py                         # 128x2048x2048 float32 (2 GiB), in /tmp
    python benchmarks/large_zarr.py --shape 32,512,512      # quick check

Writes a synthetic OME-Zarr volume chunk by chunk (tubular structures plus Gaussian
noise), builds a tiny 3D CARE model (untrained: depth 1, 8 first features, kernel 3;
memory and time do not depend on the weights) and restores the volume with
:func:`carekit.chunked.restore_chunked` in a child process, which reports its peak
resident memory (VmHWM) and wall time. Big files stay under ``--workdir``; results go
to ``benchmarks/results/large_zarr.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from isotropic_memory import peak_rss_gb

RESULTS = Path(__file__).parent / "results"


def folder_gb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**30


def write_volume(path: Path, shape: tuple[int, ...], chunks: tuple[int, ...]) -> None:
    """A synthetic ZYX volume, one chunk in memory at a time."""
    from carekit.omezarr import create_image, write_multiscales

    out = create_image(path, shape, chunks)
    for i, corner in enumerate(itertools.product(*(range(0, s, c) for s, c in zip(shape, chunks, strict=True)))):
        box = tuple(slice(a, min(a + c, s)) for a, c, s in zip(corner, chunks, shape, strict=True))
        z, y, x = np.ogrid[box]
        waves = np.sin(0.05 * x + 2 * np.sin(0.01 * y)) * np.cos(0.03 * y + np.sin(0.02 * x)) * np.cos(0.07 * z)
        signal = 400 * np.maximum(waves, 0).astype(np.float32) ** 4
        noise = np.random.default_rng(i).normal(0, 20, signal.shape).astype(np.float32)
        out[box] = 100 + signal + noise
    write_multiscales(path, "ZYX", {"Z": 1.0, "Y": 0.2, "X": 0.2})


def child(work: Path, memory: int | None) -> None:
    """Restore ``work/input.zarr`` and print the measurements as JSON."""
    from carekit.chunked import restore_chunked

    finished: list[float] = []
    start = time.monotonic()
    restore_chunked(work / "model", work / "input.zarr", work / "restored.zarr", memory=memory, overwrite=True,
                    on_block=lambda block: finished.append(time.monotonic() - start))  # fmt: skip
    seconds = time.monotonic() - start
    print(json.dumps({"seconds": seconds, "first_block_seconds": finished[0], "blocks": len(finished),
                      "peak_rss_gb": peak_rss_gb()}))  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="128,2048,2048", help="Z,Y,X of the volume")
    ap.add_argument("--workdir", default="/tmp/carekit-large-zarr", help="where the big files go")
    ap.add_argument("--memory", type=float, metavar="GB", help="block memory budget (default: carekit's)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    work = Path(a.workdir)
    memory = int(a.memory * 2**30) if a.memory else None
    if a.child:
        return child(work, memory)

    import torch

    from carekit.chunked import BLOCK_MEMORY
    from carekit.config import Config, NetConfig
    from carekit.engine import choose_engine
    from carekit.model import CARE

    shape = tuple(int(v) for v in a.shape.split(","))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    start = time.monotonic()
    write_volume(work / "input.zarr", shape, (32, 256, 256))
    write_seconds = time.monotonic() - start
    torch.manual_seed(0)
    model = CARE(Config(axes="ZYX", net=NetConfig(depth=1, n_first=8, kernel_size=3)))
    model.save(work / "model")
    cmd = [sys.executable, __file__, "--child", "--workdir", str(work)] + (
        ["--memory", str(a.memory)] if a.memory else []
    )
    run = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    measured = json.loads(run.stdout.strip().splitlines()[-1])
    restored = work / "restored.zarr"
    result = {
        "shape": list(shape),
        "input_gb_uncompressed": int(np.prod(shape)) * 4 / 2**30,
        "input_gb_on_disk": round(folder_gb(work / "input.zarr"), 3),
        "output_gb_on_disk": round(folder_gb(restored), 3),
        "model": f"untrained: {model.summary()}",
        "precision": choose_engine("auto", model.config.train.precision).describe(),
        "block_memory_gb": (memory or BLOCK_MEMORY) / 2**30,
        "blocks": measured["blocks"],
        "peak_rss_gb": round(measured["peak_rss_gb"], 3),
        "peak_rss_gb_children": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20, 3),
        "seconds": round(measured["seconds"], 1),
        "seconds_to_first_block": round(measured["first_block_seconds"], 1),
        "write_input_seconds": round(write_seconds, 1),
        "cpus": os.cpu_count(),
        "load_average_after": os.getloadavg(),
    }
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "large_zarr.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
