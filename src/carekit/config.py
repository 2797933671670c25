"""One configuration object per model, validated on construction, saved as JSON.

Every default is written here once. ``config.json`` in a model folder holds the
whole configuration plus the carekit version and a format number that guards
against reading folders from an incompatible carekit.
"""

from __future__ import annotations

import itertools
import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from typing import Any

from carekit._version import __version__
from carekit.axes import check_axes
from carekit.engine import PRECISIONS
from carekit.errors import CarekitError
from carekit.registry import mode_of
from carekit.uncertainty import PIT_GRID

FORMAT_VERSION = 1
LOSSES = ("mae", "mse")
SCHEDULES = ("plateau", "cosine")
INITS = ("pretrained", "scratch")
# Bounds far beyond any useful setting, so that a damaged or hostile config.json cannot ask for a
# network of terabytes or a patch larger than any microscope image.
MAX_PARAMETERS = 2 * 10**8  # the estimate of ``parameter_estimate`` (an upper bound)
MAX_CHANNELS = 4096
MAX_PATCH = 4096
MAX_BATCH = 65536
MAX_SEED = 2**63 - 1


def require(ok: bool, message: str) -> None:
    """Raise ``CarekitError(message)`` unless ``ok``."""
    if not ok:
        raise CarekitError(message)


def check_types(obj: Any, where: str = "") -> None:
    """Check (and convert: lists to tuples, ints to floats) every field of dataclass ``obj`` against
    its type hint, so that a configuration read from a file fails with one line naming the field
    rather than deep inside the code. Floats must be finite."""
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        setattr(obj, f.name, checked(getattr(obj, f.name), hints[f.name], where + f.name))


def checked(value: Any, hint: Any, name: str) -> Any:
    """``value`` if it has type ``hint`` (converted where harmless), else a :class:`CarekitError`."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    options = typing.get_args(hint) if union else (hint,)
    if value is None and type(None) in options:
        return None
    for kind in options:
        ok, converted = converted_to(value, kind)
        if ok:
            return converted
    wanted = " or ".join(type_name(k) for k in options)
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    raise CarekitError(f"{name} must be {wanted}, got {shown}")


def converted_to(value: Any, kind: Any) -> tuple[bool, Any]:
    """Whether ``value`` is of ``kind`` (a type hint), and the value to keep."""
    origin = typing.get_origin(kind)
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is Any:
        return True, value
    if kind is bool or kind is str:
        return isinstance(value, kind), value
    if kind is int:
        return is_number and isinstance(value, int), value
    if kind is float:
        ok = is_number and math.isfinite(value)
        return ok, float(value) if ok else value
    if origin is tuple:
        ok = isinstance(value, (list, tuple)) and all(converted_to(v, int)[0] for v in value)
        return ok, tuple(value) if ok else value
    if origin is list:  # list[X]: every item an X (nested lists for masks)
        items = [converted_to(v, typing.get_args(kind)[0]) for v in value] if isinstance(value, list) else None
        ok = items is not None and all(good for good, _ in items)
        return ok, [v for _, v in items] if ok else value
    if kind is dict or origin is dict:
        return isinstance(value, dict), value
    if is_dataclass(kind):
        return isinstance(value, (kind, dict)), value
    return False, value


def type_name(kind: Any) -> str:
    names = {bool: "true or false", str: "a string", int: "an integer", float: "a finite number",
             type(None): "null"}  # fmt: skip
    if kind in names:
        return names[kind]
    if typing.get_origin(kind) is tuple:
        return "a list of integers"
    if typing.get_origin(kind) is list:
        item = type_name(typing.get_args(kind)[0]).removeprefix("an ").removeprefix("a ")
        return f"a list of {'lists' + item.removeprefix('list') if item.startswith('list') else item + 's'}"
    return "an object"


def parameter_estimate(ndim: int, channels: tuple[int, int], depth: int, n_first: int, kernel: int,
                       n_conv: int) -> int:  # fmt: skip
    """An upper bound of a U-Net's parameter count (each level's convolutions at twice its features)."""
    features = [n_first * 2**level for level in range(depth + 1)]
    per_kernel = kernel**ndim
    body = sum(2 * n_conv * (2 * f) ** 2 for f in features)
    return per_kernel * (channels[0] * n_first + body) + n_first * 2 * channels[1]


def default_spatial(axes: str) -> str:
    """The network's axes for data with ``axes``: 3D where there is a Z axis."""
    return "ZYX" if "Z" in axes.upper() else "YX"


