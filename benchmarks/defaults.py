"""Which network and patch defaults restore best at the demo's training time.

    python benchmarks/defaults.py                       # every variant, seeds 0 and 1 (~25 min)
    python benchmarks/defaults.py --variants paper,default --seeds 0
    python benchmarks/defaults.py --photons 100 --variants default,default-residual,default-mse --seeds 0
    python benchmarks/defaults.py --variants default,default-depth3 --name defaults-depth3
    python benchmarks/defaults.py --variants jittered,fixed,fixed-ema --name defaults-normalisation

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
from carekit.modes.denoise import train

RESULTS = Path(__file__).parent / "results"
# training settings given in full: percentile jitter, no weight average (the defaults)
TRAINING = {"intensity_jitter": True, "ema": 0.0}
PAPER = {"kernel_size": 5, "batch_norm": False, "residual": True, **TRAINING}
FAST = {"kernel_size": 3, "batch_norm": True, "residual": False, **TRAINING}
CHOSEN = {**FAST, "residual": None}
VARIANTS = {
    "paper": {**PAPER, "patch_size": (64, 64), "batch_size": 16},
    "paper-p96": {**PAPER, "patch_size": (96, 96), "batch_size": 8},
    "k3-bn": {**FAST, "patch_size": (64, 64), "batch_size": 16},
    # the residual chosen from the data (off at 10 photons, on at 100) with jittered percentiles,
    # fixed ones, fixed ones and a weight average, and the jitter chosen with the residual
    # (carekit's defaults)
    "jittered": {**CHOSEN, "patch_size": (96, 96), "batch_size": 8},
    "fixed": {**CHOSEN, "patch_size": (96, 96), "batch_size": 8, "intensity_jitter": False},
    "fixed-ema": {**CHOSEN, "patch_size": (96, 96), "batch_size": 8, "intensity_jitter": False, "ema": 0.99},
    "chosen": {**CHOSEN, "patch_size": (96, 96), "batch_size": 8, "intensity_jitter": None},
    "default": {**FAST, "patch_size": (96, 96), "batch_size": 8},
    # "default-*": the default at 10 photons (residual off) with one change
    "default-cosine": {**FAST, "patch_size": (96, 96), "batch_size": 8, "lr_schedule": "cosine"},
    "default-residual": {**FAST, "residual": True, "patch_size": (96, 96), "batch_size": 8},
    "default-mse": {**FAST, "patch_size": (96, 96), "batch_size": 8, "loss": "mse"},
    "default-depth3": {**FAST, "depth": 3, "patch_size": (96, 96), "batch_size": 8},
    "default-depth3-f24": {**FAST, "depth": 3, "n_first": 24, "patch_size": (96, 96), "batch_size": 8},
    "default-depth4": {**FAST, "depth": 4, "patch_size": (96, 96), "batch_size": 8},
    "default-k5": {**FAST, "kernel_size": 5, "patch_size": (96, 96), "batch_size": 8},
    "default-nconv3": {**FAST, "n_conv": 3, "patch_size": (96, 96), "batch_size": 8},
    "default-lr1e-4": {**FAST, "learning_rate": 1e-4, "patch_size": (96, 96), "batch_size": 8},
    "default-ema": {**FAST, "ema": 0.99, "patch_size": (96, 96), "batch_size": 8},
    "default-ema995": {**FAST, "ema": 0.995, "patch_size": (96, 96), "batch_size": 8},
    "default-everywhere": {**FAST, "background_threshold": 0.0, "patch_size": (96, 96), "batch_size": 8},
    "default-noval": {**FAST, "validation_fraction": 0.0, "patch_size": (96, 96), "batch_size": 8},
    "fixed-f48": {**FAST, "intensity_jitter": False, "n_first": 48, "patch_size": (96, 96), "batch_size": 8},
    "fixed-lr8e-4": {**FAST, "intensity_jitter": False, "learning_rate": 8e-4, "patch_size": (96, 96), "batch_size": 8},
    "fixed-ema-lr8e-4": {**FAST, "intensity_jitter": False, "ema": 0.99, "learning_rate": 8e-4, "patch_size": (96, 96),
                         "batch_size": 8},
    "fixed-ema-lr1.6e-3": {**FAST, "intensity_jitter": False, "ema": 0.99, "learning_rate": 1.6e-3,
                           "patch_size": (96, 96), "batch_size": 8},
    # levers where the residual is on (100 photons): no batch norm, CAREamics' batch shape, MSE
    "residual-nobn": {**FAST, "residual": True, "batch_norm": False, "patch_size": (96, 96), "batch_size": 8},
    "residual-p64": {**FAST, "residual": True, "patch_size": (64, 64), "batch_size": 16},
    "residual-mse": {**FAST, "residual": True, "loss": "mse", "patch_size": (96, 96), "batch_size": 8},
    # carekit's defaults with fewer, larger patches (about the same pixels per step)
    "chosen-p128": {**CHOSEN, "patch_size": (128, 128), "batch_size": 5, "intensity_jitter": None},
    "chosen-p112": {**CHOSEN, "patch_size": (112, 112), "batch_size": 6, "intensity_jitter": None},
    # levers on top of the residual without batch norm (100 photons)
    "residual-nobn-cosine": {**FAST, "residual": True, "batch_norm": False, "lr_schedule": "cosine",
                             "patch_size": (96, 96), "batch_size": 8},
    "residual-nobn-lr8e-4": {**FAST, "residual": True, "batch_norm": False, "learning_rate": 8e-4,
                             "patch_size": (96, 96), "batch_size": 8},
    "residual-nobn-f48": {**FAST, "residual": True, "batch_norm": False, "n_first": 48, "patch_size": (96, 96),
                          "batch_size": 8},
    "residual-nobn-f48-lr8e-4": {**FAST, "residual": True, "batch_norm": False, "n_first": 48, "learning_rate": 8e-4,
                                 "patch_size": (96, 96), "batch_size": 8},
}  # fmt: skip


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
