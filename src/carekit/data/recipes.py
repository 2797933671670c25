"""Recipes of fully synthetic training pairs: generated ground truth, simulated widefield inputs.

A recipe is a JSON file naming the structures per channel, the microscope and the
number of pairs::

    {
      "shape": [128, 128],
      "pairs": 200,
      "seed": 0,
      "channels": [
        [{"type": "tubules", "density": 0.02, "width": 0.4}],
        [{"type": "granules", "density": 0.002, "radius": 1.5}]
      ],
      "imaging": {"na": 1.3, "wavelength": 520, "pixel_size": 40, "photons": 100,
                  "background": 0.1, "read_noise": 2, "frames": 1},
      "variation": {"width": 2.5, "photons": 2.0}
    }

Every pair is generated in memory when training starts (``carekit synth`` writes pairs
for inspection). Lengths in ``imaging`` are in nanometres; structure sizes in pixels.

The recipe's values are the centre of what is generated: ``variation`` (see
:mod:`carekit.data.variation`) draws what the recipe does not pin anew for every pair
(tubule widths, curvature, brightness along structures, bundles, density, PSF width, photons,
read noise, background and out-of-focus haze) within tolerances. It is on with its defaults
when the key is absent; ``"variation": false`` generates every pair exactly as described, and
an object sets tolerances by name (the rest keep their defaults). The tolerances in force are
stored with the recipe in the model's configuration, so training can be repeated from the
model folder.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from tqdm.auto import tqdm

from carekit.data import variation
from carekit.data.camera import widefield_sigmas
from carekit.data.pairs import ImagePair
from carekit.data.structures import blur, gaussian_psf, granules, tubules, widefield_counts
from carekit.data.surfaces import smooth_field
from carekit.data.variation import Variation
from carekit.errors import CarekitError
from carekit.io import read_image, read_json, write_tiff

STRUCTURES = {"tubules": tubules, "granules": granules}
IMAGING_KEYS = {
    "na", "wavelength", "pixel_size", "z_step", "refractive_index", "psf",
    "photons", "background", "background_scale", "read_noise", "frames",
}  # fmt: skip
# Bounds that keep a recipe from asking for more than a machine has (or from hanging on millions of
# structures); far beyond what a useful recipe needs.
MAX_EDGE, MAX_VOXELS, MAX_PAIRS, MAX_CHANNELS = 4096, 2**26, 100_000, 16
MAX_PSF_VOXELS = 2**24
MAX_STRUCTURES = 100_000  # per image and structure entry
REDRAWS = 100  # varied structures are drawn again (up to this often) where they leave every channel empty
STRUCTURE_BOUNDS = {"density": (0.0, 1.0), "length": (1.0, 1e4), "persistence": (0.0, 1e6), "width": (0.0, 50.0),
                    "radius": (0.0, 64.0), "radius_sd": (0.0, 1.0)}  # fmt: skip
IMAGING_BOUNDS = {"na": (0.01, 2.0), "wavelength": (100.0, 5000.0), "pixel_size": (1.0, 1e5), "z_step": (1.0, 1e6),
                  "refractive_index": (1.0, 2.0), "photons": (1e-3, 1e7), "background": (0.0, 1e3),
                  "background_scale": (1e-3, 1e5), "read_noise": (0.0, 1e5), "frames": (1, 1000)}  # fmt: skip


@dataclass
class Imaging:
    """The simulated widefield microscope (lengths in nm)."""

    na: float = 1.3
    wavelength: float = 520.0
    pixel_size: float = 40.0
    z_step: float = 120.0
    refractive_index: float = 1.518
    psf: str | None = None
    photons: float = 100.0
    background: float = 0.1
    background_scale: float = 32.0
    read_noise: float = 2.0
    frames: int = 1

    def sigmas(self, ndim: int) -> tuple[float, ...]:
        """Gaussian PSF sigmas in pixels per axis."""
        sz, sxy = widefield_sigmas(self.na, self.wavelength, self.refractive_index)
        lateral = sxy / self.pixel_size
        return (lateral, lateral) if ndim == 2 else (sz / self.z_step, lateral, lateral)

    def kernel(self, ndim: int, scale: float = 1.0) -> np.ndarray:
        """The PSF: a Gaussian (its sigmas times ``scale``) or the PSF file's kernel."""
        if self.psf is None:
            return gaussian_psf(tuple(s * scale for s in self.sigmas(ndim)))
        psf, _ = read_image(self.psf)
        if psf.ndim != ndim:
            raise CarekitError(f"{self.psf}: a {psf.ndim}D PSF cannot image {ndim}D structures; give a {ndim}D PSF")
        if psf.size > MAX_PSF_VOXELS:
            raise CarekitError(f"{self.psf}: a PSF of shape {psf.shape} is far too large; crop it around its centre")
        psf = np.clip(np.asarray(psf, np.float64), 0, None)
        total = psf.sum()
        if not np.isfinite(total) or total <= 0:
            raise CarekitError(f"{self.psf}: the PSF holds no positive finite values; give a measured PSF")
        return (psf / total).astype(np.float32)

    def rayleigh_px(self) -> float:
        """The lateral Rayleigh distance 0.61 λ / NA, in pixels."""
        return 0.61 * self.wavelength / self.na / self.pixel_size


