"""Do calibrated intervals hold on images the calibration never saw? Per dataset, worst case shown.

    python benchmarks/calibration.py --steps 300                      # 9 datasets x 5/20/100 photons
    python benchmarks/calibration.py --datasets tubules --photons 20 --steps 100
    python benchmarks/calibration.py --members 3 --datasets confocal-nuclei,tubules --photons 20
    python benchmarks/calibration.py --report                         # tables from the stored results
    python benchmarks/calibration.py --choose-weight                  # the held-out weight, leave one dataset out

Datasets: the three real images of the shared sample folder and six structures drawn for
evaluation only (``benchmarks/quality/truths.py``). Each is imaged by one Poisson-Gaussian camera
per dataset and photon level (read noise 2): the training truths' 99.9th percentile maps to
``photons`` and every image of the dataset, training or test, goes through the same gain, as on a
microscope. A probabilistic network (carekit's defaults; ``--members K``: an ensemble) trains on
the training pairs for ``--steps`` optimizer steps (a step budget: results do not depend on
what else the machine does) and predicts each test image, none of which it trained on.

Calibration is then measured leaving one test image out at a time: the calibration is fitted on
the dataset's other test images and applied to the one left out. Reported: coverage of central
50/80/90/95 % intervals over all left-out pixels, the worst left-out image's 90 % coverage, and
the 90 % coverage in each decile of predicted intensity (deciles within each image), for the raw
distributions, the global isotonic calibration, tables conditional on predicted intensity that
are exact on the calibration images (``unwidened``) and carekit's calibration (those tables
widened by the gap they leave on calibration images they were not fitted on). A second table
splits every test image instead: calibrated on the first halves (along y) of all test images and
tested on their second halves, and the other way round. ``--cross`` also applies each dataset's
model, calibrated on all its test images, to the other datasets' test images (restoration and
calibration both out of their domain).

Raw predictions are cached in ``--cache`` (models too), so the tables can be recomputed without
training; results go to ``benchmarks/results/calibration[-NAME].json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent / "quality"))
import truths
from run import cpu_name, read_json, write_json

import carekit
from carekit.calibration import HELD_OUT_WEIGHT, Calibration, Observed, deciles, fit_tables, inside, pit_table
from carekit.calibration import fit as fit_calibration
from carekit.data.camera import poisson_gaussian
from carekit.ensemble import train_ensemble
from carekit.uncertainty import Laplace, Mixture

RESULTS = Path(__file__).parent / "results"
LEVELS = (0.5, 0.8, 0.9, 0.95)
DATASETS = ["confocal-nuclei", "widefield-nuclei", "timelapse-nuclei", "membranes", "tubules", "granules", "nuclei",
            "texture", "points"]  # fmt: skip
METHODS = ("raw", "global", "unwidened", "conditional")


# -- data and predictions ----------------------------------------------------------------------
def camera(ds: truths.Dataset, photons: float, read: float, seed: int) -> tuple[list, list]:
    """Noisy training and test images through one camera: the training truths' 99.9th percentile -> ``photons``."""
    lo = min(float(t.min()) for t in ds.train)
    hi = float(np.percentile(np.concatenate([t.ravel() for t in ds.train]), 99.9))
    gain = photons / (hi - lo)
    rng = np.random.default_rng(seed)

    def shoot(images):
        return [poisson_gaussian(np.clip((t - lo) * gain, 0, None).astype(np.float32), rng, read_sigma=read)
                for t in images]  # fmt: skip

    return shoot(ds.train), shoot(ds.test)


