"""Named training settings compared by the quality benchmark (keyword settings of ``carekit.train``).

``default`` is whatever carekit does when told nothing, so its rows move when the defaults do;
the others pin what they change.
"""

from __future__ import annotations

SHORT_EPOCHS = {"epochs": 10_000, "steps_per_epoch": 50}  # validate and keep the best often
BN_NET = {"residual": False, "batch_norm": True}

VARIANTS: dict[str, dict] = {
    "default": {},
    "scratch": {"init": "scratch"},
    "scratch-spe50": {**SHORT_EPOCHS, "init": "scratch"},
    # the network of the shipped 2D/3D pre-trained ones (no residual, batch norm), from scratch or warm
    "scratch-bn": {**BN_NET, "init": "scratch"},
    "warm": {**BN_NET, "init": "pretrained"},
    "warm-spe50": {**BN_NET, **SHORT_EPOCHS, "init": "pretrained"},
    "warm-lr1e-4": {**BN_NET, "init": "pretrained", "learning_rate": 1e-4},
    "warm-lr2e-4": {**BN_NET, "init": "pretrained", "learning_rate": 2e-4},
    "warm-cosine": {**BN_NET, "init": "pretrained", "lr_schedule": "cosine"},
    "warm-cosine-lr2e-4": {**BN_NET, "init": "pretrained", "lr_schedule": "cosine", "learning_rate": 2e-4},
    "mse": {"loss": "mse"},  # denoising's default loss since it won leave-one-dataset-out at 20 photons
    "mae": {"loss": "mae"},  # the paper's loss, the default before
    # denoising's default since it won leave-one-dataset-out at 20 photons: every input drawn afresh
    "redraw100": {"redraw": 1.0},
    "redraw50": {"redraw": 0.5},
    "no-redraw": {"redraw": 0.0},  # the acquired inputs only, the default before
    "batch4": {"batch_size": 4},  # a quarter of the 3D default's 16 patches: four times the steps
    # the learning rate decayed to zero over the budget (cosine) and a running average of the weights
    "cosine": {"lr_schedule": "cosine"},
    "ema99": {"ema": 0.99},  # denoising's default: each epoch keeps the better of the average and the weights
    "no-ema": {"ema": 0.0},  # the trained weights only, the default before
    "cosine-ema99": {"lr_schedule": "cosine", "ema": 0.99},
    "no-blend": {"filter_blend": False},  # the network alone, without the fitted mix with a Gaussian filter
    "spe50": SHORT_EPOCHS,
    "spe50-cosine": {**SHORT_EPOCHS, "lr_schedule": "cosine"},
    "spe50-residual": {**SHORT_EPOCHS, "residual": True},
    "spe50-noresidual": {**SHORT_EPOCHS, "residual": False},
}


def settings(name: str, precision: str = "auto") -> dict:
    if name not in VARIANTS:
        raise SystemExit(f"variant '{name}' is unknown; use one of {', '.join(VARIANTS)}")
    out = dict(VARIANTS[name])
    if precision != "auto":
        out["precision"] = precision
    return out