@dataclass
class Recipe:
    shape: tuple[int, ...]
    channels: list[list[dict[str, Any]]]
    pairs: int = 100
    seed: int = 0
    imaging: Imaging = field(default_factory=Imaging)
    variation: Variation = field(default_factory=Variation)

    @property
    def axes(self) -> str:
        """Axes of generated images: C for several channels, then ZYX or YX."""
        return ("C" if len(self.channels) > 1 else "") + ("ZYX" if len(self.shape) == 3 else "YX")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


def recipe_error(source: str, message: str) -> CarekitError:
    return CarekitError(f"{source}: {message}; see 'carekit train --help' for the recipe format")


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_structure(source: str, where: str, kind: str, params: dict[str, Any], shape: list[int]) -> None:
    """A structure's parameters: known to its generator, finite and within ``STRUCTURE_BOUNDS``."""
    known = [n for n, p in inspect.signature(STRUCTURES[kind]).parameters.items() if p.kind == p.KEYWORD_ONLY]
    for name, value in params.items():
        if name not in known:
            raise recipe_error(source, f"{where} {kind}: unknown parameter {name!r}; use {', '.join(known)}")
        if name == "intensity":
            ok = isinstance(value, list) and len(value) == 2 and all(is_number(v) for v in value)
            if not ok or not 0 <= value[0] <= value[1] <= 1e6:
                raise recipe_error(source, f"{where} {kind}: 'intensity' must be [low, high] with 0 <= low <= high")
            continue
        low, high = STRUCTURE_BOUNDS.get(name, (-math.inf, math.inf))
        if not is_number(value) or not low <= value <= high:
            raise recipe_error(source, f"{where} {kind}: {name!r} must be in [{low:g}, {high:g}], got {value!r}")
    density = params.get("density", 0.02 if kind == "tubules" else 0.002)
    per_image = density * math.prod(shape) / (params.get("length", 120.0) if kind == "tubules" else 1.0)
    if per_image > MAX_STRUCTURES:
        raise recipe_error(source, f"{where} {kind}: 'density' places about {per_image:.0f} structures in every "
                           f"image, more than {MAX_STRUCTURES:,}; lower it")  # fmt: skip
    try:
        STRUCTURES[kind]((16,) * len(shape), np.random.default_rng(0), **params)
    except (TypeError, ValueError) as e:
        raise recipe_error(source, f"{where} {kind}: {e}") from None


def check_imaging(source: str, imaging: Any, ndim: int, base: Path | None) -> Imaging:
    """The ``imaging`` part: known keys, finite numbers within ``IMAGING_BOUNDS``, a PSF inside ``base``."""
    if not isinstance(imaging, dict) or set(imaging) - IMAGING_KEYS:
        bad = sorted(set(imaging) - IMAGING_KEYS) if isinstance(imaging, dict) else imaging
        raise recipe_error(source, f"'imaging' has unknown key(s) {bad}")
    for key, value in imaging.items():
        if key == "psf":
            continue
        low, high = IMAGING_BOUNDS[key]
        if not is_number(value) or not low <= value <= high or (key == "frames" and not isinstance(value, int)):
            raise recipe_error(source, f"imaging: {key!r} must be a number in [{low:g}, {high:g}], got {value!r}")
    settings = dict(imaging)
    if settings.get("psf") is not None:
        settings["psf"] = psf_path(source, settings["psf"], base)
    try:
        im = Imaging(**settings)
        sigmas = im.sigmas(ndim)
    except (TypeError, ValueError) as e:
        raise recipe_error(source, f"imaging: {e}") from None
    if im.psf is None and math.prod(2 * math.ceil(4 * s) + 1 for s in sigmas) > MAX_PSF_VOXELS:
        raise recipe_error(source, f"imaging: a PSF of sigmas {tuple(round(s, 1) for s in sigmas)} pixels is far too "
                           "large; check 'pixel_size' and 'z_step' (nanometres)")  # fmt: skip
    return im


