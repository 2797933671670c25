"""Can the predicted uncertainty be trusted? Coverage before/after calibration, on held-out data.

    python benchmarks/uncertainty.py                    # 2 minutes per network, 9 networks
    python benchmarks/uncertainty.py --train-seconds 60
    python benchmarks/uncertainty.py --steps 300         # an equal step budget, immune to machine load

Denoising demo data (the shipped confocal stack at 10 photons): every network trains on
rows 0-127 of the 40 slices; rows 128-191 of slices 0-19 calibrate, rows 128-191 of
slices 20-39 test. Rows: a plain model, a probabilistic model (same budget), and an
ensemble of 5 probabilistic members: PSNR of the mean, coverage of central intervals on
the test region before and after calibration. A synthetic case (widefield tubules from a
recipe) repeats the probabilistic row with freshly generated calibration and test images.
Writes ``benchmarks/results/uncertainty.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

import carekit
from carekit import demo
from carekit.ensemble import calibrate, raw_distribution, train_ensemble
from carekit.synthetic import generate_pairs, parse_recipe, train_synthetic
from carekit.uncertainty import coverage

RESULTS = Path(__file__).parent / "results"
LEVELS = (0.5, 0.8, 0.9, 0.95)
RECIPE = {
    "shape": [128, 128],
    "pairs": 200,
    "seed": 0,
    "channels": [[{"type": "tubules", "density": 0.02, "length": 100, "width": 0.4}]],
    "imaging": {"na": 1.3, "wavelength": 520, "pixel_size": 60, "photons": 60, "background": 0.1, "read_noise": 2},
}


def held_out_coverage(model, images, truths, axes) -> dict[str, dict]:
    """Coverage on test data with the model's stored calibration and without it."""
    out = {}
    for label in ("before", "after"):
        values = []
        for image, truth in zip(images, truths, strict=True):
            values.append(raw_distribution(model, image, axes).cdf(np.asarray(truth, np.float64)).ravel())
        table = None if label == "before" else np.asarray(model_calibration(model)["pit"])
        out[label] = coverage(np.concatenate(values), LEVELS, table)
    return out


def model_calibration(model) -> dict:
    return model.calibration if hasattr(model, "members") else model.config.calibration


def psnr(model, images, truths, axes) -> float:
    """Mean PSNR by the paper's procedure, per 2D image (per slice of a stack)."""

    def one(image, truth):
        restored = model.predict(image, axes)
        return demo.scores(restored, truth)["psnr"] if truth.ndim == 3 else carekit.evaluate(restored, truth)["psnr"]

    return float(np.mean([one(i, t) for i, t in zip(images, truths, strict=True)]))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-seconds", type=float, default=120.0)
    ap.add_argument("--steps", type=int, help="train every network for this many steps instead of a time budget")
    a = ap.parse_args(argv)
    truth, noisy = demo.make_data()
    train_x, train_y = noisy[:, demo.TRAIN_ROWS], truth[:, demo.TRAIN_ROWS]
    calib = ([noisy[:20, demo.TEST_ROWS]], [truth[:20, demo.TEST_ROWS]])
    test = ([noisy[20:, demo.TEST_ROWS]], [truth[20:, demo.TEST_ROWS]])
    if a.steps:
        budget = {"epochs": -(-a.steps // 50), "time_budget": None}
    else:
        budget = {"epochs": 100_000, "time_budget": a.train_seconds}
    settings = {"steps_per_epoch": 50, "progress": False, **budget}
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as d:
        plain = carekit.train(train_x, train_y, "SYX", Path(d) / "plain", **settings)
        rows["plain"] = {"psnr": psnr(plain, *test, "SYX")}
        prob = carekit.train(train_x, train_y, "SYX", Path(d) / "prob", probabilistic=True, **settings)
        calibrate(prob, *calib, "SYX")
        rows["probabilistic"] = {"psnr": psnr(prob, *test, "SYX"), **held_out_coverage(prob, *test, "SYX")}

        def member(model_dir, **kw):
            options = {**settings, **kw, "time_budget": budget["time_budget"]}
            return carekit.train(train_x, train_y, "SYX", model_dir, probabilistic=True, **options)

        ensemble = train_ensemble(member, 5, Path(d) / "ensemble")
        calibrate(ensemble, *calib, "SYX")
        rows["ensemble of 5"] = {"psnr": psnr(ensemble, *test, "SYX"), **held_out_coverage(ensemble, *test, "SYX")}
        rows["ensemble member 0"] = {"psnr": psnr(ensemble.members[0], *test, "SYX")}

        recipe = parse_recipe(RECIPE)
        synthetic = train_synthetic(recipe, Path(d) / "synthetic", probabilistic=True, **settings)
        calib_pairs = generate_pairs(recipe, 8, seed=1001)
        test_pairs = generate_pairs(recipe, 8, seed=2002)
        calibrate(synthetic, [p.low[0] for p in calib_pairs], [p.high[0] for p in calib_pairs], "YX")
        syn_test = ([p.low[0] for p in test_pairs], [p.high[0] for p in test_pairs])
        rows["synthetic, probabilistic"] = {"psnr": psnr(synthetic, *syn_test, "YX"),
                                            **held_out_coverage(synthetic, *syn_test, "YX")}  # fmt: skip
    print(f"{'':28s}{'PSNR':>8s}  " + "  ".join(f"{int(p * 100)}% before/after" for p in LEVELS))
    for name, r in rows.items():
        cells = "  ".join(
            f"{100 * r['before'][p]:6.1f} /{100 * r['after'][p]:5.1f}" if "before" in r else " " * 14 for p in LEVELS
        )
        print(f"{name:28s}{r['psnr']:8.2f}  {cells}")
    gap = rows["probabilistic"]["psnr"] - rows["plain"]["psnr"]
    gain = rows["ensemble of 5"]["psnr"] - rows["ensemble member 0"]["psnr"]
    print(f"probabilistic - plain: {gap:+.2f} dB; ensemble - member: {gain:+.2f} dB")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "uncertainty.json").write_text(
        json.dumps({"budget": {"steps": a.steps} if a.steps else {"seconds": a.train_seconds}, "rows": rows}, indent=2)
        + "\n"
    )


if __name__ == "__main__":
    main()
