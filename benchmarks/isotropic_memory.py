"""Peak memory and time of isotropic prediction on a large stack.

    python benchmarks/isotropic_memory.py                     # 100x1024x1024 float32, factor 4
    python benchmarks/isotropic_memory.py --shape 20,256,256  # quick check

An isotropic model (untrained weights: memory and time do not depend on them) restores a
random float32 stack; the script reports the peak resident memory of the process (VmHWM),
the input and output sizes and the wall time. Writes ``benchmarks/results/isotropic_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from carekit.config import Config
from carekit.modes.isotropic import AxialConfig, IsotropicCARE

RESULTS = Path(__file__).parent / "results"


def peak_rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="100,1024,1024", help="Z,Y,X of the input stack")
    ap.add_argument("--factor", type=float, default=4.0)
    ap.add_argument("--kernel-size", type=int, default=None, help="2D network kernel (default: carekit's)")
    a = ap.parse_args(argv)
    shape = tuple(int(v) for v in a.shape.split(","))
    net = {"kernel_size": a.kernel_size} if a.kernel_size else {}
    config = Config(axes="ZYX", mode="isotropic", spatial="YX", net=net, axial=AxialConfig(factor=a.factor))
    model = IsotropicCARE(config)
    stack = np.random.default_rng(0).random(shape, dtype=np.float32)
    before = peak_rss_gb()
    start = time.monotonic()
    out = model.predict(stack, "ZYX", progress=True)
    seconds = time.monotonic() - start
    result = {
        "input_shape": list(shape),
        "output_shape": list(out.shape),
        "factor": a.factor,
        "kernel_size": config.net.kernel_size,
        "input_gb": stack.nbytes / 2**30,
        "output_gb": out.nbytes / 2**30,
        "peak_rss_gb_before_predict": before,
        "peak_rss_gb": peak_rss_gb(),
        "seconds": round(seconds, 1),
    }
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "isotropic_memory.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
