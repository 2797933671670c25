"""What a recipe leaves open, drawn anew for every generated pair.

A recipe names structures and a microscope, but real samples and microscopes stray from any
single description: tubules differ in width, bend in arcs as well as at random, carry more label
in some stretches than in others and run in bundles; the PSF is wider than its Gaussian model,
the photon count and the background change from cell to cell, and out-of-focus structures add
haze. A network trained on one exact description learns its quirks and restores structures
drawn differently poorly. :class:`Variation` draws these per pair around the recipe's values,
within stated tolerances, from the same random generator as the pair (so a recipe and its seed
still give the same pairs). Values a recipe gives explicitly for a structure (``width_spread``,
``curvature``, ``profile``, ``bundles``) are kept as given.

Tolerances are of two kinds: *factors* (>= 1) draw a multiplier log-uniformly from
``[1 / f, f]``; *fractions* (0..1) draw ``1 + U(-f, f)`` or, for the shapes of structures, set
how much of a variation there is. :meth:`Variation.off` pins everything to the recipe.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

FACTORS = ("width", "persistence", "density", "size", "photons", "background_scale")
FRACTIONS = ("brightness", "bundles", "psf", "read_noise", "background", "haze")


@dataclass(frozen=True)
class Variation:
    """Tolerances of the per-pair variation (the defaults are on; see the module docstring).

    Attributes
    ----------
    width : factor
        Each tubule's width (Gaussian sigma) is the recipe's times a factor in ``[1/width, width]``.
    persistence : factor
        Tubule persistence length per pair (how straight they run).
    curvature : float
        Typical curvature (1/px) of the arcs that bend 2D tubules, drifting along each (0: none).
    brightness : fraction
        Depth of the brightness variation along each tubule (0: uniform; gaps appear now and then).
    bundles : fraction
        Chance that a 2D tubule runs with one to three parallel neighbours 1.5-5 px away.
    density : factor
        Structure density (tubule length or granule count per pixel) per pair.
    size : factor
        Median granule radius per pair.
    psf : fraction
        Gaussian PSF sigmas per pair times ``1 + U(-psf, psf)`` (a measured PSF is used as given).
    photons, read_noise : factor, fraction
        Photon count and camera read noise per pair.
    background, background_scale : fraction, factor
        Background auto-fluorescence level and the size of its features per pair.
    haze : fraction
        Up to this share of the background is out-of-focus structure (the channel's structures
        drawn again and blurred 3-6 times wider than the PSF).
    """

    width: float = 2.5
    persistence: float = 3.0
    curvature: float = 0.05
    brightness: float = 0.8
    bundles: float = 0.3
    density: float = 5.0
    size: float = 1.5
    psf: float = 0.15
    photons: float = 2.0
    read_noise: float = 0.5
    background: float = 1.0
    background_scale: float = 4.0
    haze: float = 0.5

    def __post_init__(self) -> None:
        for name in FACTORS:
            if not getattr(self, name) >= 1:
                raise ValueError(f"variation '{name}' is a factor >= 1 (1: fixed), got {getattr(self, name)}")
        for name in FRACTIONS:
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"variation '{name}' is a fraction in [0, 1] (0: fixed), got {getattr(self, name)}")
        if not self.curvature >= 0:
            raise ValueError(f"variation 'curvature' must be >= 0 (0: none), got {self.curvature}")

    @classmethod
    def off(cls) -> Variation:
        """No variation: every pair follows the recipe exactly."""
        return cls(**{f: 1.0 for f in FACTORS}, **{f: 0.0 for f in FRACTIONS}, curvature=0.0)

    @property
    def active(self) -> bool:
        return self != Variation.off()

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def factor(f: float, rng: np.random.Generator) -> float:
    """A multiplier drawn log-uniformly from ``[1/f, f]`` (1 without a draw where ``f`` is 1)."""
    return float(f ** rng.uniform(-1, 1)) if f > 1 else 1.0


def fraction(f: float, rng: np.random.Generator) -> float:
    """A multiplier ``1 + U(-f, f)`` (1 without a draw where ``f`` is 0)."""
    return float(1 + rng.uniform(-f, f)) if f > 0 else 1.0


def structure(spec: dict[str, Any], v: Variation, rng: np.random.Generator, defaults: dict) -> dict[str, Any]:
    """The keywords of one structure of a recipe for one pair: the recipe's, varied by ``v``.

    ``defaults`` are the structure function's own defaults (for values the recipe leaves out).
    """
    kind = spec["type"]
    kw = {k: val for k, val in spec.items() if k != "type"}
    value = {**defaults, **kw}
    kw["density"] = value["density"] * factor(v.density, rng)
    if kind == "tubules":
        kw["persistence"] = value["persistence"] * factor(v.persistence, rng)
        given = {"width_spread": v.width, "curvature": v.curvature, "profile": v.brightness, "bundles": v.bundles}
        kw.update({k: val for k, val in given.items() if k not in spec})
    elif kind == "granules":
        kw["radius"] = value["radius"] * factor(v.size, rng)
    return kw


def imaging(im: Any, v: Variation, rng: np.random.Generator) -> dict[str, float]:
    """The microscope's varied values for one pair: PSF scale, photons, read noise, background
    level and feature size, and the share of out-of-focus haze in the background."""
    return {
        "psf_scale": fraction(v.psf, rng) if im.psf is None else 1.0,
        "photons": im.photons * factor(v.photons, rng),
        "read_noise": im.read_noise * fraction(v.read_noise, rng),
        "background": im.background * fraction(v.background, rng),
        "background_scale": im.background_scale * factor(v.background_scale, rng),
        "haze": float(rng.uniform(0, v.haze)) if v.haze > 0 else 0.0,
    }


def parse(value: Any) -> Variation:
    """A recipe's ``variation``: absent or true for the defaults, false for none, or an object of
    tolerances (the rest at their defaults). Raises ValueError naming the key at fault."""
    if value is None or value is True:
        return Variation()
    if value is False:
        return Variation.off()
    if not isinstance(value, dict):
        raise ValueError(f"'variation' must be true, false or an object of tolerances, got {value!r}")
    unknown = sorted(set(value) - {f.name for f in fields(Variation)})
    if unknown:
        raise ValueError(f"'variation' has unknown key(s) {', '.join(unknown)}")
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in value.values()):
        raise ValueError("'variation' tolerances must be numbers")
    return Variation(**{k: float(x) for k, x in value.items()})
