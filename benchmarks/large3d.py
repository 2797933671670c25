"""Restoring a large 3D volume with the default 3D network: time and peak memory.

    python benchmarks/large3d.py                      # 100x1024x1024 float32 (about 3-4 minutes)
    python benchmarks/large3d.py --shape 16,256,256   # quick check

A denoising model with the default 3D network (untrained weights: time and memory do not
depend on them) restores a random float32 volume held in memory, in the default precision
and tiling. Reports wall time, Mvox/s and the peak resident memory of the process (VmHWM),
on a GPU also its peak allocated memory; writes ``benchmarks/results/large3d.json``
(``large3d-cuda.json`` on a GPU). The CARE paper restored such a volume in under
20 s on one Titan X GPU.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from isotropic_memory import peak_rss_gb

from carekit.config import Config
from carekit.engine import choose_engine
from carekit.model import CARE

RESULTS = Path(__file__).parent / "results"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="100,1024,1024", help="Z,Y,X of the volume")
    ap.add_argument("--memory", type=float, default=None, help="tile memory budget in GiB (default: carekit's)")
    a = ap.parse_args(argv)
    shape = tuple(int(v) for v in a.shape.split(","))
    torch.manual_seed(0)
    model = CARE(Config(axes="ZYX"))
    engine = choose_engine()
    volume = np.random.default_rng(0).gamma(2, 100, shape).astype(np.float32)
    start = time.perf_counter()
    restored = model.predict(volume, "ZYX", memory=int(a.memory * 2**30) if a.memory else None)
    seconds = time.perf_counter() - start
    assert restored.shape == volume.shape and np.isfinite(restored).all()
    result = {
        "shape": list(shape),
        "engine": engine.describe(),
        "threads": torch.get_num_threads(),
        "seconds": round(seconds, 1),
        "mvox_s": round(volume.size / seconds / 1e6, 3),
        "peak_rss_gb": round(peak_rss_gb(), 2),
        "input_gb": round(volume.nbytes / 2**30, 2),
        "memory_budget_gib": a.memory,
    }
    if engine.device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name()
        result["gpu_peak_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(json.dumps(result))
    RESULTS.mkdir(exist_ok=True)
    name = "large3d.json" if shape == (100, 1024, 1024) else "large3d-quick.json"
    if a.memory:
        name = name.replace(".json", f"-{a.memory:g}gib.json")
    if engine.device.type == "cuda":
        name = name.replace(".json", "-cuda.json")
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