def psf_path(source: str, psf: Any, base: Path | None) -> str:
    """A recipe's PSF file, relative to the recipe's folder ``base`` and inside it (None: as given)."""
    if not isinstance(psf, str) or not psf:
        raise recipe_error(source, f"imaging: 'psf' must be a file name, got {psf!r}")
    if base is None:
        return psf
    path = base / psf
    if Path(psf).is_absolute() or not path.resolve().is_relative_to(base.resolve()):
        raise recipe_error(source, f"imaging: PSF {psf!r} lies outside the recipe's folder {base}; put the PSF "
                           "beside the recipe and name it relative to it")  # fmt: skip
    return str(path.resolve())


def parse_recipe(d: dict[str, Any], source: str = "recipe", base: Path | None = None, *, saved: bool = False) -> Recipe:
    """Validate a recipe dictionary; every problem names the key at fault.

    ``base``: the folder of the recipe file; a PSF file is named relative to it and must lie inside
    it (a recipe from someone else cannot make carekit read files elsewhere). ``saved``: the recipe
    comes from a model's configuration, where a recipe without ``variation`` was written before
    variation existed and generated its pairs without it.
    """
    if not isinstance(d, dict):
        raise recipe_error(source, "a recipe is a JSON object")
    unknown = sorted(set(d) - {"shape", "channels", "pairs", "seed", "imaging", "variation"})
    if unknown:
        raise recipe_error(source, f"unknown key(s) {', '.join(unknown)}")
    shape = d.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) not in (2, 3)
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 16 for s in shape)
    ):
        raise recipe_error(source, f"'shape' must be 2 or 3 integers >= 16, got {shape!r}")
    if max(shape) > MAX_EDGE or math.prod(shape) > MAX_VOXELS:
        raise recipe_error(source, f"'shape' {shape} is too large; at most {MAX_EDGE} per axis and "
                           f"{MAX_VOXELS:,} pixels per image")  # fmt: skip
    channels = d.get("channels")
    if not isinstance(channels, list) or not channels or not all(isinstance(c, list) and c for c in channels):
        raise recipe_error(source, "'channels' must be a non-empty list of non-empty structure lists")
    if len(channels) > MAX_CHANNELS or any(len(c) > MAX_CHANNELS for c in channels):
        raise recipe_error(source, f"'channels' may hold up to {MAX_CHANNELS} channels of {MAX_CHANNELS} structures")
    for i, channel in enumerate(channels):
        for s in channel:
            kind = s.get("type") if isinstance(s, dict) else None
            if not isinstance(kind, str) or kind not in STRUCTURES:
                raise recipe_error(
                    source, f"channels[{i}]: structure type {kind!r} is unknown; use tubules or granules"
                )
            check_structure(source, f"channels[{i}]", kind, {k: v for k, v in s.items() if k != "type"}, shape)
    imaging = check_imaging(source, d.get("imaging", {}), len(shape), base)
    pairs = d.get("pairs", 100)
    if not isinstance(pairs, int) or isinstance(pairs, bool) or not 2 <= pairs <= MAX_PAIRS:
        raise recipe_error(source, f"'pairs' must be an integer from 2 to {MAX_PAIRS}, got {pairs!r}")
    seed = d.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise recipe_error(source, f"'seed' must be a non-negative integer, got {seed!r}")
    try:
        varied = variation.parse(d.get("variation", False if saved else None))
    except (TypeError, ValueError) as e:
        raise recipe_error(source, str(e)) from None
    return Recipe(tuple(shape), channels, pairs, seed, imaging, varied)


def load_recipe(path: str | Path) -> Recipe:
    p = Path(path)
    if not p.exists():
        raise CarekitError(f"{p}: no such recipe file")
    return parse_recipe(read_json(p), str(p), base=p.parent)


def check_fits(recipe: Recipe, n: int) -> None:
    """Refuse to generate pairs that cannot fit in memory (inputs and targets, float32)."""
    need = 2 * 4 * n * len(recipe.channels) * math.prod(recipe.shape)
    free = psutil.virtual_memory().available
    if need > free:
        raise CarekitError(f"{n} synthetic pairs of shape {list(recipe.shape)} need {need / 2**30:.1f} GiB, more than "
                           f"the {free / 2**30:.1f} GiB available; lower the recipe's 'pairs' or 'shape'")  # fmt: skip


