"""Does training on a recipe restore tubules drawn by another generator? CARE against Richardson-Lucy.

    python benchmarks/transfer/synthetic.py                          # 150 s, seeds 0 and 1
    python benchmarks/transfer/synthetic.py --precision float32
    python benchmarks/transfer/synthetic.py --fixed                  # the recipe without variation

A network trains on a tubule recipe (NA 1.3, 520 nm, 40 nm pixels, 100 photons) for
``--train-seconds`` of wall-clock time (data generation included; the machine's CPU lock held
exclusively). It is tested on images from ``tubules.py`` in this folder: tubules drawn by another
algorithm (splines, widths and brightness varying along them, bundles, its own background) and
imaged through the recipe's optics and photon count. Richardson-Lucy runs with the recipe's PSF
at the iteration count that scores best against each image's truth (an upper bound for it).
Prints the margin in PSNR per seed (mean over the test images, worst image) and the worst seed;
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
    test = tubules.test_set(a.test_images, (128, 128), imaging.sigmas(2)[0], TEST_SEED, photons=imaging.photons,
                            read_noise=imaging.read_noise, background=imaging.background)  # fmt: skip
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
        margins[f"seed {seed}"] = [c - r for c, r in zip(care, rl_psnr, strict=True)]
        own_margins[f"seed {seed}"] = [c - r for c, r in zip(own_care, own_rl, strict=True)]
        runs[f"seed {seed}"] = {**run, "care_psnr": float(np.mean(care)), "own_care_psnr": float(np.mean(own_care))}
        print(f"seed {seed}: {run['steps']} steps in {run['wall_s']} s ({run['precision']}); CARE {np.mean(care):.2f} "
              f"dB on the second generator (RL {np.mean(rl_psnr):.2f}), margin {np.mean(margins[f'seed {seed}']):+.2f} "
              f"(worst image {np.min(margins[f'seed {seed}']):+.2f}); on the recipe's own images "
              f"{np.mean(own_margins[f'seed {seed}']):+.2f}", flush=True)  # fmt: skip
    result = summary(margins)
    print(f"worst seed: {result['worst_mean']:+.2f} dB over Richardson-Lucy at its best iteration "
          f"(second generator); on the recipe's own images {summary(own_margins)['worst_mean']:+.2f} dB")  # fmt: skip
    label = a.label or ("fixed" if a.fixed else "varied") + ("-float32" if a.precision == "float32" else "")
    payload = {"cpu": cpu_name(), "train_seconds": a.train_seconds, "recipe": recipe_dict, "settings": settings,
               "test_images": a.test_images, "rl_psnr": rl_psnr, "rl_iterations": [n for _, n in rl], "runs": runs,
               "margins": margins, "second_generator": result, "own_generator": summary(own_margins)}  # fmt: skip
    print(write(f"transfer-synthetic-{label}", payload))


if __name__ == "__main__":
    main()
