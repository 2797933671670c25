"""Surface projection + denoising on synthetic curved cell layers, against classical pipelines.

    python benchmarks/projection.py                     # 10 minutes of training
    python benchmarks/projection.py --train-seconds 60 --peak 5

Stacks hold one smooth curved surface with a Voronoi membrane texture and haze above
and below, imaged at ``--peak`` photons with read noise. Four rows are scored against
the exact 2D ground truth (paper procedure, mean over held-out stacks): maximum
projection, classical surface projection, classical projection + NLM (parameters tuned
against the ground truth), and the CARE projection network. Writes
``benchmarks/results/projection.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from carekit.baselines import tuned_nlm
from carekit.data.camera import poisson_gaussian, to_photons
from carekit.data.surfaces import surface_projection, surface_stack
from carekit.metrics import evaluate
from carekit.modes.projection import train_projection

RESULTS = Path(__file__).parent / "results"
SHAPE = (24, 128, 128)


def make_set(n: int, seed: int, peak: float) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    stacks, truths = [], []
    for _ in range(n):
        stack, truth, _ = surface_stack(SHAPE, rng)
        stacks.append(poisson_gaussian(to_photons(stack, peak), rng, read_sigma=1.0))
        truths.append(truth)
    return stacks, truths


def mean_scores(images: list[np.ndarray], truths: list[np.ndarray]) -> dict[str, float]:
    scores = [evaluate(i, t) for i, t in zip(images, truths, strict=True)]
    return {k: float(np.mean([s[k] for s in scores])) for k in scores[0]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-seconds", type=float, default=600.0)
    ap.add_argument("--peak", type=float, default=5.0, help="photons at the brightest membranes")
    ap.add_argument("--train-stacks", type=int, default=12)
    ap.add_argument("--test-stacks", type=int, default=4)
    a = ap.parse_args(argv)
    train_x, train_y = make_set(a.train_stacks, 0, a.peak)
    test_x, test_y = make_set(a.test_stacks, 1000, a.peak)
    with tempfile.TemporaryDirectory() as d:
        start = time.monotonic()
        model = train_projection(train_x, train_y, "ZYX", Path(d) / "m", time_budget=a.train_seconds, epochs=100_000,
                                 steps_per_epoch=50, progress=False)  # fmt: skip
        trained = time.monotonic() - start
        care = [model.predict(x, "ZYX") for x in test_x]
    classical = [surface_projection(x)[0] for x in test_x]
    denoised = tuned_nlm(np.stack(classical), np.stack(test_y))[0]
    rows = {
        "max projection": mean_scores([x.max(axis=0) for x in test_x], test_y),
        "classical projection": mean_scores(classical, test_y),
        "classical + NLM (tuned)": mean_scores(list(denoised), test_y),
        "CARE projection": mean_scores(care, test_y),
    }
    print(f"{a.train_stacks} training stacks {SHAPE} at {a.peak:g} photons; trained {trained:.0f} s")
    print(f"{'':26s}{'PSNR':>8s}{'SSIM':>8s}{'NRMSE':>9s}")
    for name, r in rows.items():
        print(f"{name:26s}{r['psnr']:8.2f}{r['ssim']:8.3f}{r['nrmse']:9.4f}")
    best_classical = max(rows["max projection"]["psnr"], rows["classical + NLM (tuned)"]["psnr"])
    print(f"CARE margin over the best classical row: {rows['CARE projection']['psnr'] - best_classical:.2f} dB")
    RESULTS.mkdir(exist_ok=True)
    payload = {"peak": a.peak, "shape": SHAPE, "train_seconds": round(trained, 1), "results": rows}
    (RESULTS / "projection.json").write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
