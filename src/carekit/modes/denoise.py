"""Denoising (and restoration in general) from registered low/high-SNR pairs: the CARE paper's mode."""

from __future__ import annotations

from pathlib import Path

from carekit.axes import check_axes
from carekit.config import FAST_DENOISE, Config, default_spatial
from carekit.data.pairs import load_pairs
from carekit.errors import CarekitError
from carekit.model import CARE
from carekit.registry import Mode, Option, TrainingData, register
from carekit.training import train_mode

AXES = Option("--axes", "axes of every image, e.g. YX, ZYX, TCYX (default: from the file)")
PAIR_OPTIONS = (
    Option("--low", "low-SNR input file(s) or folder(s)", {"nargs": "+", "metavar": "PATH"}),
    Option("--high", "high-SNR target file or folder (matched by name)", {"metavar": "PATH"}),
    AXES,
)


def pair_inputs(mode: str, inputs: dict, saved: Config | None) -> tuple:
    """``low``, ``high`` and settled axes of a pairs mode's inputs."""
    low, high, axes = inputs.get("low"), inputs.get("high"), inputs.get("axes")
    if low is None or high is None or (axes is None and saved is None):
        raise CarekitError(f"{mode} training needs --low, --high and --axes")
    return low, high, saved.axes if saved else check_axes(axes, what="--axes")


# The mean squared error by default (``--loss mae`` gives the paper's MAE back): the paper scores
# with PSNR, i.e. squared errors, and a network fitted to absolute errors restores the median of
# what the noise leaves open. Quality benchmark, 120 s at 20 photons, margins over the best
# classical filter on nine datasets: mean +2.99 against +2.88 dB with MAE, chosen
# leave-one-dataset-out for all nine (benchmarks/results/quality-mse-*.json, quality-default-20.json).
# Every training input is drawn afresh around its target with the camera noise fitted to the pair
# (``--redraw 0`` trains on the acquired inputs only; see ``carekit.noise.Redraw``): mean margin
# +3.06 against +2.99 dB, worst +0.34 against +0.26, chosen leave-one-dataset-out for all nine
# (quality-redraw-poisson-20.json against quality-mse-*-20.json).
# Training also keeps a running average of the weights (decay 0.99 per step), and each epoch keeps
# whichever of the average and the trained weights validates better. At 120 s, 20 photons, margins
# over the best classical filter: confocal slices +0.41 -> +0.56 dB, tubules +4.45 -> +4.82, the
# seven others within 0.06 dB (synthetic nuclei +3.51 -> +3.52, where the average alone had cost
# 0.3-0.6 dB); worst +0.41 -> +0.46, mean +3.13 -> +3.17, chosen leave-one-dataset-out for all nine
# (quality-emachoice-*-20.json against quality-blendp-*-20.json; quality-sched-*-20.json).
DENOISE_TRAINING = {"loss": "mse", "redraw": 1.0, "ema": 0.99}


def denoise_data(inputs: dict, saved: Config | None, settings: dict) -> TrainingData:
    low, high, axes = pair_inputs("denoise", inputs, saved)
    spatial = saved.spatial if saved else settings.get("spatial") or default_spatial(axes)
    return TrainingData(load_pairs(low, high, axes, spatial), axes, spatial)


DENOISE = register(
    Mode(
        name="denoise",
        summary="low-SNR to high-SNR pairs (2D or 3D)",
        inputs=("low", "high", "axes"),
        data=denoise_data,
        model=CARE,
        net_defaults=FAST_DENOISE,
        options=PAIR_OPTIONS,
        supports=frozenset({"tiling", "out_of_core", "export", "tta", "uncertainty", "filter_blend"}),
        warm_start="denoise",
        train_defaults=DENOISE_TRAINING,
    )
)


def train(low, high, axes: str, model_dir: str | Path, **options) -> CARE:
    """Train a CARE network on registered low/high-SNR pairs and return the best model.

    Parameters
    ----------
    low, high : array, list of arrays, or path(s)
        Inputs and targets. Paths may be TIFF files or folders (files matched by name);
        ``low`` may list several folders sharing one ``high`` folder.
    axes : str
        Axes of every image, e.g. ``"YX"``, ``"ZYX"``, ``"TCYX"``.
    model_dir : path
        Folder that receives the model.
    time_budget : float, optional
        Seconds after which training stops cleanly, keeping the best weights.
    resume : bool
        Continue from ``model_dir``'s last checkpoint (its configuration is kept).
    overwrite, device, progress, callbacks, initialize, stop
        See :func:`carekit.training.train_mode`.
    **options
        Any :class:`~carekit.config.NetConfig` or :class:`~carekit.config.TrainConfig` field,
        e.g. ``epochs=10, kernel_size=3, patch_size=(64, 64)``.

    Examples
    --------
    >>> model = carekit.train(noisy, clean, axes="YX", model_dir="m", epochs=5)  # doctest: +SKIP
    """
    return train_mode(DENOISE, model_dir, {"low": low, "high": high, "axes": axes}, **options)
