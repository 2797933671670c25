"""Surface projection + denoising: low-SNR 3D stacks in, denoised 2D surface images out.

Training pairs are a 3D stack (axes with Z) and a 2D ground-truth image with the same
axes less Z, matched by file name like denoising pairs. The composite network
(:class:`~carekit.nets.projector.ProjectionNet`) is tiled over y and x with full z
per tile, and can also return its height map: the expected z of the projection
weights at every pixel, for checking against the anatomy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from carekit.axes import check_axes, to_net
from carekit.config import Config, require
from carekit.data.pairs import ImagePair, load_pairs, per_sample
from carekit.errors import CarekitError
from carekit.io import check_finite
from carekit.model import CARE, Run, unet_settings
from carekit.modes.denoise import PAIR_OPTIONS, pair_inputs
from carekit.nets.projector import ProjectionNet
from carekit.normalize import normalize
from carekit.registry import Mode, Option, TrainingData, register
from carekit.training import train_mode

PROJECTION_FIELDS = {"proj_depth": "depth", "proj_features": "n_first", "proj_kernel": "kernel_size",
                     "proj_pool": "pool"}  # fmt: skip


def target_axes(axes: str, what: str = "stack") -> str:
    """The 2D target's axes for a stack with ``axes`` (Z removed)."""
    axes = check_axes(axes, what=what)
    if "Z" not in axes:
        raise CarekitError(
            f"{what}: axes '{axes}' have no Z; projection needs 3D input stacks (e.g. ZYX) and 2D targets"
        )
    return axes.replace("Z", "")


def projection_pair(low: np.ndarray, high: np.ndarray, axes: str, spatial: str, name: str) -> list[ImagePair]:
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


@dataclass
class ProjectionConfig:
    """The 3D projection part of a projection model (pooling in y and x only).

    ``pool``: the 3D part scores a stack averaged over ``pool`` x ``pool`` pixels (see
    :mod:`carekit.nets.projector`). At 4 a training step (8 x 24 x 96 x 96) costs 42 GFLOP
    instead of 180, and the height map of a tilted plane in the tests comes out within 0.47
    slices RMS.
    """

    depth: int = 2
    n_first: int = 8
    kernel_size: int = 3
    pool: int = 4

    def __post_init__(self) -> None:
        require(1 <= self.depth <= 4, f"projection depth must be 1..4, got {self.depth}")
        require(self.n_first >= 1, f"projection features must be at least 1, got {self.n_first}")
        require(self.kernel_size >= 1 and self.kernel_size % 2 == 1, "projection kernel size must be odd")
        require(self.pool in (1, 2, 4, 8), f"projection pooling must be 1, 2, 4 or 8, got {self.pool}")

    @classmethod
    def saved(cls, **fields) -> ProjectionConfig:
        """The part as a model folder stores it: folders from before ``pool`` existed score at full
        resolution."""
        return cls(**{"pool": 1, **fields})


def check_projection(config: Config) -> None:
    if config.projection is None:
        raise CarekitError("projection models need projection settings")
    if "Z" not in config.axes or config.spatial != "YX":
        raise CarekitError("projection models take Z stacks to YX images")


def projection_net(config: Config) -> ProjectionNet:
    p = config.projection
    return ProjectionNet(config.n_channel_in, config.n_channel_out, proj_depth=p.depth, proj_features=p.n_first,
                         proj_kernel=p.kernel_size, proj_pool=p.pool, **unet_settings(config))  # fmt: skip


def projection_data(inputs: dict, saved: Config | None, settings: dict) -> TrainingData:
    low, high, axes = pair_inputs("projection", inputs, saved)
    part = saved.projection if saved else ProjectionConfig(**{f: settings[k] for k, f in PROJECTION_FIELDS.items()
                                                              if settings.get(k) is not None})  # fmt: skip
    pairs = load_pairs(low, high, axes, "ZYX", projection_pair, target_axes(axes))
    return TrainingData(pairs, axes, "YX", part)


class ProjectionCARE(CARE):
    """Projects stacks onto their surface and restores it; also returns the surface's height map."""

    fold_spatial, result_spatial, extra_outputs = "ZYX", "YX", ("height",)

    def output_axes(self, axes: str) -> str:
        return super().output_axes(target_axes(axes))

    def output_spacing(self, spacing: dict[str, float] | None, factor: float | None = None) -> dict[str, float] | None:
        return {k: v for k, v in spacing.items() if k != "Z"} if spacing else spacing

    def summary(self) -> str:
        p = self.config.projection
        return f"{super().summary()}; 3D projection part: depth {p.depth}, {p.n_first} features, kernel {p.kernel_size}"

    def predict(self, image: np.ndarray, axes: str | None = None, *, return_height: bool = False, **options):
        """Project and restore a stack; returns the 2D image (and, with ``return_height``, the
        height map: the expected z of the projection weights, in slices)."""
        result = self.prediction(image, axes, **options)
        return (result.mean, result.extra["height"]) if return_height else result.mean

    def network_input(self, image: np.ndarray, axes: str | None, spatial: str) -> tuple:
        target_axes(axes or self.config.axes, "image")
        return super().network_input(image, axes, spatial)

    def network_pass(self, x: np.ndarray, lo: np.ndarray, hi: np.ndarray, run: Run) -> np.ndarray:
        """Restored channels, then the height map, from the whole z of every tile."""
        return self.run_net(normalize(x, lo, hi), run.engine, run.n_tiles, run.memory, run.progress,
                            forward=lambda t: self.net(t, with_height=True),
                            bytes_per_voxel=self.net.bytes_per_pixel(x.shape[2]))  # fmt: skip


PROJECTION = register(
    Mode(
        name="projection",
        summary="low-SNR 3D stacks of a curved surface to a denoised 2D image of it",
        inputs=("low", "high", "axes"),
        settings=tuple(PROJECTION_FIELDS),
        data=projection_data,
        model=ProjectionCARE,
        part="projection",
        part_type=ProjectionConfig.saved,
        check=check_projection,
        net=projection_net,
        supports=frozenset({"tiling", "uncertainty", "height_map"}),
        options=(
            *PAIR_OPTIONS,
            Option("--proj-depth", "pooling steps of the 3D projection network (default 2)", {"type": int}),
            Option("--proj-features", "features of its first level (default 8)", {"type": int}),
            Option("--proj-kernel", "its kernel edge (default 3)", {"type": int}),
            Option("--proj-pool", "lateral averaging before it, 1/2/4/8 (default 4)", {"type": int}),
        ),
    )
)


def train_projection(low, high, axes: str, model_dir: str | Path, **options) -> ProjectionCARE:
    """Train the composite projection + denoising network on stacks and 2D targets.

    ``options`` take the 2D network's and training fields by name, and ``proj_depth``,
    ``proj_features``, ``proj_kernel``, ``proj_pool`` for the 3D projection part
    (see :class:`ProjectionConfig`; and training options as for :func:`carekit.train`).
    """
    return train_mode(PROJECTION, model_dir, {"low": low, "high": high, "axes": axes}, **options)
