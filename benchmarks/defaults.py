"""Which network and patch defaults restore best at the demo's training time.

    python benchmarks/defaults.py                       # every variant, seeds 0 and 1 (~25 min)
    python benchmarks/defaults.py --variants paper,default --seeds 0
    python benchmarks/defaults.py --photons 100 --variants default,default-residual,default-mse --seeds 0
    python benchmarks/defaults.py --variants default,default-depth3 --name defaults-depth3

Each variant trains for ``--seconds`` (120, as ``carekit demo``) on the demo data and restores
the demo's test region; one JSON line per run (PSNR, with 8-fold test-time augmentation too),
and ``benchmarks/results/defaults.json`` with every run and the mean per variant. Settings
are given in full, so the table does not move when carekit's defaults do.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from carekit import demo
from carekit.train import train

RESULTS = Path(__file__).parent / "results"
PAPER = {"kernel_size": 5, "batch_norm": False, "residual": True}
FAST = {"kernel_size": 3, "batch_norm": True, "residual": False}
VARIANTS = {
    "paper": {**PAPER, "patch_size": (64, 64), "batch_size": 16},
    "paper-p96": {**PAPER, "patch_size": (96, 96), "batch_size": 8},
    "k3-bn": {**FAST, "patch_size": (64, 64), "batch_size": 16},
    "default": {**FAST, "patch_size": (96, 96), "batch_size": 8},
    "default-cosine": {**FAST, "patch_size": (96, 96), "batch_size": 8, "lr_schedule": "cosine"},
    "default-residual": {**FAST, "residual": True, "patch_size": (96, 96), "batch_size": 8},
    "default-mse": {**FAST, "patch_size": (96, 96), "batch_size": 8, "loss": "mse"},
    "default-depth3": {**FAST, "depth": 3, "patch_size": (96, 96), "batch_size": 8},
}


def run(name: str, seed: int, seconds: float, photons: float) -> dict:
    truth, noisy = demo.make_data(photons=photons)
    test = (demo.TEST_SLICES, demo.TEST_ROWS)
    with tempfile.TemporaryDirectory() as d:
        model = train(noisy[:, demo.TRAIN_ROWS], truth[:, demo.TRAIN_ROWS], "SYX", Path(d) / "m",
                      time_budget=seconds, progress=False, epochs=10_000, steps_per_epoch=50, seed=seed,
                      **VARIANTS[name])  # fmt: skip
        psnr = demo.scores(model.predict(noisy[test], "SYX"), truth[test])["psnr"]
        tta = demo.scores(model.predict(noisy[test], "SYX", tta=True), truth[test])["psnr"]
    return {"variant": name, "seed": seed, "photons": photons, "psnr": round(psnr, 3), "psnr_tta": round(tta, 3)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--seeds", default="0,1", help="comma list of training seeds")
    ap.add_argument("--seconds", type=float, default=demo.TIME_BUDGET)
    ap.add_argument("--photons", type=float, default=demo.PEAK_PHOTONS, help="peak photons of the noisy input")
    ap.add_argument("--name", default="defaults", help="results file name (default defaults[-<photons>photons])")
    a = ap.parse_args(argv)
    runs = []
    for name in a.variants.split(","):
        for seed in (int(s) for s in a.seeds.split(",")):
            start = time.monotonic()
            runs.append({**run(name, seed, a.seconds, a.photons), "wall_s": round(time.monotonic() - start, 1)})
            print(json.dumps(runs[-1]), flush=True)
    means = {
        name: round(float(np.mean([r["psnr"] for r in runs if r["variant"] == name])), 3)
        for name in dict.fromkeys(r["variant"] for r in runs)
    }
    print("mean PSNR per variant: " + ", ".join(f"{k} {v:.2f} dB" for k, v in means.items()))
    RESULTS.mkdir(exist_ok=True)
    payload = {"seconds": a.seconds, "photons": a.photons, "variants": {k: VARIANTS[k] for k in means}, "runs": runs}
    payload["mean_psnr"] = means
    suffix = "" if a.photons == demo.PEAK_PHOTONS else f"-{a.photons:g}photons"
    (RESULTS / f"{a.name}{suffix}.json").write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
