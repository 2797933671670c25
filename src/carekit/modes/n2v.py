"""Noise2Void: restoration learnt from the noisy images alone (Krull et al. 2019).

No clean image is needed: the network is trained on the very images it will restore, with blind
spots (:mod:`carekit.data.blindspot`) so that it cannot copy a pixel's noise into its own
prediction. The N2V2 changes (Hock et al. 2022) are the default: blur pooling, no skip connection
at the top level and median replacement without the hidden pixel, which together keep the
checkerboard artefacts of plain Noise2Void away. A new 2D model starts from the shipped network of
that architecture (``carekit/pretrained/n2v-2d``, pre-trained on synthetic pairs) so that minutes
of blind-spot training on the user's images are enough; ``init="scratch"`` opts out.

A blind-spot network never reads the pixel it estimates; where the camera's noise is weak that
pixel holds much of the answer. Training ends by measuring, from the training images alone, the
camera's noise and how far the network's estimates stray from the noisy pixels per intensity;
restorations then weigh each noisy pixel in by the share that minimises the expected error
(:mod:`carekit.noise`; ``posterior=False`` or ``--no-posterior`` leaves it out, as does a
structured mask, whose noise is not independent between pixels).

A structured mask (structN2V, Broaddus et al. 2020) hides the pixels whose noise is correlated
with the hidden one (line noise of scanning or sCMOS cameras). The result is in the input's
intensity units; prediction, tiling, out-of-core prediction, test-time augmentation and export
are those of every denoising model (an exported package holds the network's estimate alone).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from carekit.config import Config, default_spatial, numbers, require
from carekit.data.blindspot import REPLACEMENTS, BlindSpots, hide, struct_mask
from carekit.data.noisy import own_targets, read_all
from carekit.errors import CarekitError
from carekit.io import read_image, write_json
from carekit.model import CARE, CONFIG
from carekit.modes.denoise import AXES
from carekit.noise import Camera, Posterior, camera_from_repeats, fit_camera, fit_posterior, reliance
from carekit.registry import Mode, Option, TrainingData, register
from carekit.sampling import PatchSampler, augmented
from carekit.training import train_mode

N2V_CITE = (
    ("Krull, Buchholz & Jug (2019), Noise2Void - learning denoising from single noisy images. CVPR 2019.",
     "10.1109/CVPR.2019.00223"),
    ("Hock et al. (2022), N2V2 - fixing Noise2Void checkerboard artifacts with modified sampling strategies and a "
     "tweaked network architecture. ECCV 2022 Workshops.", "10.1007/978-3-031-25069-9_33"),
)  # fmt: skip
STRUCT_CITE = (
    "Broaddus et al. (2020), Removing structured noise with self-supervised blind-spot networks. ISBI 2020.",
    "10.1109/ISBI45749.2020.9098336",
)


@dataclass
class N2VConfig:
    """How blind spots are made in training (see :class:`~carekit.data.blindspot.BlindSpots`):
    ``masked_fraction`` of each patch's pixels, replaced by ``replacement`` from the window of edge
    ``window``, hidden with ``struct_mask`` (0/1 nested lists, centred; None: the pixel alone)."""

    masked_fraction: float = 0.02
    replacement: str = "median"
    window: int = 5
    struct_mask: list[int] | list[list[int]] | list[list[list[int]]] | None = None  # 1 to 3 axes
    # weigh the noisy pixel in where the camera's noise is weak (carekit.noise); training fills ``blend``
    posterior: bool = True
    # the camera's noise variance a * intensity + b (at least floor) in the images' units, [a, b, floor],
    # read from frames of a static scene (--noise-calibration); None: read from the training images
    camera: list[float] | None = None
    blend: dict[str, list[float]] | None = None  # camera [a, b, floor], centres and weights

    def __post_init__(self) -> None:
        if self.struct_mask is not None:
            self.struct_mask = struct_mask(self.struct_mask).tolist()
        self.spots()  # validates
        if self.camera is not None:
            self.camera = list(self.camera) if isinstance(self.camera, tuple) else self.camera
            ok = numbers(self.camera, 3) and self.camera[0] >= 0 and self.camera[2] > 0
            require(ok, "n2v.camera must be [a, b, floor]: the noise variance a * intensity + b (a >= 0), at least "
                        "floor (> 0)")  # fmt: skip
        if self.blend is not None:
            b = self.blend
            ok = isinstance(b, dict) and numbers(b.get("camera"), 3) and numbers(b.get("centres"), ascending=True)
            ok = ok and numbers(b.get("weights"), len(b["centres"]), 0.0, 1.0) and len(b["centres"]) > 0
            require(ok, "n2v.blend must hold camera [a, b, floor], increasing centres and one weight in [0, 1] "
                        "per centre; train the model again")  # fmt: skip

    def posterior_blend(self) -> Posterior | None:
        """The noisy pixel's share in the restoration, where training measured one and it is wanted."""
        return Posterior.from_dict(self.blend) if self.posterior and self.blend is not None else None

    def spots(self) -> BlindSpots:
        struct = None if self.struct_mask is None else np.asarray(self.struct_mask, np.uint8)
        return BlindSpots(self.masked_fraction, self.replacement, self.window, struct)


