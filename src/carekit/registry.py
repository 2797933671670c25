"""The restoration modes: each file of :mod:`carekit.modes` declares one :class:`Mode` and registers it.

A mode says once what it is: the settings it keeps in the model's configuration, where its training
pairs come from, its network, how it predicts, its command-line options and what it supports. The
training and prediction outlines and the application layer ask the registry and name no mode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from carekit.errors import CarekitError

# what a mode can support: tiled prediction, out-of-core prediction (OME-Zarr, Dask), bioimage.io
# export, test-time augmentation, probabilistic (uncertainty) networks, a z factor given at
# prediction, a height map beside the restoration
# "filter_blend": training may mix a Gaussian filter of the input into the output (carekit.filterblend),
# for modes whose input is its target plus noise
FEATURES = ("tiling", "out_of_core", "export", "tta", "uncertainty", "factor", "height_map", "filter_blend")
TARGETS = ("clean", "noisy", "input")  # what a mode's training targets are (Mode.targets)


@dataclass(frozen=True)
class Option:
    """A command-line option of a mode: its flag, help and argparse keywords (the destination is the
    flag's name, ``--psf-sigma`` -> ``psf_sigma``, a keyword of the mode's training)."""

    flag: str
    help: str
    kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingData:
    """What a mode's data step gives the training outline: its pairs, their axes, the network's
    spatial axes (empty: 3D where the data has Z) and the mode's own configuration part."""

    pairs: list
    axes: str
    spatial: str = ""
    part: Any = None


@dataclass(frozen=True)
class Mode:
    """One restoration mode: what it is, declared once."""

    name: str  # config.mode and --mode
    summary: str  # one line on what it restores
    inputs: tuple[str, ...]  # its training inputs by keyword (low, high, input, recipe, ...), also --flags
    data: Callable[..., TrainingData]  # (inputs, resumed config or None, settings) -> where its pairs come from
    model: type  # the CARE class that predicts for it
    settings: tuple[str, ...] = ()  # its own training keywords, beside the configuration's fields
    part: str | None = None  # the Config field that holds its own settings ...
    part_type: type | None = None  # ... and the class that validates them
    check: Callable[[Any], None] | None = None  # its requirements on a Config (axes), raising CarekitError
    net: Callable[[Any], Any] | None = None  # its network for a Config; default the U-Net of config.net
    net_defaults: dict | None = None  # network settings where the configuration leaves them open
    train_defaults: dict | None = None  # training settings where the user gives none (e.g. its loss)
    sampler_options: dict | None = None  # keywords of its patch sampler (e.g. no rotations)
    sampler: Callable[[Any, Any], Any] | None = None  # (patch sampler, Config) -> the Sampler training draws from
    cite: Callable[[Any], tuple] | None = None  # Config -> ((reference, DOI), ...) of its method; default CARE's
    options: tuple[Option, ...] = ()  # its options of 'carekit train'
    supports: frozenset[str] = frozenset({"tiling", "uncertainty"})  # which FEATURES
    finish: Callable[[Any, TrainingData], None] | None = None  # (trained model, its data): measured after training
    warm_start: str | None = None  # the shipped pretrained network family it starts from (carekit.pretrained)
    # what it trains towards: "clean" images, "noisy" ones (independent noise, as Noise2Noise's) or
    # "input", the noisy input itself (blind-spot training, as Noise2Void's)
    targets: str = "clean"

    def __post_init__(self) -> None:
        unknown = set(self.supports) - set(FEATURES)
        if unknown:
            raise ValueError(f"mode {self.name}: unknown features {sorted(unknown)}; use {', '.join(FEATURES)}")
        if self.targets not in TARGETS:
            raise ValueError(f"mode {self.name}: unknown targets '{self.targets}'; use {', '.join(TARGETS)}")


MODES: dict[str, Mode] = {}


def register(mode: Mode) -> Mode:
    """Make ``mode`` known by its name (a module of :mod:`carekit.modes` calls this on import)."""
    MODES[mode.name] = mode
    return mode


def supporting(feature: str) -> str:
    """The names of the modes that support ``feature``, as a phrase: "denoise and synthetic"."""
    names = [m.name for m in MODES.values() if feature in m.supports]
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


def mode_of(name: str) -> Mode:
    """The registered mode called ``name``."""
    if name not in MODES:
        raise CarekitError(f"mode '{name}' is unknown; use one of {', '.join(MODES)}")
    return MODES[name]