def train(ds: truths.Dataset, low: list, folder: Path, steps: int, members: int, seed: int):
    settings = {"probabilistic": True, "epochs": -(-steps // 50), "steps_per_epoch": 50, "time_budget": None,
                "progress": False, "overwrite": True}  # fmt: skip
    high = [t.astype(np.float32) for t in ds.train]
    if members == 1:
        return carekit.train(low, high, "YX", folder, seed=seed, **settings)

    def member(model_dir, **options):
        return carekit.train(low, high, "YX", model_dir, **{**settings, **options})

    return train_ensemble(member, members, folder, seed=seed, overwrite=True)


def raw(model, image: np.ndarray) -> dict:
    dist = model.predict_distribution(image, "YX")
    if isinstance(dist, Mixture):
        return {"means": dist.means, "scales": dist.scales}
    return {"means": dist.mean[None], "scales": dist.scale[None]}


def distribution(p: dict) -> Laplace | Mixture:
    if p["means"].shape[0] == 1:
        return Laplace(p["means"][0].astype(np.float64), p["scales"][0].astype(np.float64))
    return Mixture(p["means"].astype(np.float64), p["scales"].astype(np.float64))


def key(name: str, photons: float, a) -> str:
    return f"{name}-{photons:g}ph-{a.steps}steps-k{a.members}-seed{a.seed}"


def collect(name: str, photons: float, a) -> list[dict]:
    """Raw predictions (means, scales, truth) on every test image, trained and predicted once, cached."""
    path = a.cache / f"{key(name, photons, a)}.npz"
    if not path.exists():
        ds = truths.load(name, a.data)
        low, test_low = camera(ds, photons, a.read_noise, a.seed)
        model = train(ds, low, a.cache / key(name, photons, a), a.steps, a.members, a.seed)
        arrays = {}
        for i, (x, t) in enumerate(zip(test_low, ds.test, strict=True)):
            arrays |= {f"{k}{i}": v for k, v in raw(model, x).items()} | {f"truth{i}": t}
        a.cache.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **arrays)
        print(f"{name}, {photons:g} photons: trained and predicted", flush=True)
    return unpack(np.load(path))


def unpack(z) -> list[dict]:
    n = len([k for k in z.files if k.startswith("truth")])
    return [{"means": z[f"means{i}"], "scales": z[f"scales{i}"], "truth": z[f"truth{i}"]} for i in range(n)]


def cross(source: str, target: str, photons: float, a) -> list[dict]:
    """``source``'s model on ``target``'s test images (cached)."""
    path = a.cache / f"{key(source, photons, a)}-on-{target}.npz"
    if not path.exists():
        ds = truths.load(target, a.data)
        _, test_low = camera(ds, photons, a.read_noise, a.seed)
        model = carekit.load(a.cache / key(source, photons, a))
        arrays = {}
        for i, (x, t) in enumerate(zip(test_low, ds.test, strict=True)):
            arrays |= {f"{k}{i}": v for k, v in raw(model, x).items()} | {f"truth{i}": t}
        np.savez_compressed(path, **arrays)
    return unpack(np.load(path))


# -- calibration, measured on images it never saw ---------------------------------------------
def pits(images: list[dict]) -> list[dict]:
    """Per image: ``F(truth)``, normalised intensity and decile of the raw distribution."""
    out = []
    for p in images:
        dist = distribution(p)
        out.append({"pit": dist.cdf(p["truth"].astype(np.float64)), "coordinate": dist.mean,
                    "decile": deciles(dist.mean)})  # fmt: skip
    return out


def fit(method: str, calibration_images: list[dict], weight: float = HELD_OUT_WEIGHT) -> Calibration | None:
    if method == "raw":
        return None
    if method == "global":
        return Calibration.global_(pit_table(np.concatenate([c["pit"].ravel() for c in calibration_images])))
    observed = [Observed(c["pit"], c["coordinate"], c["decile"]) for c in calibration_images]
    return fit_tables(observed) if method == "unwidened" else fit_calibration(observed, held_out_weight=weight)


def score(tested: list[tuple[dict, Calibration | None]]) -> dict:
    """Coverage of (image, calibration) pairs: pooled per level, per image and per decile at 90 %."""
    hits = {p: [inside(c["pit"], p, cal, c["coordinate"]) for c, cal in tested] for p in LEVELS}
    per_decile = [float(np.mean(np.concatenate([h[c["decile"] == d] for h, (c, _) in zip(hits[0.9], tested,
                                                                                          strict=True)])))
                  for d in range(10)]  # fmt: skip
    return {
        "coverage": {str(p): float(np.mean(np.concatenate([h.ravel() for h in hits[p]]))) for p in LEVELS},
        "per_image_90": [float(h.mean()) for h in hits[0.9]],
        "per_decile_90": per_decile,
    }


