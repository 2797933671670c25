"""Pre-train the generic restoration networks that carekit ships and fine-tunes from by default.

    python scripts/pretrain.py --ndim 2                      # the 2D network (~15 min on 2 cores)
    python scripts/pretrain.py --ndim 3 --steps 3000 --residual --no-batch-norm --loss mse --init pretrained
                                                             # the 3D network, from the 2D one inflated
    python scripts/pretrain.py --ndim 2 --residual --no-batch-norm --out /tmp/variant
    python scripts/pretrain.py --ndim 2 --n2v --steps 2000   # Noise2Void's network (n2v-2d)
    python scripts/pretrain.py --ndim 2 --synthetic --residual --steps 6000   # synthetic mode's (synthetic-2d-residual)

A corpus of synthetic pairs (``carekit.data.corpus``: mixed structures, PSFs, backgrounds, 2 to 300
photons, read noise; with ``--synthetic`` widefield images of random recipes and their structures,
``carekit.data.corpus.widefield_pair``) is generated from ``--seed``, and the network of carekit's denoising defaults
trains on it through the same sampler and loop as any training. The weights are written in float16
(``<out>/denoise-<ndim>d.safetensors``, a few MB at most) beside a JSON file that records the network,
the corpus, the steps and this command, so the files can be reproduced.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import carekit
from carekit.config import Config
from carekit.data import corpus
from carekit.data.pairs import ImagePair
from carekit.modes.n2v import N2V_NET
from carekit.sampling import PatchSampler
from carekit.trainer import Callback
from carekit.training import fit

OUT = Path(__file__).resolve().parents[1] / "src" / "carekit" / "pretrained"
SHAPES = {2: (128, 128), 3: (32, 96, 96)}


class Report(Callback):
    """One line per epoch (the progress bar only on a terminal)."""

    def on_epoch(self, trainer, row: dict) -> None:
        print(f"epoch {row['epoch']}: loss {row['loss']:.4f}, validation {row['val_loss']:.4f}, "
              f"{row['seconds']:.0f} s", flush=True)  # fmt: skip


def make_pairs(ndim: int, n: int, seed: int, synthetic: bool = False) -> list[ImagePair]:
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        low, high = (corpus.widefield_pair if synthetic else corpus.pair)(SHAPES[ndim], rng)
        pairs.append(ImagePair(f"corpus {i}", low[None], high[None]))
    return pairs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ndim", type=int, choices=(2, 3), default=2)
    ap.add_argument("--steps", type=int, default=8000)
    ap.add_argument("--pairs", type=int, default=None, help="corpus size (default 2000 in 2D, 400 in 3D)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--residual", action=argparse.BooleanOptionalAction, default=False)
    ap.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument(
        "--n2v",
        action="store_true",
        help="Noise2Void's network (N2V2: blur pooling, no top skip, no residual) for its warm start",
    )
    ap.add_argument(
        "--synthetic",
        action="store_true",
        help="the synthetic mode's network: widefield images of random recipes to their structures",
    )
    ap.add_argument("--loss", choices=("mae", "mse"), default=None,
                    help="the training loss (default: the mode's, MSE for --synthetic, else MAE)")  # fmt: skip
    ap.add_argument("--learning-rate", type=float, default=4e-4)
    ap.add_argument("--init", choices=("scratch", "pretrained"), default="scratch",
                    help="start from random weights, or (3D) from the shipped 2D network inflated along z")  # fmt: skip
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args(argv)
    n_pairs = a.pairs or (2000 if a.ndim == 2 else 400)
    started = time.monotonic()
    if a.n2v and a.synthetic:
        ap.error("--n2v and --synthetic pre-train different networks; give one")
    loss = a.loss or ("mse" if a.synthetic else "mae")
    pairs = make_pairs(a.ndim, n_pairs, a.seed, a.synthetic)
    print(f"corpus: {n_pairs} pairs of {SHAPES[a.ndim]} in {time.monotonic() - started:.0f} s", flush=True)
    axes = "ZYX" if a.ndim == 3 else "YX"
    net = {"kernel_size": 3, "residual": a.residual, "batch_norm": a.batch_norm}
    if a.n2v:
        net.update(N2V_NET)
    train = {"epochs": a.steps // 200, "steps_per_epoch": 200, "lr_schedule": "cosine", "seed": a.seed,
             "learning_rate": a.learning_rate, "init": a.init, "loss": loss}  # fmt: skip
    config = Config(axes=axes, net=net, train=train)
    t = config.train
    sampler = PatchSampler(pairs, t.patch_size, val_fraction=0.02, threshold=0.0, jitter=False, input_units=a.synthetic)
    with tempfile.TemporaryDirectory() as d:
        model = fit(sampler, config, Path(d) / "m", progress=sys.stderr.isatty(), callbacks=[Report()])
        history = (Path(d) / "m" / "history.csv").read_text().splitlines()
    tensors = {k: v.to(torch.float16) for k, v in model.net.state_dict().items() if v.is_floating_point()}
    tensors.update({k: v for k, v in model.net.state_dict().items() if not v.is_floating_point()})
    a.out.mkdir(parents=True, exist_ok=True)
    family = "n2v" if a.n2v else "synthetic" if a.synthetic else "denoise"
    name = f"{family}-{a.ndim}d" + ("-residual" if a.residual else "") + ("" if a.batch_norm else "-nobn")
    save_file(tensors, str(a.out / f"{name}.safetensors"))
    assert set(load_file(str(a.out / f"{name}.safetensors"))) == set(model.net.state_dict())
    network = ("depth", "n_first", "kernel_size", "n_conv", "residual", "batch_norm", "blur_pool", "top_skip")
    meta = {
        "network": {k: getattr(model.config.net, k) for k in network},
        "ndim": a.ndim,
        "corpus": {
            "pairs": n_pairs,
            "shape": SHAPES[a.ndim],
            "seed": a.seed,
            "kind": "widefield recipes" if a.synthetic else "mixed structures",
            "photons": corpus.WIDEFIELD_PHOTONS if a.synthetic else corpus.PHOTONS,
            "read_noise": corpus.READ_NOISE,
            **({"psf_sigma": corpus.PSF_SIGMA} if a.synthetic else {}),
        },
        "training": {
            "steps": a.steps,
            "patch_size": list(t.patch_size),
            "batch_size": t.batch_size,
            "learning_rate": a.learning_rate,
            "loss": loss,
            "schedule": "cosine",
            "init": a.init,
            "precision": t.precision,
        },
        "best_validation_loss": min(float(row.split(",")[4]) for row in history[1:]),  # the weights kept
        "carekit": carekit.__version__,
        "command": "python scripts/pretrain.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "seconds": round(time.monotonic() - started),
    }
    (a.out / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(json.dumps(meta), flush=True)


if __name__ == "__main__":
    main()
