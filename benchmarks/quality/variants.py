"""Named training settings compared by the quality benchmark (keyword settings of ``carekit.train``).

``default`` is whatever carekit does when told nothing, so its rows move when the defaults do;
the others pin what they change.
"""

from __future__ import annotations

SHORT_EPOCHS = {"epochs": 10_000, "steps_per_epoch": 50}  # validate and keep the best often

VARIANTS: dict[str, dict] = {
    "default": {},
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