# Plain denoising defaults: at equal training time on the demo, kernel 3 restores better than
# the CARE paper's network. The residual is chosen from the training data when training starts
# (``residual_for``), and batch normalisation, unless given, goes against the residual: on
# without it, off with it (demo data at 100 photons, where the residual is on, 2 minutes, seeds
# 0 / 1: 26.72 / 26.80 dB without batch norm against 26.53 / 26.56 with it); both are settled
# by ``NetConfig.settled``. Probabilistic models take the same network (and the warm start): with
# the paper's network from random weights their mean restored the demo 1.0 dB worse after 300 steps.
FAST_DENOISE = {"kernel_size": 3}
# Isotropic, upsampling, projection and synthetic training: kernel 3 with batch normalisation
# and the residual (their benchmarks and tests were measured with this network; the synthetic
# restoration test falls below its margin without batch normalisation).
RESTORE_NET = {"kernel_size": 3, "batch_norm": True, "residual": True}
# Input-vs-target PSNR of the training pairs (dB, the paper's procedure) from which the
# residual pays: on the demo data, 2 minutes of training, it costs 0.58 dB at 10 photons
# (training inputs at 18.3 dB) and gains 0.22 dB at 100 photons (24.4 dB); the threshold
# sits halfway.
RESIDUAL_FROM_DB = 21.0
# Percentile jitter in training (``TrainConfig.intensity_jitter``) goes with the residual: on
# the demo data (2 minutes, seeds 0 and 1) fixed percentiles restore 0.24 dB better at 10
# photons, where the residual is off (21.63 against 21.39 dB), and jittered ones 0.06 dB
# better at 100 photons, where it is on (26.54 against 26.49 dB); after 4 minutes of training,
# +0.37 dB at 10 photons and -0.04 to -0.14 dB at 100 (two jittered runs). Other modes keep
# the residual, so they keep the jitter.


# Max pooling and every skip connection, unless a mode's defaults say otherwise (N2V2 does).
PLAIN_POOLING = {"blur_pool": False, "top_skip": True}


@dataclass
class NetConfig:
    """The U-Net. ``kernel_size``, ``batch_norm`` and ``residual`` left None take the mode's default.

    Plain (not probabilistic) denoising defaults to kernel 3 and leaves the residual and batch
    normalisation open until training looks at the data (``FAST_DENOISE``, ``settled``); the
    other modes default to kernel 3 with batch normalisation and the residual (``RESTORE_NET``);
    probabilistic models take their mode's defaults too. ``residual`` adds the
    input back only when channel counts match. ``probabilistic`` adds a Laplace scale head
    (trained by negative log-likelihood). ``blur_pool`` and ``top_skip`` left None take the mode's
    default, else max pooling and the top skip connection (N2V2 turns both: blur pooling, no top
    skip). ``independent_channels`` restores each channel with a network of its own.
    """

    depth: int = 2
    n_first: int = 32
    kernel_size: int | None = None
    n_conv: int = 2
    residual: bool | None = None
    batch_norm: bool | None = None
    probabilistic: bool = False
    blur_pool: bool | None = None
    top_skip: bool | None = None
    independent_channels: bool = False

    def resolved(self, ndim: int, mode_defaults: dict[str, Any] = RESTORE_NET) -> NetConfig:
        """The mode's defaults filled in where a setting is None (a mode that leaves the residual and
        batch normalisation open has them settled by ``settled``)."""
        defaults = {**PLAIN_POOLING, **mode_defaults}
        chosen = {k: v if (v := getattr(self, k)) is not None else d for k, d in defaults.items()}
        out = replace(self, **chosen)
        out.validate()
        return out

    def __post_init__(self) -> None:
        check_types(self, "net.")

    def settled(self, residual: bool | None = None) -> NetConfig:
        """Every choice made: a residual still open takes ``residual`` (none where that is None
        too), and batch normalisation still open goes against the residual."""
        chosen = self.residual if self.residual is not None else bool(residual)
        return replace(self, residual=chosen, batch_norm=self.batch_norm if self.batch_norm is not None else not chosen)

    def validate(self) -> None:
        require(1 <= self.depth <= 6, f"net depth must be 1..6, got {self.depth}")
        require(1 <= self.n_first <= 1024, f"n_first must be 1..1024, got {self.n_first}")
        require(
            self.kernel_size is None or (1 <= self.kernel_size <= 31 and self.kernel_size % 2 == 1),
            f"kernel size must be an odd number from 1 to 31, got {self.kernel_size}",
        )
        require(1 <= self.n_conv <= 8, f"n_conv must be 1..8, got {self.n_conv}")

    def check_size(self, ndim: int, channels: tuple[int, int]) -> None:
        """Refuse a network too large to build (a damaged configuration could ask for terabytes)."""
        n = parameter_estimate(ndim, channels, self.depth, self.n_first, self.kernel_size or 5, self.n_conv)
        require(n <= MAX_PARAMETERS, f"net: depth {self.depth}, {self.n_first} first features, kernel "
                f"{self.kernel_size} and {channels[0]} -> {channels[1]} channels make up to {n:.1e} parameters; "
                f"carekit builds at most {MAX_PARAMETERS:.0e}; choose a smaller depth, n_first or kernel")  # fmt: skip