SETTINGS = ("masked_fraction", "replacement", "window", "struct_mask", "posterior")  # N2VConfig's, training keywords
CALIBRATION = "noise_calibration"  # frames of a static scene (array or TIFF), read into N2VConfig.camera
# the Laplace scale of a network trained on noisy targets would be the noise's, not the restoration's uncertainty
NO_DISTRIBUTION = ("{mode} models predict no distribution: their noisy targets would make it the noise's; train "
                   "without --probabilistic (an --ensemble still averages its members)")  # fmt: skip


class BlindSpotSampler:
    """Batches ``(input with blind spots, noisy patch, mask of the hidden pixels)`` from a
    :class:`PatchSampler` over images that are their own targets.

    Blind spots are made before the flips and rotations, so a structured mask stays aligned with
    the camera's noise whatever the augmentation.
    """

    def __init__(self, patches: PatchSampler, spots: BlindSpots) -> None:
        self.patches, self.spots = patches, spots
        self.augment, patches.augment = patches.augment, False
        self.rotate = patches.rotate and patches.patch[-1] == patches.patch[-2]
        self.intensity_map = patches.intensity_map

    def batch(self, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x, _ = self.patches.batch(rng, size)
        hidden, mask = hide(rng, x, self.spots)
        if self.augment:
            triples = [augmented(rng, t, self.rotate) for t in zip(hidden, x, mask, strict=True)]
            hidden, x, mask = (np.stack(a) for a in zip(*triples, strict=True))
        return hidden, x, mask

    def batches(self, seed, steps: int, size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        rng = np.random.default_rng(seed)
        for _ in range(steps):
            yield self.batch(rng, size)

    def validation(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Held-out patches with fixed blind spots."""
        held = self.patches.validation(n, seed)
        if held is None:
            return None
        hidden, mask = hide(np.random.default_rng([seed, 1]), held[0], self.spots)
        if len(held) > 2:  # a thin slab's windows: only the blind spots on held-out pixels count
            mask = mask * held[2]
        return hidden, held[0], mask


class N2VModel(CARE):
    """A Noise2Void model: the network's estimate, with the noisy pixel weighed in by the share
    training measured for each intensity (``n2v.blend``, see :mod:`carekit.noise`)."""

    def to_intensities(self, y, lo, hi, x=None):
        mean, scale = super().to_intensities(y, lo, hi)
        blend = self.config.n2v.posterior_blend()
        if blend is not None and x is not None:
            blend.apply(np.asarray(x, np.float32), mean)
        return mean, scale


POSTERIOR_PIXELS = 2_000_000  # pixels of the training images restored to measure the blend


def measure_blend(model: CARE, data: TrainingData) -> None:
    """After training: the noisy pixel's share per intensity (:func:`fit_blend`) from the training images."""
    fit_blend(model, [p.low for p in data.pairs])


def fit_blend(model: CARE, noisy: list[np.ndarray]) -> None:
    """The camera's noise (``n2v.camera`` where given, else read from ``noisy``) and the noisy pixel's
    share per intensity, from the noisy images (channels first, then the model's spatial axes), the
    network's restoration of them and how far it follows each pixel's own noise (no clean image);
    stored in the model's configuration.
    Left out for a structured mask (its noise is not independent between pixels)."""
    part = model.config.n2v
    part.blend = None
    if not part.posterior or part.struct_mask is not None:
        return
    step = max(1, int(np.ceil(sum(a.size for a in noisy) / POSTERIOR_PIXELS)))
    noisy = noisy[::step]
    given = part.camera is not None
    camera = Camera(*part.camera) if given else fit_camera([c for a in noisy for c in a])  # each channel's planes
    axes = "C" + model.config.spatial
    estimates = [model.predict(a, axes) for a in noisy]
    rng = np.random.default_rng(0)
    reliances = [reliance(lambda b: model.predict(b, axes), a, camera, rng) for a in noisy]
    table = fit_posterior(noisy, estimates, camera, reliances)
    part.blend = {"camera": [camera.a, camera.b, camera.floor], **table.to_dict()}
    if model.directory is not None:
        write_json(model.directory / CONFIG, model.config.to_dict())


def check_n2v(config: Config) -> None:
    require(config.n2v is not None, "n2v models need their blind-spot settings")
    require(not config.net.probabilistic, NO_DISTRIBUTION.format(mode="n2v"))


def n2v_data(inputs: dict, saved: Config | None, settings: dict) -> TrainingData:
    images = inputs.get("input")
    if images is None:
        raise CarekitError("n2v training needs --input: the noisy images to restore (a file, folder or array)")
    found, axes = read_all(images, saved.axes if saved else inputs.get("axes"))
    spatial = saved.spatial if saved else settings.get("spatial") or default_spatial(axes)
    part = saved.n2v if saved else N2VConfig(**{k: settings[k] for k in SETTINGS if settings.get(k) is not None})
    if settings.get(CALIBRATION) is not None and not saved:
        part.camera = list(calibrated_camera(settings[CALIBRATION]))
    return TrainingData(own_targets(found, axes, spatial), axes, spatial, part)


def calibrated_camera(frames) -> tuple[float, float, float]:
    """``(a, b, floor)`` of the noise variance ``a * intensity + b`` (at least ``floor``) read from
    ``frames``: an array or a TIFF file of two or more frames of one static scene along its first axis."""
    what = "--noise-calibration"
    if isinstance(frames, (str, Path)):
        what = f"--noise-calibration {frames}"
        frames = read_image(frames)[0]
    camera = camera_from_repeats(np.asarray(frames), what)
    return camera.a, camera.b, camera.floor


def n2v_cite(config: Config) -> tuple:
    return N2V_CITE + ((STRUCT_CITE,) if config.n2v.struct_mask is not None else ())


# N2V2's network: kernel 3, batch norm, no residual (the hidden pixel's replacement must not be
# added back), blur pooling and no top skip connection
N2V_NET = {"kernel_size": 3, "batch_norm": True, "residual": False, "blur_pool": True, "top_skip": False}
# MSE: its minimiser is the noisy pixels' mean, the clean signal for zero-mean noise (MAE would
# give their median, biased for Poisson noise at a few photons)
N2V_TRAINING = {"loss": "mse", "learning_rate": 1e-3, "lr_schedule": "cosine"}

CALIBRATION_HELP = ("two or more frames of one static scene (any sample) taken one after another with the "
                    "camera settings of --input, as a TIFF with the frames along its first axis: the camera's "
                    "noise is read from them instead of from --input")  # fmt: skip
STRUCT_HELP = "structN2V: pixels hidden with each blind spot, e.g. x:4 (a horizontal line of 9) or a 0/1 .tif/.npy"
N2V = register(
    Mode(
        name="n2v",
        summary="Noise2Void (N2V2): the noisy images alone, no clean images (2D or 3D)",
        inputs=("input", "axes"),
        settings=(*SETTINGS, CALIBRATION),
        data=n2v_data,
        model=N2VModel,
        finish=measure_blend,
        part="n2v",
        part_type=N2VConfig,
        check=check_n2v,
        net_defaults=N2V_NET,
        train_defaults=N2V_TRAINING,
        sampler=lambda patches, config: BlindSpotSampler(patches, config.n2v.spots()),
        sampler_options={"min_slab": 1.0},  # a thin slab would leave validation a handful of blind spots
        targets="input",
        cite=n2v_cite,
        supports=frozenset({"tiling", "out_of_core", "export", "tta"}),
        warm_start="n2v",
        options=(
            Option("--input", "the noisy images to restore (file or folder)", {"metavar": "PATH"}),
            AXES,
            Option("--struct-mask", STRUCT_HELP, {"metavar": "MASK"}),
            Option("--noise-calibration", CALIBRATION_HELP, {"metavar": "TIFF"}),
            Option("--masked-fraction", "share of each patch's pixels hidden (default 0.02)", {"type": float}),
            Option("--replacement", "median (N2V2, default) or uniform (original N2V)", {"choices": REPLACEMENTS}),
            Option("--window", "edge of the window replacements come from (default 5)", {"type": int}),
            Option(
                "--no-posterior",
                "restore with the network's estimate alone, without weighing in the noisy pixel where noise is weak",
                {"dest": "posterior", "action": "store_false", "default": None},
            ),
        ),
    )
)


def train_n2v(images, axes: str | None, model_dir: str | Path, **options) -> CARE:
    """Train Noise2Void (N2V2 by default) on noisy ``images`` alone and return the best model.

    ``images`` are an array, a list of arrays, or TIFF files or folders (axes from the files
    where ``axes`` is None). Train on the very images you want to restore: that is the normal use.
    Beside the options of :func:`carekit.train`: ``struct_mask`` (e.g. ``"x:4"`` or a 0/1 array,
    structN2V), ``masked_fraction``, ``replacement`` (``"median"`` or ``"uniform"``), ``window`` and
    ``noise_calibration`` (an array or TIFF of two or more frames of a static scene along its first axis,
    taken with the camera settings of ``images``: the camera's noise is read from them).
    ``independent_channels=True`` trains one network per channel instead of one for all.
    """
    return train_mode(N2V, model_dir, {"input": images, "axes": axes}, **options)
