"""int8 prediction beside float32 and the default precision, in one run on this CPU.

For each photon level, trains the demo's denoising model (the shipped confocal stack, its training
rows) for ``--budget`` seconds with every default, which ends by making and checking its int8
copy on the validation patches (:mod:`carekit.quantize`). Then restores the demo's test region
(never trained on) in float32, int8, ``auto`` and bfloat16 where the CPU computes it natively, and reports the PSNR of
each and int8's gap to float32 (the target: within 0.05 dB), and prediction Mpx/s of a 2048x2048
image in each precision (fastest of ``--repeats`` calls after a warm-up), each in a fresh
model. Results: ``benchmarks/results/int8-<name>.json``.

    python benchmarks/int8.py --name zen4
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import carekit
from carekit import demo
from carekit.hardware import this_cpu

RESULTS = Path(__file__).resolve().parent / "results"
PRECISIONS = ("float32", "auto", "int8")  # and bfloat16 where the CPU computes it natively


def throughput(folder: Path, precision: str, repeats: int) -> dict:
    image = np.random.default_rng(0).gamma(2.0, 100.0, (2048, 2048)).astype(np.float32)
    model = carekit.load(folder)
    model.predict(image[:512, :512], "YX", precision=precision)
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict(image, "YX", precision=precision)
        best = min(best, time.perf_counter() - start)
    return {"mpx_s": image.size / best / 1e6, "engine": model._engine.describe(), "reason": model._engine.reason}


def precisions() -> tuple[str, ...]:
    return (*PRECISIONS, "bfloat16") if this_cpu().native_bf16() else PRECISIONS


def run(photons: float, budget: float, repeats: int, work: Path) -> dict:
    truth, noisy = demo.make_data(photons=photons)
    folder = work / f"model-{photons:g}"
    carekit.train(noisy[:, demo.TRAIN_ROWS], truth[:, demo.TRAIN_ROWS], "SYX", folder, time_budget=budget,
                  epochs=10_000, steps_per_epoch=50, progress=False)  # fmt: skip
    test = (demo.TEST_SLICES, demo.TEST_ROWS)
    psnr = {}
    for p in precisions():
        restored = carekit.load(folder).predict(noisy[test], "SYX", precision=p)
        psnr[p] = demo.scores(restored, truth[test])["psnr"]
    speed = {p: throughput(folder, p, repeats) for p in precisions()}
    result = {"photons": photons, "check": carekit.load(folder).config.int8, "test_psnr": psnr,
              "int8_gap_db": psnr["float32"] - psnr["int8"], "predict_2048": speed}  # fmt: skip
    print(json.dumps(result, indent=1), flush=True)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photons", default="10,100")
    p.add_argument("--budget", type=float, default=60.0, help="training seconds per model")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--name", default="int8")
    a = p.parse_args()
    cpu = this_cpu()
    flags = sorted(f for f in cpu.flags if f.startswith(("avx", "amx")))
    header = {"cpu": cpu.model, "flags": flags, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "python": platform.python_version()}  # fmt: skip
    with tempfile.TemporaryDirectory() as work:
        rows = [run(float(x), a.budget, a.repeats, Path(work)) for x in a.photons.split(",")]
    out = RESULTS / f"int8-{a.name}.json"
    out.write_text(json.dumps({**header, "budget_s": a.budget, "results": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