def default_patches(ndim: int) -> tuple[tuple[int, ...], int]:
    """Patch size and batch size by default, every mode. In 2D, fewer but larger patches
    restored better at equal training time on the demo (same pixels per step); in 3D, 4 patches
    instead of 16 gave four times the steps in 2 minutes and the better restoration on both 3D
    datasets of the quality benchmark."""
    return ((16, 64, 64), 4) if ndim == 3 else ((96, 96), 8)


@dataclass
class TrainConfig:
    """How training runs. ``patch_size`` and ``batch_size`` None take the defaults of
    ``default_patches``: 8 patches of 96x96 (2D) or 4 of 16x64x64 (3D).

    ``lr_schedule``: ``"plateau"`` halves the learning rate after ``lr_patience`` epochs
    without validation improvement; ``"cosine"`` decays it smoothly to zero over the
    run (over the time budget, when one is given).

    ``init``: ``"pretrained"`` starts from the generic network shipped with carekit where the mode
    and network have one (see :mod:`carekit.pretrained`), ``"scratch"`` from random weights.

    ``int8``: end training by quantizing a copy of the network and keeping it for prediction on
    CPUs where it scores within 0.05 dB of float32 on the validation patches (see
    :mod:`carekit.quantize`).

    ``filter_blend``: end training by fitting, on the validation patches, a mix of the network's
    output with a Gaussian filter of its input (:mod:`carekit.filterblend`), kept where it scores
    better there; for point networks whose input and target share their shape and channels.

    ``ema``: where above 0, training also keeps an exponential moving average of the weights with
    this decay per step, and each epoch's validation scores both: the better one is what the epoch
    may keep as best (without a validation split, the average is saved). Off unless a mode sets it
    (denoising does). ``intensity_jitter``: normalise training
    patches with randomly drawn percentiles (see ``PatchSampler``); left None, it follows the
    residual: on where the network adds its input back (see ``RESIDUAL_FROM_DB``).
    """

    loss: str = "mae"
    epochs: int = 100
    steps_per_epoch: int = 400
    batch_size: int | None = None
    learning_rate: float = 4e-4
    lr_schedule: str = "plateau"
    lr_patience: int = 10
    lr_factor: float = 0.5
    ema: float = 0.0
    intensity_jitter: bool | None = None
    redraw: float = 0.0
    patch_size: tuple[int, ...] | None = None
    validation_fraction: float = 0.1
    validation_patches: int = 64
    background_threshold: float = 0.4
    augment: bool = True
    seed: int = 0
    precision: str = "auto"
    init: str = "pretrained"
    int8: bool = True
    filter_blend: bool = True

    def __post_init__(self) -> None:
        check_types(self, "train.")
        self.validate()

    def resolved(self, ndim: int) -> TrainConfig:
        default_patch, default_batch = default_patches(ndim)
        patch = self.patch_size or default_patch
        require(len(patch) == ndim, f"patch size {patch} needs {ndim} entries for a {ndim}D network")
        batch = self.batch_size or default_batch
        return TrainConfig(**{**asdict(self), "patch_size": tuple(patch), "batch_size": batch})

    def validate(self) -> None:
        require(self.loss in LOSSES, f"loss '{self.loss}' is unknown; use one of {', '.join(LOSSES)}")
        require(1 <= self.epochs <= 10**7, f"epochs must be 1..10000000, got {self.epochs}")
        require(1 <= self.steps_per_epoch <= 10**8, f"steps per epoch must be 1..100000000, got {self.steps_per_epoch}")
        batch = self.batch_size
        require(batch is None or 1 <= batch <= MAX_BATCH, f"batch size must be 1..{MAX_BATCH}, got {batch}")
        require(self.learning_rate > 0, f"learning rate must be positive, got {self.learning_rate}")
        require(self.lr_patience >= 0, f"lr patience must be 0 or more epochs, got {self.lr_patience}")
        require(0 <= self.seed <= MAX_SEED, f"seed must be a non-negative integer, got {self.seed}")
        require(
            self.lr_schedule in SCHEDULES, f"lr schedule '{self.lr_schedule}' is unknown; use {', '.join(SCHEDULES)}"
        )
        require(0 < self.lr_factor < 1, f"lr factor must be in (0, 1), got {self.lr_factor}")
        require(0 <= self.ema < 1, f"ema must be in [0, 1) (0 turns it off), got {self.ema}")
        jitter = self.intensity_jitter
        require(jitter is None or isinstance(jitter, bool), f"intensity jitter must be true, false or null: {jitter}")
        require(0 <= self.redraw <= 1, f"redraw must be a share in [0, 1] (0 turns it off), got {self.redraw}")
        require(0 <= self.validation_fraction < 1, "validation fraction must be in [0, 1)")
        require(0 <= self.validation_patches <= 10**6, "validation patches must be 0..1000000")
        require(0 <= self.background_threshold < 1, "background threshold must be in [0, 1)")
        require(self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}")
        require(self.init in INITS, f"init '{self.init}' is unknown; use one of {', '.join(INITS)}")
        if self.patch_size is not None:
            patch = self.patch_size
            require(len(patch) in (2, 3), f"patch size needs 2 (YX) or 3 (ZYX) entries, got {patch}")
            require(all(1 <= p <= MAX_PATCH for p in patch), f"patch size must be 1..{MAX_PATCH} per axis, got {patch}")


