"""Isotropic restoration of anisotropic volumes, and what z-upsampling shares with it.

A 2D network learns, from the stack's own lateral planes, to undo the axial blur and coarse
z-sampling along one axis. Prediction upsamples z by ``factor`` (output slice ``k`` lies at input
position ``k / factor``), restores every XZ and every YZ plane and combines the two. The volume is
processed in slabs, so memory holds the input, the output and one slab, never a second full-size
upsampled copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from carekit.axes import check_axes, to_net
from carekit.config import Config, require
from carekit.data.axial import anisotropic_kernel, anisotropic_sigma, isotropic_pairs
from carekit.data.camera import resample_axis, upsampled_positions, widefield_sigmas
from carekit.engine import Engine
from carekit.errors import CarekitError
from carekit.io import check_finite, read_image, read_with_axes
from carekit.model import CARE, Run
from carekit.modes.denoise import AXES
from carekit.normalize import normalize
from carekit.registry import Mode, Option, TrainingData, register
from carekit.tiling import Ticks, default_memory
from carekit.training import train_mode

COMBINES = ("geometric", "arithmetic")
SLAB_BYTES = 256 * 2**20  # upsampled input held per slab
# Activation budget per batch of planes on the CPU when none is given: the whole output volume
# is held beside it, so less than plain prediction's 1.5 GiB (100x1024x1024 at factor 4 stays
# under 4 GB). On CUDA the activations live on the GPU, so plain prediction's budget applies.
PLANES_MEMORY = 512 * 2**20


@dataclass
class AxialConfig:
    """Isotropic restoration and z-upsampling: how the axial degradation is simulated.

    ``factor`` is the z-step over the lateral pixel size (z is upsampled by it). PSF sigmas
    are in lateral pixels; the blur added to lateral planes is ``sqrt(sigma_z² - sigma_xy²)``
    along one axis, or the kernel derived from ``psf_file``. ``combine`` merges the XZ and
    YZ restorations of isotropic prediction.
    """

    factor: float = 1.0
    psf_sigma_z: float = 0.0
    psf_sigma_xy: float = 0.0
    psf_file: str | None = None
    peak_photons: float | None = None
    read_sigma: float = 0.0
    combine: str = "arithmetic"

    def __post_init__(self) -> None:
        require(self.factor >= 1, f"factor must be at least 1, got {self.factor}")
        require(self.psf_sigma_z >= 0 and self.psf_sigma_xy >= 0, "PSF sigmas must be non-negative")
        require(self.peak_photons is None or self.peak_photons > 0, "peak photons must be positive")
        require(self.read_sigma >= 0, "read noise must be non-negative")
        require(self.combine in COMBINES, f"combine must be one of {', '.join(COMBINES)}, got '{self.combine}'")


def check_axial(config: Config) -> None:
    if config.axial is None:
        raise CarekitError(f"{config.mode} models need axial settings (factor, PSF)")
    if "Z" not in config.axes:
        raise CarekitError(f"{config.mode} models need a Z axis; got axes '{config.axes}'")


def as_volume(mode: str, inputs: dict, saved: Config | None) -> tuple[np.ndarray, str]:
    """The training stack of an axial mode (array or TIFF path), with validated axes that include Z."""
    stack, axes = inputs.get("input"), inputs.get("axes")
    if stack is None:
        raise CarekitError(f"{mode} training needs --input STACK (the volume to learn from)")
    if inputs.get("factor") is None and saved is None:
        raise CarekitError(f"{mode} training needs --factor (z-step over lateral pixel size)")
    if isinstance(stack, (str, Path)):
        data, axes = read_with_axes(stack, axes)
    else:
        data = np.asarray(stack)
        if axes is None:
            raise CarekitError("pass the stack's axes, e.g. axes='ZYX'")
        axes = check_axes(axes, data.ndim, what="stack")
        check_finite(data, "stack")
    if "Z" not in axes:
        raise CarekitError(f"stack axes '{axes}' have no Z; isotropic and upsampling modes restore volumes")
    return data, axes


def psf_sigmas(settings: dict) -> tuple[float, float] | None:
    """PSF sigmas in lateral pixels, given as ``psf_sigma`` or from the optics (``na``, ``wavelength``,
    ``pixel_size``, ``refractive_index``)."""
    optics = [settings.get(k) for k in ("na", "wavelength", "pixel_size")]
    if settings.get("psf_sigma") is not None:
        if len(settings["psf_sigma"]) != 2:
            raise CarekitError(f"--psf-sigma takes two numbers Z,XY, got {len(settings['psf_sigma'])}")
        return tuple(settings["psf_sigma"])
    if all(v is None for v in optics):
        return None
    if any(v is None for v in optics):
        raise CarekitError("a Gaussian PSF from optics needs --na, --wavelength and --pixel-size together")
    try:
        sz, sxy = widefield_sigmas(optics[0], optics[1], settings.get("refractive_index") or 1.33)
    except ValueError as e:
        raise CarekitError(str(e)) from None
    return sz / optics[2], sxy / optics[2]


def axial_settings(factor, psf=None, psf_sigma=None, peak_photons=None, read_sigma=0.0, combine=None) -> tuple:
    """Validated :class:`AxialConfig` plus the degradation options for pair generation."""
    if factor is None or factor < 1:
        raise CarekitError(f"factor must be at least 1 (z-step over lateral pixel size), got {factor}")
    if psf is not None and psf_sigma is not None:
        raise CarekitError("give either a PSF file or PSF sigmas, not both")
    kernel, psf_file = None, str(psf) if isinstance(psf, (str, Path)) else None
    if psf is not None:
        kernel = anisotropic_kernel(np.asarray(read_image(psf)[0] if psf_file else psf, np.float64))
    sz, sxy = psf_sigma if psf_sigma is not None else (0.0, 0.0)
    config = AxialConfig(float(factor), float(sz), float(sxy), psf_file, peak_photons, read_sigma or 0.0,
                         **({"combine": combine} if combine else {}))  # fmt: skip
    options = {"sigma": anisotropic_sigma(sz, sxy), "kernel": kernel, "peak_photons": peak_photons,
               "read_sigma": read_sigma or 0.0}  # fmt: skip
    return config, options


def isotropic_data(inputs: dict, saved: Config | None, settings: dict) -> TrainingData:
    data, axes = as_volume("isotropic", inputs, saved)
    if saved is not None:
        a = saved.axial
        sigmas = None if a.psf_file else (a.psf_sigma_z, a.psf_sigma_xy)
        axial, options = axial_settings(a.factor, a.psf_file, sigmas, a.peak_photons, a.read_sigma, a.combine)
    else:
        axial, options = axial_settings(inputs.get("factor"), settings.get("psf"), psf_sigmas(settings),
                                        settings.get("peak_photons"), settings.get("read_sigma"),
                                        settings.get("combine"))  # fmt: skip
    x, _ = to_net(data, axes, "ZYX", what="stack")
    planes = np.moveaxis(x, 2, 1).reshape(-1, x.shape[1], *x.shape[3:])  # every lateral plane: (N*Z, C, Y, X)
    return TrainingData(isotropic_pairs(planes, axial.factor, seed=settings.get("seed", 0), **options), axes, "YX",
                        axial)  # fmt: skip


def planes_memory(engine: Engine) -> int:
    """The default activation budget of axial prediction on ``engine``."""
    return default_memory(engine) if engine.device.type == "cuda" else PLANES_MEMORY


class AxialCARE(CARE):
    """Prediction on volumes whose z grows by ``factor`` (isotropic and upsampling models)."""

    fold_spatial = "ZYX"

    def output_axes(self, axes: str) -> str:
        return check_axes(axes)

    def output_spacing(self, spacing: dict[str, float] | None, factor: float | None = None) -> dict[str, float] | None:
        """Voxel size of the result: the input's with z divided by the factor."""
        if not spacing or "Z" not in spacing:
            return spacing
        return {**spacing, "Z": spacing["Z"] / (factor or self.config.axial.factor)}

    def network_pass(self, x: np.ndarray, lo: np.ndarray, hi: np.ndarray, run: Run, *,
                     factor: float | None = None) -> np.ndarray:  # fmt: skip
        """Restore volumes ``(N, C, Z, Y, X)``; z grows to ``floor((Z - 1) * factor) + 1`` slices."""
        factor = float(factor or self.config.axial.factor)
        if factor < 1:
            raise CarekitError(f"factor must be at least 1, got {factor}")
        if x.shape[2] < 2:
            raise CarekitError(f"image has {x.shape[2]} z-slice(s); restoring along z needs at least 2")
        positions = upsampled_positions(x.shape[2], factor)
        run = Run(run.engine, run.n_tiles, run.memory or planes_memory(run.engine), run.progress)
        out = [self.restore_volume(v, low, high, positions, run) for v, low, high in zip(x, lo, hi, strict=True)]
        return out[0][None] if len(out) == 1 else np.stack(out)

    def restore_volume(self, volume: np.ndarray, lo, hi, positions: np.ndarray, run: Run) -> np.ndarray:
        """The restoration of one raw volume ``(C, Z, Y, X)`` at z ``positions``, in normalised units."""
        raise NotImplementedError

    def planes(self, planes: np.ndarray, run: Run) -> np.ndarray:
        return self.run_net(planes, run.engine, run.n_tiles, run.memory)


