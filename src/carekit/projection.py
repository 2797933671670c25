"""Surface projection + denoising: low-SNR 3D stacks in, denoised 2D surface images out.

Training pairs are a 3D stack (axes with Z) and a 2D ground-truth image with the same
axes less Z, matched by file name like denoising pairs. The composite network
(:class:`~carekit.nets.projection.ProjectionNet`) is tiled over y and x with full z
per tile, and can also return its height map: the expected z of the projection
weights at every pixel, for checking against the anatomy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from carekit.axes import check_axes, from_net, to_net
from carekit.config import ProjectionConfig
from carekit.data.pairs import ImagePair, check_channels, match_files, per_sample
from carekit.errors import CarekitError
from carekit.io import check_finite, read_with_axes
from carekit.model import CARE
from carekit.normalize import PREDICT_PERCENTILES, normalize, percentiles
from carekit.train import check_settings, fit, make_config, resumable

PROJECTION_FIELDS = {"proj_depth": "depth", "proj_features": "n_first", "proj_kernel": "kernel_size"}


def target_axes(axes: str, what: str = "stack") -> str:
    """The 2D target's axes for a stack with ``axes`` (Z removed)."""
    axes = check_axes(axes, what=what)
    if "Z" not in axes:
        raise CarekitError(
            f"{what}: axes '{axes}' have no Z; projection needs 3D input stacks (e.g. ZYX) and 2D targets"
        )
    return axes.replace("Z", "")


def projection_pair(low: np.ndarray, high: np.ndarray, axes: str, name: str) -> list[ImagePair]:
    """Pairs of a stack ``low`` (``axes``) and its 2D target ``high`` (``axes`` without Z)."""
    out_axes = target_axes(axes, name)
    check_axes(axes, low.ndim, what=f"{name} (stack)")
    if high.ndim != len(out_axes):
        raise CarekitError(
            f"{name}: target has shape {high.shape} but should be 2D with axes {out_axes} "
            f"(the stack's axes {axes} without Z)"
        )
    check_finite(low, f"{name} (stack)")
    check_finite(high, f"{name} (target)")
    x, _ = to_net(low, axes, "ZYX", what=name)
    y, _ = to_net(high, out_axes, "YX", what=name)
    if x.shape[0] != y.shape[0] or x.shape[-2:] != y.shape[-2:]:
        raise CarekitError(
            f"{name}: stack shape {low.shape} ({axes}) and target shape {high.shape} ({out_axes}) do not match; "
            "the target must be the stack's YX size"
        )
    return per_sample(name, x, y)


def load_projection_pairs(low, high, axes: str) -> list[ImagePair]:
    """Pairs from arrays (or lists of them) or from files/folders matched by name."""
    if isinstance(low, (str, Path)) or (isinstance(low, Sequence) and low and isinstance(low[0], (str, Path))):
        lows = [low] if isinstance(low, (str, Path)) else list(low)
        pairs = []
        for low_file, high_file in match_files(lows, high):
            stack, _ = read_with_axes(low_file, axes)
            image, _ = read_with_axes(high_file, target_axes(axes, str(low_file)))
            pairs += projection_pair(stack, image, axes, str(low_file))
        return check_channels(pairs)
    lows = [low] if isinstance(low, np.ndarray) else list(low)
    highs = [high] if isinstance(high, np.ndarray) else list(high)
    if len(lows) != len(highs) or not lows:
        raise CarekitError(f"got {len(lows)} stacks but {len(highs)} targets; give one 2D target per stack")
    pairs = [
        p for i, (a, b) in enumerate(zip(lows, highs, strict=True)) for p in projection_pair(a, b, axes, f"array {i}")
    ]
    return check_channels(pairs)


def train_projection(
    low,
    high,
    axes: str,
    model_dir: str | Path,
    *,
    time_budget: float | None = None,
    resume: bool = False,
    overwrite: bool = False,
    device: str = "auto",
    progress: bool = True,
    **settings,
) -> ProjectionCARE:
    """Train the composite projection + denoising network on stacks and 2D targets.

    ``settings`` take the 2D network's and training fields by name, and ``proj_depth``,
    ``proj_features``, ``proj_kernel`` for the 3D projection part.
    """
    model_dir = Path(model_dir)
    proj = {PROJECTION_FIELDS[k]: settings.pop(k) for k in list(settings) if k in PROJECTION_FIELDS}
    check_settings(settings)
    saved = resumable(model_dir, resume, overwrite, settings.get("epochs"))
    axes = saved.axes if saved else axes
    pairs = load_projection_pairs(low, high, axes)
    channels = (pairs[0].low.shape[0], pairs[0].high.shape[0])
    config = saved or make_config(
        axes, channels, {**settings, "spatial": "YX"}, "projection", projection=ProjectionConfig(**proj)
    )
    return fit(pairs, config, model_dir, resume=resume, time_budget=time_budget, device=device, progress=progress)


class ProjectionCARE(CARE):
    mode = "projection"

    def output_axes(self, axes: str) -> str:
        out = target_axes(axes)
        return super().output_axes(out)

    def output_spacing(self, spacing: dict[str, float] | None, factor: float | None = None) -> dict[str, float] | None:
        return {k: v for k, v in spacing.items() if k != "Z"} if spacing else spacing

    def summary(self) -> str:
        p = self.config.projection
        return (
            super().summary() + f"; 3D projection part: depth {p.depth}, {p.n_first} features, kernel {p.kernel_size}"
        )

    def predict(self, image: np.ndarray, axes: str | None = None, *, return_height: bool = False, **options):
        """Project and restore a stack; returns the 2D image (and, with ``return_height``, the
        height map: the expected z of the projection weights, in slices)."""
        mean, _, height = self.project(image, axes, **options)
        return (mean, height) if return_height else mean

    def predict_with_scale(self, image: np.ndarray, axes: str | None = None, **options) -> tuple:
        mean, scale, _ = self.project(image, axes, **options)
        return mean, scale

    def project(
        self,
        image: np.ndarray,
        axes: str | None = None,
        *,
        n_tiles: tuple[int, ...] | None = None,
        memory: int | None = None,
        device: str = "auto",
        precision: str | None = None,
        progress: bool = False,
        tta: bool = False,
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Mean, scale (None for point models) and height map, in the input's axes less Z."""
        if tta:
            raise CarekitError("test-time augmentation is available for denoise models, not projection ones")
        target_axes(axes or self.config.axes, "image")
        x, layout = self.network_input(image, axes, "ZYX")
        engine = self.engine(device, precision)
        lo, hi = percentiles(x, PREDICT_PERCENTILES, engine.device)
        result = self.run_net(
            normalize(x, lo, hi),
            engine,
            n_tiles,
            memory,
            progress,
            forward=lambda t: self.net(t, with_height=True),
            bytes_per_voxel=self.net.bytes_per_pixel(x.shape[2]),
        )
        mean, scale = self.to_intensities(result[:, :-1], lo[..., 0, :, :], hi[..., 0, :, :])
        height, height_axes = from_net(result[:, -1:], layout, spatial="YX")
        if "C" in height_axes:  # one height per pixel, whatever the channels
            height = np.take(height, 0, axis=height_axes.index("C"))
        mean = from_net(mean, layout, spatial="YX")[0]
        scale = None if scale is None else from_net(scale, layout, spatial="YX")[0]
        return mean, scale, height