# Every NetConfig and TrainConfig field is a flag of 'carekit train' (``--kernel-size`` for
# ``kernel_size``); these are the flags' help texts and choices (a field without help shows its default).
FIELD_HELP = {
    "loss": "mse or mae (default: mse for denoising, synthetic, Noise2Void and Noise2Noise; mae for the other modes)",
    "int8": "keep an int8 copy for fast CPU prediction where it scores within 0.05 dB of float32 (default on)",
    "filter_blend": "mix a Gaussian filter of the input into the output where that scores better on the validation "
    "patches (default on)",
    "kernel_size": "convolution kernel edge (default 3)",
    "batch_norm": "batch normalisation after convolutions (denoising default: on without the residual, off with it)",
    "residual": "add the input to the output (denoising default: on when inputs are within 21 dB PSNR of targets)",
    "depth": "pooling steps of the U-Net (default 2)",
    "n_first": "features of the first level (default 32)",
    "probabilistic": "predict a Laplace distribution per pixel",
    "blur_pool": "blur pooling instead of max pooling (n2v default: on, against checkerboard artefacts)",
    "top_skip": "the top level's skip connection (n2v default: off, against checkerboard artefacts)",
    "independent_channels": "one network per channel instead of one for all channels jointly",
    "patch_size": "e.g. 64,64 (2D) or 16,64,64 (3D)",
    "ema": "also keep a running average of the weights, this decay per step; save whichever validates better "
    "(denoising default 0.99; 0: off)",
    "intensity_jitter": "normalise patches with random percentiles (default: with the residual, else 2 and 99.8)",
    "redraw": "share of training inputs drawn afresh around their targets with the camera noise fitted to each "
    "pair (denoising default 1: all, where a pair's input is its target plus white noise; 0: off)",
    "validation_fraction": "share of the pixels held out for validation (default 0.1)",
    "init": "start from carekit's pre-trained network where there is one (default), or from scratch",
}
FIELD_CHOICES = {"loss": LOSSES, "lr_schedule": SCHEDULES, "precision": PRECISIONS, "init": INITS}


