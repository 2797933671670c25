"""Isotropic restoration and z-upsampling of anisotropic volumes.

*Isotropic*: a 2D network learns, from the stack's own lateral planes, to undo the
axial blur and coarse z-sampling along one axis. Prediction upsamples z by ``factor``
(output slice ``k`` lies at input position ``k / factor``), restores every XZ and every
YZ plane and combines the two. The volume is processed in slabs, so memory holds the
input, the output and one slab, never a second full-size upsampled copy.

*Upsampling*: a 3D network learns from a finely sampled stack to undo z-subsampling
followed by linear interpolation; prediction interpolates a coarse stack up by
``factor`` and restores it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from carekit.axes import check_axes, from_net, to_net
from carekit.config import AxialConfig
from carekit.data.camera import resample_axis, upsampled_positions
from carekit.data.isotropic import anisotropic_kernel, anisotropic_sigma, isotropic_pairs, upsampling_pairs
from carekit.engine import Engine
from carekit.errors import CarekitError
from carekit.io import check_finite, read_image, read_with_axes
from carekit.model import CARE
from carekit.normalize import PREDICT_PERCENTILES, normalize, percentiles, scale_of
from carekit.predict import default_memory
from carekit.train import fit, make_config, resumable

SLAB_BYTES = 256 * 2**20  # upsampled input held per slab
# Activation budget per batch of planes on the CPU when none is given: the whole output volume
# is held beside it, so less than plain prediction's 1.5 GiB (100x1024x1024 at factor 4 stays
# under 4 GB). On CUDA the activations live on the GPU, so plain prediction's budget applies.
PLANES_MEMORY = 512 * 2**20


def planes_memory(engine: Engine) -> int:
    """The default activation budget of axial prediction on ``engine``."""
    return default_memory(engine) if engine.device.type == "cuda" else PLANES_MEMORY


def as_volume(stack, axes: str | None) -> tuple[np.ndarray, str]:
    """A stack from an array or a TIFF path, with validated axes that include Z."""
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


def axial_settings(factor: float, psf, psf_sigma, peak_photons, read_sigma, combine) -> tuple[AxialConfig, dict]:
    """Validated settings plus the degradation options for pair generation."""
    if factor is None or factor < 1:
        raise CarekitError(f"factor must be at least 1 (z-step over lateral pixel size), got {factor}")
    kernel = None
    psf_file = None
    if psf is not None and psf_sigma is not None:
        raise CarekitError("give either a PSF file or PSF sigmas, not both")
    if psf is not None:
        if isinstance(psf, (str, Path)):
            psf_file = str(psf)
            psf = read_image(psf)[0]
        kernel = anisotropic_kernel(np.asarray(psf, np.float64))
    sz, sxy = psf_sigma if psf_sigma is not None else (0.0, 0.0)
    config = AxialConfig(
        factor=float(factor),
        psf_sigma_z=float(sz),
        psf_sigma_xy=float(sxy),
        psf_file=psf_file,
        peak_photons=peak_photons,
        read_sigma=read_sigma,
        **({"combine": combine} if combine else {}),
    )
    options = {
        "sigma": anisotropic_sigma(sz, sxy),
        "kernel": kernel,
        "peak_photons": peak_photons,
        "read_sigma": read_sigma,
    }
    return config, options


def train_isotropic(
    stack,
    axes: str | None,
    factor: float,
    model_dir: str | Path,
    *,
    psf=None,
    psf_sigma: tuple[float, float] | None = None,
    peak_photons: float | None = None,
    read_sigma: float = 0.0,
    combine: str | None = None,
    time_budget: float | None = None,
    resume: bool = False,
    overwrite: bool = False,
    device: str = "auto",
    progress: bool = True,
    **settings,
) -> IsotropicCARE:
    """Train a 2D network that restores axial planes of ``stack`` to lateral quality.

    Parameters
    ----------
    stack : array or path
        The anisotropic volume (axes with Z, e.g. ``"ZYX"`` or ``"ZCYX"``).
    factor : float
        z-step over lateral pixel size (any value >= 1, e.g. 10.2).
    psf : array or path, optional
        A measured PSF (ZYX, sampled at the lateral pixel size in every axis).
    psf_sigma : (sigma_z, sigma_xy), optional
        A Gaussian PSF in lateral pixels (see :func:`carekit.data.camera.widefield_sigmas`).
    peak_photons, read_sigma : float, optional
        Noise added to the degraded planes (Poisson at this peak, Gaussian read noise).
    combine : ``"arithmetic"`` or ``"geometric"``
        How XZ and YZ restorations are merged at prediction.
    """
    model_dir = Path(model_dir)
    saved = resumable(model_dir, resume, overwrite, settings.get("epochs"))
    data, axes = as_volume(stack, axes)
    if saved is not None:
        axial, options = axial_settings(
            saved.axial.factor,
            saved.axial.psf_file,
            None if saved.axial.psf_file else (saved.axial.psf_sigma_z, saved.axial.psf_sigma_xy),
            saved.axial.peak_photons,
            saved.axial.read_sigma,
            saved.axial.combine,
        )
    else:
        axial, options = axial_settings(factor, psf, psf_sigma, peak_photons, read_sigma, combine)
    x, _ = to_net(data, axes, "ZYX", what="stack")
    planes = np.moveaxis(x, 2, 1).reshape(-1, x.shape[1], *x.shape[3:])  # every lateral plane: (N*Z, C, Y, X)
    pairs = isotropic_pairs(planes, axial.factor, seed=settings.get("seed", 0), **options)
    config = saved or make_config(axes, (x.shape[1],) * 2, {**settings, "spatial": "YX"}, "isotropic", axial=axial)
    return fit(
        pairs, config, model_dir, resume=resume, time_budget=time_budget, device=device, progress=progress, rotate=False
    )


def train_upsampling(
    stack,
    axes: str | None,
    factor: float,
    model_dir: str | Path,
    *,
    time_budget: float | None = None,
    resume: bool = False,
    overwrite: bool = False,
    device: str = "auto",
    progress: bool = True,
    **settings,
) -> UpsamplingCARE:
    """Train a 3D network on a finely sampled ``stack`` to restore stacks acquired with a
    ``factor`` times coarser z-step (after linear interpolation)."""
    model_dir = Path(model_dir)
    saved = resumable(model_dir, resume, overwrite, settings.get("epochs"))
    data, axes = as_volume(stack, axes)
    axial, _ = axial_settings(saved.axial.factor if saved else factor, None, None, None, 0.0, None)
    x, _ = to_net(data, axes, "ZYX", what="stack")
    pairs = [p for volume in x for p in upsampling_pairs(volume, axial.factor)]
    config = saved or make_config(axes, (x.shape[1],) * 2, settings, "upsampling", axial=axial)
    return fit(pairs, config, model_dir, resume=resume, time_budget=time_budget, device=device, progress=progress)


class AxialCARE(CARE):
    """Shared by the two modes: prediction on volumes whose z grows by ``factor``."""

    def output_axes(self, axes: str) -> str:
        return check_axes(axes)

    def output_spacing(self, spacing: dict[str, float] | None, factor: float | None = None) -> dict[str, float] | None:
        """Voxel size of the result: the input's with z divided by the factor."""
        if not spacing or "Z" not in spacing:
            return spacing
        return {**spacing, "Z": spacing["Z"] / (factor or self.config.axial.factor)}

    def predict_with_scale(
        self,
        image: np.ndarray,
        axes: str | None = None,
        *,
        factor: float | None = None,
        n_tiles: tuple[int, ...] | None = None,
        memory: int | None = None,
        device: str = "auto",
        precision: str | None = None,
        progress: bool = False,
        tta: bool = False,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Restore a volume; z grows from ``Z`` to ``floor((Z - 1) * factor) + 1`` slices."""
        if tta:
            raise CarekitError(f"test-time augmentation is available for denoise models, not {self.mode} ones")
        factor = float(factor or self.config.axial.factor)
        if factor < 1:
            raise CarekitError(f"factor must be at least 1, got {factor}")
        x, layout = self.network_input(image, axes, "ZYX")
        if x.shape[2] < 2:
            raise CarekitError(f"image has {x.shape[2]} z-slice(s); restoring along z needs at least 2")
        engine = self.engine(device, precision)
        options = {"n_tiles": n_tiles, "memory": memory or planes_memory(engine), "engine": engine}
        results = [self.restore_volume(v, factor, progress=progress, **options) for v in x]
        parts = []
        for i in range(2):
            if results[0][i] is None:
                parts.append(None)
                continue
            out = results[0][i][None] if len(results) == 1 else np.stack([r[i] for r in results])
            parts.append(from_net(out, layout)[0])
        return parts[0], parts[1]

    def restore_volume(self, volume: np.ndarray, factor: float, **options) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError

    def volume_intensities(self, y: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> tuple:
        """Mean (and scale) of one volume's network output ``(C or 2C, Z', Y, X)``, in place where possible."""
        c = self.config.n_channel_out
        t_lo, t_hi = self.intensity_map.apply(lo[None], hi[None])
        span = scale_of(t_lo[0], t_hi[0])
        mean = y[:c]
        mean *= span
        mean += t_lo[0].astype(np.float32)
        if not self.config.net.probabilistic:
            return mean, None
        scale = y[c : 2 * c]
        scale *= span
        return mean, scale

    def planes(self, planes: np.ndarray, *, engine, n_tiles, memory) -> np.ndarray:
        return self.run_net(planes, engine, n_tiles, memory)


class IsotropicCARE(AxialCARE):
    mode = "isotropic"

    def restore_volume(self, volume: np.ndarray, factor: float, *, progress: bool = False, **options) -> tuple:
        """``(C, Z, Y, X)`` raw -> ``(C, Z', Y, X)`` restored, in slabs of XZ then YZ planes."""
        c, z, ny, nx = volume.shape
        lo, hi = percentiles(volume[None], PREDICT_PERCENTILES, options["engine"].device)
        lo, hi = lo[0], hi[0]  # (C, 1, 1, 1)
        positions = upsampled_positions(z, factor)
        c_out = self.config.n_channel_out
        out = np.empty((c_out * (2 if self.config.net.probabilistic else 1), len(positions), ny, nx), np.float32)
        per_slab = max(1, SLAB_BYTES // (4 * c * len(positions) * max(ny, nx)))
        slabs_y = range(0, ny, per_slab)
        slabs_x = range(0, nx, per_slab)
        bar = tqdm(total=len(slabs_y) + len(slabs_x), desc="isotropic", unit="slab", disable=not progress, leave=False)
        for y0 in slabs_y:  # XZ planes, z laid along the network's degraded axis (last)
            slab = resample_axis(normalize(volume[:, :, y0 : y0 + per_slab], lo, hi), 1, positions)  # C Z' b X
            out[:, :, y0 : y0 + per_slab] = self.planes(slab.transpose(2, 0, 3, 1), **options).transpose(1, 3, 0, 2)
            bar.update()
        for x0 in slabs_x:  # YZ planes
            slab = resample_axis(normalize(volume[..., x0 : x0 + per_slab], lo, hi), 1, positions)  # C Z' Y b
            restored = self.planes(slab.transpose(3, 0, 2, 1), **options).transpose(1, 3, 2, 0)  # C Z' Y b
            block = out[..., x0 : x0 + per_slab]
            block[:c_out] = combine(block[:c_out], restored[:c_out], self.config.axial.combine)
            if self.config.net.probabilistic:  # the less certain of the two views
                block[c_out:] = np.maximum(block[c_out:], restored[c_out:])
            bar.update()
        bar.close()
        return self.volume_intensities(out, lo, hi)


class UpsamplingCARE(AxialCARE):
    mode = "upsampling"

    def restore_volume(self, volume: np.ndarray, factor: float, *, progress: bool = False, **options) -> tuple:
        lo, hi = percentiles(volume[None], PREDICT_PERCENTILES, options["engine"].device)
        fine = resample_axis(normalize(volume, lo[0], hi[0]), 1, upsampled_positions(volume.shape[1], factor))
        return self.volume_intensities(self.planes(fine[None], **options)[0], lo[0], hi[0])


def combine(a: np.ndarray, b: np.ndarray, how: str) -> np.ndarray:
    """Merge two restorations of the same voxels: arithmetic or geometric mean (negatives clipped)."""
    if how == "geometric":
        return np.sqrt(np.clip(a, 0, None) * np.clip(b, 0, None))
    return 0.5 * (a + b)
