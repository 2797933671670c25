"""Surface projection on stacks from another generator: CARE at a 90 s budget against the best classical.

    python benchmarks/transfer/projection.py                       # 90 s, seeds 0 and 1
    python benchmarks/transfer/projection.py --precision float32

Stacks and their 2D truths come from ``surfaces.py`` in this folder (height maps, textures,
thickness and distractors drawn by algorithms carekit's generator does not use). The projection
mode trains on ``--train-stacks`` of them for ``--train-seconds`` of wall-clock time (its
defaults otherwise; the machine's CPU lock held exclusively) and restores held-out stacks. The
classical rows are picked per test image with its truth (an upper bound for them): maximum and
mean projections and ``surface_projection`` over a grid of its parameters, each followed by a
Gaussian filter of the best width. Prints the margin per seed (mean over the test stacks, worst
stack) and the worst seed; writes ``benchmarks/results/transfer-projection-<label>.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path

import numpy as np
import surfaces
from common import budget, cpu_name, summary, timed_training, write
from scipy.ndimage import gaussian_filter

from carekit.data.surfaces import surface_projection
from carekit.metrics import evaluate
from carekit.model import CARE

SHAPE = (20, 128, 128)
SMOOTHING = (0.0, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
SURFACE_GRID = {"sigma": (1.0, 2.0, 4.0), "smooth": (3.0, 6.0, 12.0), "band": (0, 1, 2),
                "measure": ("intensity", "variance")}  # fmt: skip


def best_classical(stack: np.ndarray, truth: np.ndarray) -> dict:
    """The best of the classical projections (each Gaussian-smoothed at its best width) against ``truth``."""
    candidates = {"max": stack.max(axis=0), "mean": stack.mean(axis=0)}
    for values in itertools.product(*SURFACE_GRID.values()):
        params = dict(zip(SURFACE_GRID, values, strict=True))
        candidates["surface " + json.dumps(params)] = surface_projection(stack, **params)[0]
    best = {"psnr": -np.inf}
    for name, image in candidates.items():
        for s in SMOOTHING:
            psnr = evaluate(gaussian_filter(image, s) if s else image, truth)["psnr"]
            if psnr > best["psnr"]:
                best = {"psnr": psnr, "method": name, "smoothing": s}
    return best


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-seconds", type=float, default=90.0)
    ap.add_argument("--steps", type=int, default=None, help="train this many steps instead (untimed, shared lock)")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--train-stacks", type=int, default=12)
    ap.add_argument("--test-stacks", type=int, default=4)
    ap.add_argument("--peak", type=float, default=8.0, help="photons at the layer's brightest texture")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="a training setting")
    ap.add_argument("--label", default=None)
    a = ap.parse_args(argv)
    settings = {k: json.loads(v) for k, v in (s.split("=", 1) for s in a.set)}
    test_x, test_y = surfaces.data_set(a.test_stacks, SHAPE, 1000, a.peak)
    classical = [best_classical(x, y) for x, y in zip(test_x, test_y, strict=True)]
    for c in classical:
        print(f"best classical: {c['psnr']:.2f} dB ({c['method']}, smoothing {c['smoothing']})", flush=True)
    margins, runs = {}, {}
    for seed in (int(s) for s in a.seeds.split(",")):
        train_x, train_y = surfaces.data_set(a.train_stacks, SHAPE, seed, a.peak)
        with tempfile.TemporaryDirectory() as d:
            data = Path(d) / "pairs.npz"
            np.savez(data, **{f"stack{i:03d}": x for i, x in enumerate(train_x)},
                     **{f"truth{i:03d}": y for i, y in enumerate(train_y)})  # fmt: skip
            options = {**budget(a.train_seconds, a.steps), "seed": seed, "precision": a.precision, **settings}
            spec = {"mode": "projection", "data": str(data), "settings": options}
            run = timed_training(spec, Path(d) / "m", exclusive=not a.steps)
            model = CARE.load(Path(d) / "m")
            care = [evaluate(model.predict(x, "ZYX"), y)["psnr"] for x, y in zip(test_x, test_y, strict=True)]
        margins[f"seed {seed}"] = [p - c["psnr"] for p, c in zip(care, classical, strict=True)]
        runs[f"seed {seed}"] = {**run, "care_psnr": care}
        m = margins[f"seed {seed}"]
        print(f"seed {seed}: {run['steps']} steps in {run['wall_s']} s ({run['precision']}); CARE {np.mean(care):.2f} "
              f"dB, best classical {np.mean([c['psnr'] for c in classical]):.2f}; margin {np.mean(m):+.2f} "
              f"(worst stack {np.min(m):+.2f})", flush=True)  # fmt: skip
    result = summary(margins)
    print(f"worst seed: {result['worst_mean']:+.2f} dB over the best classical projection picked with the truth")
    label = a.label or ("float32" if a.precision == "float32" else "default")
    payload = {"cpu": cpu_name(), "train_seconds": a.train_seconds, "shape": SHAPE, "peak": a.peak,
               "settings": settings, "classical": classical, "runs": runs, "margins": margins,
               "result": result}  # fmt: skip
    print(write(f"transfer-projection-{label}", payload))


if __name__ == "__main__":
    main()