@dataclass
class Config:
    """Everything that defines a model: what it restores, its network and its training."""

    axes: str = "YX"
    mode: str = "denoise"
    spatial: str = ""
    n_channel_in: int = 1
    n_channel_out: int = 1
    net: NetConfig = field(default_factory=NetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    intensity_map: dict[str, list[float]] | None = None
    # the modes' own settings, each under the name its mode declares (``Mode.part``)
    axial: Any = None
    projection: Any = None
    synthetic: dict[str, Any] | None = None
    n2v: Any = None
    calibration: dict[str, Any] | None = None
    baseline: dict[str, Any] | None = None  # the network against the best simple filter (carekit.margin)
    int8: dict[str, Any] | None = None  # the quantized copy's check on validation (carekit.quantize)
    redraw: dict[str, Any] | None = None  # which training pairs had their inputs redrawn (carekit.sampling)
    blend: dict[str, Any] | None = None  # the fitted mix with a Gaussian filter of the input (carekit.filterblend)

    def __post_init__(self) -> None:
        check_types(self)
        kind = mode_of(self.mode)
        if kind.part_type is not None and isinstance(getattr(self, kind.part), dict):
            setattr(self, kind.part, kind.part_type(**getattr(self, kind.part)))
        if kind.part_type is not None and is_dataclass(getattr(self, kind.part)):
            check_types(getattr(self, kind.part), f"{kind.part}.")
        if isinstance(self.net, dict):
            self.net = NetConfig(**self.net)
        if isinstance(self.train, dict):
            self.train = TrainConfig(**self.train)
        self.axes = check_axes(self.axes, what="model axes")
        self.spatial = self.spatial or default_spatial(self.axes)
        require(self.spatial in ("YX", "ZYX"), f"spatial axes must be YX or ZYX, got {self.spatial}")
        require(all(a in self.axes for a in self.spatial), f"axes '{self.axes}' lack the network's axes {self.spatial}")
        channels = (self.n_channel_in, self.n_channel_out)
        require(all(1 <= c <= MAX_CHANNELS for c in channels), f"channels must be 1..{MAX_CHANNELS}, got {channels}")
        check_intensity_map(self.intensity_map, self.n_channel_out)
        check_calibration(self.calibration)
        check_blend(self.blend, self.n_channel_out, len(self.spatial))
        refused = self.blend and self.why_no_blend()
        require(not refused, f"blend: this model takes no filter blend ({refused}); train the model again or "
                "remove 'blend' from its config.json")  # fmt: skip
        require(not self.net.independent_channels or self.n_channel_in == self.n_channel_out,
                f"independent channels restore each channel by itself, but the model maps {self.n_channel_in} "
                f"to {self.n_channel_out} channel(s); train without --independent-channels")  # fmt: skip
        if kind.check is not None:
            kind.check(self)
        self.net = self.net.resolved(self.ndim, kind.net_defaults or RESTORE_NET)
        self.net.check_size(self.ndim, channels)
        self.train = self.train.resolved(self.ndim)

    @property
    def ndim(self) -> int:
        return len(self.spatial)

    def why_no_blend(self) -> str | None:
        """Why this model cannot take a filter blend (``carekit.filterblend``; None: it can)."""
        kind = mode_of(self.mode)
        if "filter_blend" not in kind.supports:
            return f"{kind.name} models' inputs are not their targets plus noise"
        if kind.targets != "clean":
            return "no clean validation targets"
        if self.net.probabilistic:
            return "a probabilistic network's scales belong to its own output"
        if self.n_channel_in != self.n_channel_out:
            return "its input and output channels differ"
        return None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["train"]["patch_size"] = list(self.train.patch_size)
        return {"format_version": FORMAT_VERSION, "carekit_version": __version__, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "config") -> Config:
        d = dict(d)
        version = d.pop("format_version", None)
        written_by = d.pop("carekit_version", "unknown")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise CarekitError(f"{source}: format_version {version!r} is not a model format number; the file is "
                               "damaged or not a carekit model")  # fmt: skip
        if version > FORMAT_VERSION:
            raise CarekitError(
                f"{source}: model format {version} (written by carekit {written_by}) is newer than this "
                f"carekit reads (format {FORMAT_VERSION}); upgrade carekit"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise CarekitError(f"{source}: unknown settings {', '.join(unknown)}; the model needs a newer carekit")
        try:
            return cls(**d)
        except TypeError as e:
            raise CarekitError(f"{source}: damaged configuration ({e})") from None
        except CarekitError as e:
            raise CarekitError(f"{source}: {e}; the configuration is damaged or from another program") from None


def numbers(
    values: Any, length: int | None = None, low: float = -math.inf, high: float = math.inf, ascending: bool = False
) -> bool:
    """Whether ``values`` is a list (of ``length`` items, if given) of finite numbers in [low, high],
    non-decreasing where ``ascending``: what a configuration file must hold for a table."""
    if not isinstance(values, list) or (length is not None and len(values) != length):
        return False
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and low <= v <= high for v in values):
        return False
    finite = all(math.isfinite(v) for v in values)
    return finite and (not ascending or all(a <= b for a, b in itertools.pairwise(values)))


def check_intensity_map(imap: dict | None, channels: int) -> None:
    """An intensity map holds one finite gain and offset per output channel."""
    if imap is None:
        return
    for key in ("gain", "offset"):
        values = imap.get(key)
        ok = numbers(values, channels)
        require(ok, f"intensity_map.{key} must be {channels} finite number(s), got {values!r:.60}")


def check_blend(blend: dict | None, channels: int, ndim: int) -> None:
    """A filter blend holds a Gaussian width per spatial axis (0 to 16 pixels) and, per output channel,
    a weight, gain and offset (finite numbers)."""
    if not blend:
        return
    ok = numbers(blend.get("sigma"), ndim, 0.0, 16.0) and any(s > 0 for s in blend["sigma"])
    ok = ok and all(numbers(blend.get(k), channels) for k in ("weight", "gain", "offset"))
    require(ok, f"blend must hold sigma ({ndim} widths of 0-16 pixels) and {channels} weight(s), gain(s) and "
            "offset(s); train the model again or remove 'blend' from its config.json")  # fmt: skip


def check_calibration(calibration: dict | None) -> None:
    """A calibration holds its tables: non-decreasing probabilities at ``PIT_GRID``, the pooled one under
    ``pit`` and, for a calibration by predicted intensity, one per bin at increasing centres and edges."""
    if not calibration:
        return
    table = {"length": len(PIT_GRID), "low": 0.0, "high": 1.0, "ascending": True}
    ok = numbers(calibration.get("pit"), **table)
    require(ok, f"calibration.pit must be {len(PIT_GRID)} non-decreasing probabilities; calibrate the model again")
    if "tables" in calibration or "centres" in calibration:  # per predicted-intensity bin (carekit.calibration)
        tables, centres = calibration.get("tables"), calibration.get("centres")
        ok = numbers(centres, ascending=True) and 1 <= len(centres) <= 1000
        ok = ok and isinstance(tables, list) and len(tables) == len(centres)
        ok = ok and all(numbers(t, **table) for t in tables)
        edges = calibration.get("edges", [])
        ok = ok and (edges == [] or numbers(edges, len(centres) - 1, ascending=True))
        require(ok, "calibration.tables must hold one non-decreasing table per bin at increasing centres and edges; "
                "calibrate the model again")  # fmt: skip