def held_out(images: list[dict], methods=METHODS, weight: float = HELD_OUT_WEIGHT) -> dict:
    """Leave one image out: calibrate on the others, test on it; every method."""
    calib = pits(images)
    out = {}
    for method in methods:
        tested = [(c, fit(method, calib[:i] + calib[i + 1 :], weight)) for i, c in enumerate(calib)]
        out[method] = score(tested)
    return out


def split_halves(images: list[dict]) -> tuple[list[dict], list[dict]]:
    """Every image's first and second half along its first axis (deciles stay those of the whole image)."""
    first, second = [], []
    for c in pits(images):
        cut = c["pit"].shape[0] // 2
        first.append({k: v[:cut] for k, v in c.items()})
        second.append({k: v[cut:] for k, v in c.items()})
    return first, second


def within(images: list[dict], methods=METHODS, weight: float = HELD_OUT_WEIGHT) -> dict:
    """Calibrate on one half of every test image, test on the other halves, both ways; every method."""
    first, second = split_halves(images)
    out = {}
    for method in methods:
        tested = [(c, fit(method, second, weight)) for c in first] + [(c, fit(method, first, weight)) for c in second]
        out[method] = score(tested)
    return out


def transferred(source: list[dict], others: dict[str, list[dict]]) -> dict:
    """``source``'s calibrations (fitted on all its test images) applied to other datasets' images."""
    calib = pits(source)
    out = {}
    for target, images in others.items():
        tested = pits(images)
        out[target] = {m: score([(c, fit(m, calib)) for c in tested]) for m in METHODS}
    return out


# -- choosing the held-out weight, leave one dataset out ----------------------------------------
WEIGHTS = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def margin(r: dict) -> float:
    """How far inside 85-95 % overall with every decile at or above 80 % (at 90 %); negative: outside."""
    return min(0.05 - abs(r["coverage"]["0.9"] - 0.9), min(r["per_decile_90"]) - 0.8)


def choose_weight(images: dict[tuple[str, float], list[dict]]) -> dict:
    """Every weight's margins on every (dataset, photons) and protocol; then, for each dataset, the
    weight that does best on the other datasets (most settings inside the acceptance, then the
    smallest sum of shortfalls, then the best worst margin) and that weight's margins on it."""
    margins = {}
    for (name, photons), imgs in images.items():
        for w in WEIGHTS:
            runs = {"held_out": held_out(imgs, ("conditional",), w), "halves": within(imgs, ("conditional",), w)}
            for protocol, r in runs.items():
                margins[f"{name}|{photons:g}|{protocol}|{w:g}"] = margin(r["conditional"])
    names = sorted({k[0] for k in images})

    def rank(w, datasets):
        mine = [m for k, m in margins.items() if k.split("|")[0] in datasets and k.endswith(f"|{w:g}")]
        return sum(m >= 0 for m in mine), sum(min(m, 0.0) for m in mine), min(mine)

    chosen = {}
    for held in names:
        others = [n for n in names if n != held]
        best = max(WEIGHTS, key=lambda w: (*rank(w, others), -abs(w - 0.5)))
        mine = {k: m for k, m in margins.items() if k.startswith(held + "|") and k.endswith(f"|{best:g}")}
        chosen[held] = {"weight": best, "margins": {k.split("|", 1)[1].rsplit("|", 1)[0]: round(m, 4)
                                                    for k, m in mine.items()}}  # fmt: skip
    return {"margins": {k: round(m, 4) for k, m in margins.items()}, "leave_one_dataset_out": chosen}


# -- report ------------------------------------------------------------------------------------
def worst_decile(r: dict) -> float:
    return farthest(r["per_decile_90"])


def farthest(values) -> float:
    """The value farthest from the nominal 90 %."""
    return max(values, key=lambda c: abs(c - 0.9))


def row_cells(r: dict) -> str:
    cover = " / ".join(f"{100 * r['coverage'][str(p)]:.1f}" for p in LEVELS)
    worst_image = farthest(r["per_image_90"])
    return f"{cover} | {100 * worst_image:.1f} | {100 * worst_decile(r):.1f}"