def draw_truths(recipe: Recipe, rng: np.random.Generator, specs: list[list[dict]]) -> list[np.ndarray]:
    """One clean image per channel from the structures' keywords ``specs``."""
    truths = []
    for channel, kwargs in zip(recipe.channels, specs, strict=True):
        t = np.zeros(recipe.shape, np.float32)
        for s, kw in zip(channel, kwargs, strict=True):
            t += STRUCTURES[s["type"]](recipe.shape, rng, **kw)
        truths.append(t)
    return truths


def generate_pair(recipe: Recipe, rng: np.random.Generator, psf: np.ndarray | None = None) -> tuple:
    """One (widefield input, ground truth) pair, each ``(C, *shape)`` float32, varied by the recipe's
    :class:`~carekit.data.variation.Variation` (``psf``: the recipe's kernel, computed once). The truth
    is in the input's units: the camera counts each structure gives before the PSF spreads them."""
    im, v, ndim = recipe.imaging, recipe.variation, len(recipe.shape)
    psf = im.kernel(ndim) if psf is None else psf
    if not v.active:
        specs = [[{k: val for k, val in s.items() if k != "type"} for s in c] for c in recipe.channels]
        truths = draw_truths(recipe, rng, specs)
        imaged = [
            widefield_counts(t, psf, rng, photons=im.photons, background=im.background,
                             background_scale=im.background_scale, read_sigma=im.read_noise, frames=im.frames)
            for t in truths
        ]  # fmt: skip
        return np.stack([low for low, _ in imaged]), np.stack([high for _, high in imaged])
    for _ in range(REDRAWS):  # a sparse draw can leave an image empty, which teaches nothing
        specs = [[variation.structure(s, v, rng, STRUCTURES[s["type"]].__kwdefaults__) for s in c]
                 for c in recipe.channels]  # fmt: skip
        truths = draw_truths(recipe, rng, specs)
        if any(t.max() > t.min() for t in truths):
            break
    drawn = variation.imaging(im, v, rng)
    kernel = psf if drawn["psf_scale"] == 1 else im.kernel(ndim, drawn["psf_scale"])
    fields = [smooth_field(recipe.shape, drawn["background_scale"], rng) for _ in truths]
    if drawn["haze"] > 0:  # out-of-focus structures: the channel's kind drawn again, blurred wide
        wide = im.kernel(ndim, drawn["psf_scale"] * rng.uniform(3, 6)) if im.psf is None else blur(kernel, kernel)
        for i, extra in enumerate(draw_truths(recipe, rng, specs)):
            haze = np.clip(blur(extra, wide), 0, None)
            haze /= haze.max() or 1.0
            fields[i] = (1 - drawn["haze"]) * fields[i] + drawn["haze"] * haze
    imaged = [
        widefield_counts(t, kernel, rng, photons=drawn["photons"], background=drawn["background"],
                         read_sigma=drawn["read_noise"], frames=im.frames, field=f)
        for t, f in zip(truths, fields, strict=True)
    ]  # fmt: skip
    return np.stack([low for low, _ in imaged]), np.stack([high for _, high in imaged])


def generate_pairs(recipe: Recipe, n: int, seed: int, progress: bool = False) -> list[ImagePair]:
    check_fits(recipe, n)
    rng = np.random.default_rng(seed)
    psf = recipe.imaging.kernel(len(recipe.shape))
    out = []
    for i in tqdm(range(n), desc="synthesising", unit="pair", disable=not progress, leave=False):
        low, high = generate_pair(recipe, rng, psf)
        out.append(ImagePair(f"synthetic {i}", low, high))
    return out


def synth(recipe: Recipe | str | Path, n: int, out_dir: str | Path, *, seed: int | None = None) -> list[Path]:
    """Write ``n`` pairs as ``out_dir/low/NNNN.tif`` and ``out_dir/high/NNNN.tif`` for inspection."""
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    if n < 1:
        raise CarekitError(f"--n must be at least 1, got {n}")
    axes = recipe.axes
    written = []
    for i, p in enumerate(generate_pairs(recipe, n, recipe.seed if seed is None else seed)):
        low, high = (p.low, p.high) if "C" in axes else (p.low[0], p.high[0])
        written.append(write_tiff(Path(out_dir) / "low" / f"{i:04d}.tif", low, axes))
        write_tiff(Path(out_dir) / "high" / f"{i:04d}.tif", high, axes)
    return written