class IsotropicCARE(AxialCARE):
    def restore_volume(self, volume: np.ndarray, lo, hi, positions: np.ndarray, run: Run) -> np.ndarray:
        """In slabs of XZ, then YZ planes (z laid along the network's degraded axis, the last)."""
        c, _, ny, nx = volume.shape
        c_out = self.config.n_channel_out
        out = np.empty((c_out * (2 if self.config.net.probabilistic else 1), len(positions), ny, nx), np.float32)
        per_slab = max(1, SLAB_BYTES // (4 * c * len(positions) * max(ny, nx)))
        slabs_y, slabs_x = range(0, ny, per_slab), range(0, nx, per_slab)
        with Ticks(len(slabs_y) + len(slabs_x), run.progress, "isotropic", "slab") as ticks:
            for y0 in slabs_y:  # XZ planes
                slab = resample_axis(normalize(volume[:, :, y0 : y0 + per_slab], lo, hi), 1, positions)  # C Z' b X
                out[:, :, y0 : y0 + per_slab] = self.planes(slab.transpose(2, 0, 3, 1), run).transpose(1, 3, 0, 2)
                ticks.update()
            for x0 in slabs_x:  # YZ planes
                slab = resample_axis(normalize(volume[..., x0 : x0 + per_slab], lo, hi), 1, positions)  # C Z' Y b
                restored = self.planes(slab.transpose(3, 0, 2, 1), run).transpose(1, 3, 2, 0)  # C Z' Y b
                block = out[..., x0 : x0 + per_slab]
                block[:c_out] = combine(block[:c_out], restored[:c_out], self.config.axial.combine)
                if self.config.net.probabilistic:  # the less certain of the two views
                    block[c_out:] = np.maximum(block[c_out:], restored[c_out:])
                ticks.update()
        return out


def combine(a: np.ndarray, b: np.ndarray, how: str) -> np.ndarray:
    """Merge two restorations of the same voxels: arithmetic or geometric mean (negatives clipped)."""
    if how == "geometric":
        return np.sqrt(np.clip(a, 0, None) * np.clip(b, 0, None))
    return 0.5 * (a + b)


def numbers(text: str) -> tuple[float, ...]:
    """Comma-separated numbers, e.g. ``6,1.5``."""
    return tuple(float(v) for v in text.split(",") if v.strip())


SETTINGS = ("psf", "psf_sigma", "na", "wavelength", "refractive_index", "pixel_size", "peak_photons", "read_sigma")
FACTOR = Option("--factor", "z-step over lateral pixel size", {"type": float})
VOLUME = Option("--input", "the volume to learn from", {"metavar": "STACK"})
ISOTROPIC = register(
    Mode(
        name="isotropic",
        summary="anisotropic volume to isotropic resolution (learns from its own lateral planes)",
        inputs=("input", "axes", "factor"),
        settings=(*SETTINGS, "combine"),
        data=isotropic_data,
        model=IsotropicCARE,
        part="axial",
        part_type=AxialConfig,
        check=check_axial,
        sampler_options={"rotate": False},  # pairs are degraded along X only
        supports=frozenset({"tiling", "uncertainty", "factor"}),
        options=(
            VOLUME,
            AXES,
            FACTOR,
            Option("--psf", "measured PSF (ZYX, lateral pixel size in all axes)", {"metavar": "PSF.tif"}),
            Option("--psf-sigma", "Gaussian PSF sigmas in lateral pixels", {"type": numbers, "metavar": "Z,XY"}),
            Option("--na", "numerical aperture (Gaussian widefield PSF)", {"type": float}),
            Option("--wavelength", "emission wavelength in nm", {"type": float, "metavar": "NM"}),
            Option("--refractive-index", "immersion index (1.33)", {"type": float}),
            Option("--pixel-size", "lateral pixel size in nm", {"type": float, "metavar": "NM"}),
            Option("--noise-photons", "add Poisson noise at this peak", {"type": float, "dest": "peak_photons"}),
            Option("--read-noise", "Gaussian read noise (photons)", {"type": float, "dest": "read_sigma"}),
            Option("--combine", "merge of XZ and YZ results", {"choices": COMBINES}),
        ),
    )
)


def train_isotropic(stack, axes: str | None, factor: float, model_dir: str | Path, **options) -> IsotropicCARE:
    """Train a 2D network that restores axial planes of ``stack`` to lateral quality.

    ``stack`` is the anisotropic volume (array or TIFF path, axes with Z such as ``"ZYX"``), ``factor``
    its z-step over the lateral pixel size (any value >= 1, e.g. 10.2). Beside the options of
    :func:`carekit.train`, ``options`` take the degradation: ``psf`` (a measured ZYX PSF, array or
    path, sampled at the lateral pixel size) or ``psf_sigma`` (``(sigma_z, sigma_xy)`` in lateral
    pixels; or ``na``, ``wavelength``, ``pixel_size`` and ``refractive_index``), ``peak_photons`` and
    ``read_sigma`` (noise added to the degraded planes), and ``combine`` (``"arithmetic"`` or
    ``"geometric"``: how XZ and YZ restorations merge at prediction).
    """
    return train_mode(ISOTROPIC, model_dir, {"input": stack, "axes": axes, "factor": factor}, **options)