def table(rows: list[dict], protocol: str = "held_out") -> str:
    """``protocol``: ``held_out`` (leave one test image out) or ``halves`` (one half of every image calibrates)."""
    lines = ["| dataset | photons | calibration | 50 / 80 / 90 / 95 % intervals | worst image, 90 % | "
             "worst intensity decile, 90 % |", "|---|---|---|---|---|---|"]  # fmt: skip
    rows = [r for r in rows if protocol in r]
    for r in rows:
        for m in METHODS:
            lines.append(f"| {r['dataset']} | {r['photons']:g} | {m} | {row_cells(r[protocol][m])} |")
    for photons in sorted({r["photons"] for r in rows}):
        group = [r for r in rows if r["photons"] == photons]
        for m in METHODS[1:]:
            worst = max(group, key=lambda r: abs(worst_decile(r[protocol][m]) - 0.9))
            lines.append(f"| **worst of {len(group)}** ({worst['dataset']}) | {photons:g} | {m} | "
                         f"{row_cells(worst[protocol][m])} |")  # fmt: skip
    return "\n".join(lines)


def cross_table(rows: list[dict]) -> str:
    lines = ["| model and calibration from | photons | calibration | 90 % coverage on the other datasets: mean "
             "(worst) | worst intensity decile |", "|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        if "cross" not in r:
            continue
        for m in METHODS[1:]:
            c = [t[m]["coverage"]["0.9"] for t in r["cross"].values()]
            d = farthest(worst_decile(t[m]) for t in r["cross"].values())
            lines.append(f"| {r['dataset']} | {r['photons']:g} | {m} | {100 * np.mean(c):.1f} "
                         f"({100 * farthest(c):.1f}) | {100 * d:.1f} |")  # fmt: skip
    return "\n".join(lines)


def report(rows: list[dict], cross: bool = True) -> str:
    """Both protocols' tables, and the cross-dataset one where it was measured."""
    return table(rows) + "\n\n" + table(rows, "halves") + ("\n\n" + cross_table(rows) if cross else "")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--photons", default="5,20,100")
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps per network")
    ap.add_argument("--members", type=int, default=1, help="ensemble members (1: one probabilistic network)")
    ap.add_argument("--read-noise", type=float, default=2.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cross", action="store_true", help="also apply each model to the other datasets")
    ap.add_argument("--data", type=Path, default=truths.DATA)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/carekit-calibration-cache"))
    ap.add_argument("--name", default=None)
    ap.add_argument("--report", action="store_true", help="print the tables of the stored results only")
    ap.add_argument("--choose-weight", action="store_true",
                    help="sweep the held-out weight over the predictions, pick it leave-one-dataset-out")  # fmt: skip
    a = ap.parse_args(argv)
    out = RESULTS / f"calibration{'-' + a.name if a.name else ''}.json"
    if a.report:
        rows = read_json(out)["rows"]
        print(report(rows))
        return
    import torch

    names = a.datasets.split(",")
    if a.choose_weight:
        levels = [float(p) for p in a.photons.split(",")]
        chosen = choose_weight({(n, p): collect(n, p, a) for p in levels for n in names})
        write_json(RESULTS / f"calibration-weight{'-' + a.name if a.name else ''}.json",
                   {"cpu": cpu_name(), "args": {k: str(v) for k, v in vars(a).items()}, **chosen})  # fmt: skip
        for held, c in chosen["leave_one_dataset_out"].items():
            print(held, c["weight"], c["margins"])
        return
    rows = []
    for photons in [float(p) for p in a.photons.split(",")]:
        images = {name: collect(name, photons, a) for name in names}
        for name in names:
            pixels = int(sum(p["truth"].size for p in images[name]))
            row = {"dataset": name, "photons": photons, "held_out": held_out(images[name]),
                   "halves": within(images[name]), "test_images": len(images[name]), "pixels": pixels}  # fmt: skip
            if a.cross:
                row["cross"] = transferred(images[name], {t: cross(name, t, photons, a) for t in names if t != name})
            rows.append(row)
            print(json.dumps({"dataset": name, "photons": photons} | {m: row["held_out"][m]["coverage"]["0.9"]
                                                                        for m in METHODS}), flush=True)  # fmt: skip
    meta = {"cpu": cpu_name(), "torch": torch.__version__, "carekit": carekit.__version__,
            "args": {k: str(v) for k, v in vars(a).items()}}  # fmt: skip
    write_json(out, {**meta, "rows": rows})
    print(report(rows, a.cross))


if __name__ == "__main__":
    main()
