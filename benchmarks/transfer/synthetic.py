"""Does training on a recipe restore tubules drawn by another generator? CARE against Richardson-Lucy.

    python benchmarks/transfer/synthetic.py                          # 150 s, seeds 0 and 1
    python benchmarks/transfer/synthetic.py --precision float32
    python benchmarks/transfer/synthetic.py --fixed                  # the recipe without variation

A network trains on a tubule recipe (NA 1.3, 520 nm, 40 nm pixels, 100 photons) for
``--train-seconds`` of wall-clock time (data generation included; the machine's CPU lock held
exclusively). It is tested on images from ``tubules.py`` in this folder: tubules drawn by another
algorithm (splines, widths and brightness varying along them, bundles, its own background) and
imaged through the recipe's optics and photon count, and Bezier tubules from the quality
benchmark's ground truths (``benchmarks/quality/truths.py``) imaged the same way. Richardson-Lucy
runs with the recipe's PSF
at the iteration count that scores best against each image's truth (an upper bound for it).
Prints the margin in PSNR per seed and test set (mean over the test images, worst image) and the
worst seed;
writes ``benchmarks/results/transfer-synthetic-<label>.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import tubules
from common import budget, cpu_name, summary, timed_training, write
from quality.truths import bezier_tubules

from carekit.baselines import tuned_rl
from carekit.data.recipes import generate_pairs, parse_recipe
from carekit.metrics import evaluate
from carekit.model import CARE

RECIPE = {
    "shape": [128, 128],
    "pairs": 400,
    "seed": 0,
    "channels": [[{"type": "tubules", "density": 0.02, "length": 100, "persistence": 40, "width": 0.4}]],
    "imaging": {"na": 1.3, "wavelength": 520, "pixel_size": 40, "photons": 100, "background": 0.1, "read_noise": 2},
}
TEST_SEED = 2024


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-seconds", type=float, default=150.0)
    ap.add_argument("--steps", type=int, default=None, help="train this many steps instead (untimed, shared lock)")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--test-images", type=int, default=8)
    ap.add_argument("--fixed", action="store_true", help="train on the recipe without its variation")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="a training setting, e.g. lr=1e-3")
    ap.add_argument("--label", default=None)
    a = ap.parse_args(argv)
    settings = {k: json.loads(v) for k, v in (s.split("=", 1) for s in a.set)}
    recipe_dict = {**RECIPE, **({"variation": False} if a.fixed else {})}
    imaging = parse_recipe(RECIPE).imaging
    psf = imaging.kernel(2)
    optics = {"photons": imaging.photons, "read_noise": imaging.read_noise, "background": imaging.background}
    sigma, rng = imaging.sigmas(2)[0], np.random.default_rng(TEST_SEED + 1)
    sets = {"spline": tubules.test_set(a.test_images, (128, 128), sigma, TEST_SEED, **optics), "bezier": []}
    for _ in range(a.test_images):
        truth = bezier_tubules((128, 128), rng)
        sets["bezier"].append((tubules.image(truth, sigma, rng, **optics), truth))
    test = [pair for pairs in sets.values() for pair in pairs]
    names = [name for name, pairs in sets.items() for _ in pairs]
    rl = [tuned_rl(low, truth, psf) for low, truth in test]
    rl_psnr = [evaluate(out, truth)["psnr"] for (out, _), (_, truth) in zip(rl, test, strict=True)]
    own = generate_pairs(parse_recipe({**RECIPE, "variation": False}), a.test_images, seed=TEST_SEED)
    own_rl = [evaluate(tuned_rl(p.low[0], p.high[0], psf)[0], p.high[0])["psnr"] for p in own]
    margins, own_margins, runs = {}, {}, {}
    for seed in (int(s) for s in a.seeds.split(",")):
        recipe = parse_recipe({**recipe_dict, "seed": seed})
        with tempfile.TemporaryDirectory() as d:
            options = {**budget(a.train_seconds, a.steps), "seed": seed, "precision": a.precision, **settings}
            spec = {"mode": "synthetic", "recipe": recipe.to_dict(), "settings": options}
            run = timed_training(spec, Path(d) / "m", exclusive=not a.steps)
            model = CARE.load(Path(d) / "m")
            care = [evaluate(model.predict(low, "YX"), truth)["psnr"] for low, truth in test]
            own_care = [evaluate(model.predict(p.low[0], "YX"), p.high[0])["psnr"] for p in own]
        for name in sets:
            margins.setdefault(name, {})[f"seed {seed}"] = [
                c - r for c, r, n in zip(care, rl_psnr, names, strict=True) if n == name
            ]
        own_margins[f"seed {seed}"] = [c - r for c, r in zip(own_care, own_rl, strict=True)]
        runs[f"seed {seed}"] = {**run, "care_psnr": care, "own_care_psnr": own_care}
        found = ", ".join(f"{n} {np.mean(m[f'seed {seed}']):+.2f} (worst image {np.min(m[f'seed {seed}']):+.2f})"
                          for n, m in margins.items())  # fmt: skip
        print(f"seed {seed}: {run['steps']} steps in {run['wall_s']} s ({run['precision']}); margin over RL: {found}; "
              f"on the recipe's own images {np.mean(own_margins[f'seed {seed}']):+.2f}", flush=True)  # fmt: skip
    result = {name: summary(m) for name, m in margins.items()}
    worst = ", ".join(f"{n} {r['worst_mean']:+.2f} dB" for n, r in result.items())
    print(f"worst seed over Richardson-Lucy at its best iteration: {worst}; on the recipe's own images "
          f"{summary(own_margins)['worst_mean']:+.2f} dB")  # fmt: skip
    label = a.label or ("fixed" if a.fixed else "varied") + ("-float32" if a.precision == "float32" else "")
    payload = {"cpu": cpu_name(), "train_seconds": a.train_seconds, "recipe": recipe_dict, "settings": settings,
               "test_images": a.test_images, "rl_psnr": rl_psnr, "rl_iterations": [n for _, n in rl], "runs": runs,
               "margins": margins, "other_generators": result, "own_generator": summary(own_margins)}  # fmt: skip
    print(write(f"transfer-synthetic-{label}", payload))


if __name__ == "__main__":
    main()
