"""z-upsampling: a 3D network learns from a finely sampled stack to undo z-subsampling followed by
linear interpolation; prediction interpolates a coarse stack up by ``factor`` and restores it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from carekit.axes import to_net
from carekit.config import Config
from carekit.data.axial import upsampling_pairs
from carekit.data.camera import resample_axis
from carekit.model import Run
from carekit.modes import isotropic
from carekit.modes.denoise import AXES
from carekit.modes.isotropic import FACTOR, VOLUME, AxialCARE, AxialConfig, as_volume, axial_settings
from carekit.normalize import normalize
from carekit.registry import Mode, TrainingData, register
from carekit.training import train_mode


class UpsamplingCARE(AxialCARE):
    def restore_volume(self, volume: np.ndarray, lo, hi, positions: np.ndarray, run: Run) -> np.ndarray:
        return self.planes(resample_axis(normalize(volume, lo, hi), 1, positions)[None], run)[0]


def upsampling_data(inputs: dict, saved: Config | None, settings: dict) -> TrainingData:
    data, axes = as_volume("upsampling", inputs, saved)
    axial, _ = axial_settings(saved.axial.factor if saved else inputs.get("factor"))
    x, _ = to_net(data, axes, "ZYX", what="stack")
    return TrainingData([p for volume in x for p in upsampling_pairs(volume, axial.factor)], axes, part=axial)


UPSAMPLING = register(
    Mode(
        name="upsampling",
        summary="coarsely sampled z to the fine sampling of the stack it learnt from",
        inputs=("input", "axes", "factor"),
        data=upsampling_data,
        model=UpsamplingCARE,
        part="axial",
        part_type=AxialConfig,
        check=isotropic.check_axial,
        options=(VOLUME, AXES, FACTOR),
        supports=isotropic.ISOTROPIC.supports,
    )
)


def train_upsampling(stack, axes: str | None, factor: float, model_dir: str | Path, **options) -> UpsamplingCARE:
    """Train a 3D network on a finely sampled ``stack`` to restore stacks acquired with a
    ``factor`` times coarser z-step (after linear interpolation)."""
    return train_mode(UPSAMPLING, model_dir, {"input": stack, "axes": axes, "factor": factor}, **options)
