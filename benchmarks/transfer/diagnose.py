"""Where does a recipe-trained network lose on other generators? Margins over Richardson-Lucy by cause.

    python benchmarks/transfer/diagnose.py --steps 2500                       # train on synthetic.py's recipe
    python benchmarks/transfer/diagnose.py --steps 2500 --set 'loss="mae"'    # with another setting
    python benchmarks/transfer/diagnose.py --steps 2500 --variation '{"density": 2}'   # other tolerances
    python benchmarks/transfer/diagnose.py --model DIR                        # a model trained before

Swaps one thing at a time between the recipe's images and the spline generator's
(``tubules.py``): the spline truths imaged by the recipe's microscope (and without background),
the recipe's truths imaged by the spline generator's, and spline images with 3, 6, 10 and 16
curves (the generator draws 6-14 plus bundles). 8 images per row from their own seed; the margin is
over Richardson-Lucy at its best iteration per image (picked with the truth). Untimed (a fixed
number of steps); prints a table, writes nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
from pathlib import Path

import numpy as np
import tubules
from common import timed_training
from quality.truths import bezier_tubules

from carekit.baselines import tuned_rl
from carekit.data.recipes import generate_pairs, parse_recipe
from carekit.data.structures import widefield
from carekit.metrics import evaluate
from carekit.model import CARE

_spec = importlib.util.spec_from_file_location("transfer_synthetic", Path(__file__).with_name("synthetic.py"))
_synthetic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_synthetic)
RECIPE = _synthetic.RECIPE
SHAPE = (128, 128)


def rows(recipe, n: int, seed: int) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """(image, truth) pairs per test condition."""
    im = recipe.imaging
    psf, sigma, rng = im.kernel(2), im.sigmas(2)[0], np.random.default_rng(seed)
    optics = {"photons": im.photons, "read_noise": im.read_noise, "background": im.background}

    def own_camera(t, background=im.background):
        return widefield(t, psf, rng, photons=im.photons, background=background, read_sigma=im.read_noise)

    spline = [tubules.draw(SHAPE, rng) for _ in range(n)]
    own = [p.high[0] for p in generate_pairs(parse_recipe({**RECIPE, "variation": False}), n, seed)]
    out = {
        "recipe's own images": [(p.low[0], p.high[0]) for p in generate_pairs(recipe, n, seed + 1)],
        "spline truths, spline imaging": [(tubules.image(t, sigma, rng, **optics), t) for t in spline],
        "spline truths, recipe imaging": [(own_camera(t), t) for t in spline],
        "spline truths, no background": [(own_camera(t, 0.0), t) for t in spline],
        "recipe truths, spline imaging": [(tubules.image(t, sigma, rng, **optics), t) for t in own],
    }
    bezier = [bezier_tubules(SHAPE, rng) for _ in range(n)]
    out["Bezier truths, spline imaging"] = [(tubules.image(t, sigma, rng, **optics), t) for t in bezier]
    for count in (3, 6, 10, 16):
        truths = [tubules.render(SHAPE, tubules.curves(SHAPE, rng, count)) for _ in range(n)]
        out[f"spline, {count} curves"] = [(tubules.image(t, sigma, rng, **optics), t) for t in truths]
    return {k: [(x, t) for x, t in v if np.ptp(t) > 0] for k, v in out.items()}  # an empty truth has no PSNR


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="a synthetic model trained before")
    ap.add_argument("--steps", type=int, default=2500, help="training steps on the recipe (without --model)")
    ap.add_argument("--seed", type=int, default=0, help="training seed")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="a training setting")
    ap.add_argument("--variation", type=json.loads, default=None, help="the recipe's variation (JSON)")
    ap.add_argument("--images", type=int, default=8)
    a = ap.parse_args(argv)
    recipe = parse_recipe({**RECIPE, "variation": False})
    with tempfile.TemporaryDirectory() as d:
        folder = a.model
        if folder is None:
            folder = Path(d) / "m"
            settings = {"epochs": max(1, a.steps // 50), "steps_per_epoch": min(50, a.steps), "seed": a.seed,
                        **{k: json.loads(v) for k, v in (s.split("=", 1) for s in a.set)}}  # fmt: skip
            trained = parse_recipe({**RECIPE, **({} if a.variation is None else {"variation": a.variation})})
            timed_training({"mode": "synthetic", "recipe": trained.to_dict(), "settings": settings}, folder,
                           exclusive=False)  # fmt: skip
        model = CARE.load(folder)
        psf = recipe.imaging.kernel(2)
        print(f"{'condition':34s} {'CARE':>6s} {'RL':>6s} {'margin':>7s} {'worst':>7s}")
        for name, pairs in rows(recipe, a.images, 5).items():
            care = [evaluate(model.predict(low, "YX"), truth)["psnr"] for low, truth in pairs]
            rl = [evaluate(tuned_rl(low, truth, psf)[0], truth)["psnr"] for low, truth in pairs]
            margin = np.subtract(care, rl)
            print(f"{name:34s} {np.mean(care):6.2f} {np.mean(rl):6.2f} {margin.mean():+7.2f} {margin.min():+7.2f}",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
