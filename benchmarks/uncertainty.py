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
Writes ``benchmarks/results/uncertainty.json`` and ``uncertainty.png`` (a test slice: input,
ensemble mean, truth, absolute error, calibrated 90 % interval width and disagreement D, plus
the same slice with a patch of thin lines the networks never saw, and the reliability diagram).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

import carekit
from carekit import demo
from carekit.data.recipes import generate_pairs, parse_recipe
from carekit.ensemble import calibrate, raw_distribution, train_ensemble
from carekit.modes.synthetic import train_synthetic
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


def ood_box(shape: tuple[int, int]) -> tuple[slice, slice]:
    h, w = shape
    return slice(h // 4, 3 * h // 4), slice(w // 3, w // 3 + h // 2)


def ood_patch(truth: np.ndarray, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """``truth`` with a patch of thin parallel lines (structure no training image holds), and its noisy copy."""
    from scipy.ndimage import gaussian_filter

    from carekit.data.camera import poisson_gaussian, to_photons

    out = truth.copy()
    box = ood_box(truth.shape)
    lines = np.zeros_like(out[box])
    lines[:, ::5] = 1.0
    out[box] = gaussian_filter(lines, 0.7) / gaussian_filter(lines, 0.7).max() * np.percentile(truth, 99.8)
    noisy = poisson_gaussian(
        to_photons(out, demo.PEAK_PHOTONS), np.random.default_rng(seed), read_sigma=demo.READ_NOISE
    )
    return out, noisy


def trust_figure(ensemble, image: np.ndarray, truth: np.ndarray, report: dict, path: Path) -> dict:
    """Restoration, error, interval width and D on a test slice and on its out-of-distribution copy.

    Returns the mean D inside and outside the patch area, for both rows.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("test slice", image, truth), ("with unseen thin lines", *reversed(ood_patch(truth)))]
    stats = {}
    fig = plt.figure(figsize=(22, 3.4))
    grid = fig.add_gridspec(2, 7, width_ratios=[1] * 6 + [0.45])
    axes = [[fig.add_subplot(grid[r, c]) for c in range(6)] for r in range(2)]
    dists = [ensemble.predict_distribution(x, "YX") for _, x, _ in rows]
    ds = [dist.disagreement() for dist in dists]
    d_max = float(np.percentile(ds[1], 99.8))  # both D panels share one display range
    for r, ((label, x, t), dist, d) in enumerate(zip(rows, dists, ds, strict=True)):
        lower, upper = dist.interval(0.9)
        inside = np.zeros(d.shape, bool)
        inside[ood_box(d.shape)] = True
        d_label = f"D: {d[inside].mean():.3f} in patch area, {d[~inside].mean():.3f} outside"
        stats[label] = {"D in patch area": float(d[inside].mean()), "D outside": float(d[~inside].mean())}
        panels = [("input", x, "magma"), ("ensemble mean", dist.mean, "magma"), ("ground truth", t, "magma"),
                  ("|error|", np.abs(dist.mean - t), "viridis"), ("90 % interval width", upper - lower, "viridis"),
                  (d_label, d, "inferno")]  # fmt: skip
        for ax, (title, img, cmap) in zip(axes[r], panels, strict=True):
            lo, hi = np.percentile(img, (0.5, 99.8))
            ax.imshow(img, cmap=cmap, vmin=lo if cmap == "magma" else 0, vmax=d_max if title.startswith("D") else hi)
            ax.set_title(f"{label}: {title}" if ax is axes[r][0] else title, fontsize=9)
            ax.axis("off")
    ax = fig.add_subplot(grid[:, 6])
    ax.plot([0, 1], [0, 1], ":", color="gray")
    for key in ("before", "after"):
        ax.plot(LEVELS, [report[key][p] for p in LEVELS], "o-", label=f"{key} calibration")
    ax.set_xlabel("nominal coverage", fontsize=8)
    ax.set_ylabel("held-out coverage", fontsize=8)
    ax.set_title("central intervals, ensemble of 5", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return stats


def scorable(recipe, n: int, seed: int) -> list:
    """``n`` pairs of the recipe whose truth is not empty (a recipe's variation leaves a few blank,
    and PSNR against a constant truth is undefined)."""
    pairs = [p for p in generate_pairs(recipe, 2 * n, seed=seed) if np.ptp(p.high[0]) > 0]
    return pairs[:n]


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
        RESULTS.mkdir(exist_ok=True)
        figure = RESULTS / "uncertainty.png"
        rows["ensemble of 5"]["disagreement"] = trust_figure(ensemble, test[0][0][0], test[1][0][0],
                                                             rows["ensemble of 5"], figure)  # fmt: skip

        recipe = parse_recipe(RECIPE)
        synthetic = train_synthetic(recipe, Path(d) / "synthetic", probabilistic=True, **settings)
        calib_pairs, test_pairs = scorable(recipe, 8, seed=1001), scorable(recipe, 8, seed=2002)
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
