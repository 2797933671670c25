"""Noise2Noise: restoration learnt from two noisy acquisitions of the same sample (Lehtinen et al. 2018).

The target of each input is another acquisition as noisy as itself (two folders matched by name,
or adjacent time points of a time-lapse whose sample does not change between them). With noise
of zero mean the network learns what it would learn from clean targets, only more slowly. Each
pair trains both ways round (input and target swapped at random), so both acquisitions serve as
inputs. A new model starts, as a denoising one does, from the shipped denoising network that
matches its own (``init="scratch"`` opts out). Prediction, tiling, out-of-core prediction,
test-time augmentation and export are those of every denoising model.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from carekit.config import Config, default_spatial, require
from carekit.data.noisy import adjacent_frames, read_all
from carekit.data.pairs import load_pairs
from carekit.errors import CarekitError
from carekit.model import CARE
from carekit.modes.denoise import AXES, DENOISE
from carekit.modes.n2v import NO_DISTRIBUTION
from carekit.registry import Mode, Option, TrainingData, register
from carekit.sampling import PatchSampler
from carekit.training import train_mode

N2N_CITE = (
    ("Lehtinen et al. (2018), Noise2Noise: learning image restoration without clean data. ICML 2018.",
     "10.48550/arXiv.1803.04189"),
)  # fmt: skip


class SwappedPairs:
    """Batches of a :class:`PatchSampler` whose input and target trade places at random, per patch."""

    def __init__(self, patches: PatchSampler) -> None:
        self.patches = patches
        self.intensity_map = patches.intensity_map

    def batches(self, seed, steps: int, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        rng = np.random.default_rng(seed)
        for _ in range(steps):
            x, y = self.patches.batch(rng, size)
            swap = (rng.random(size) < 0.5).reshape(-1, *(1,) * (x.ndim - 1))
            yield np.where(swap, y, x), np.where(swap, x, y)

    def validation(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
        return self.patches.validation(n, seed)


def n2n_data(inputs: dict, saved: Config | None, settings: dict) -> TrainingData:
    low, high, movie = inputs.get("low"), inputs.get("high"), inputs.get("input")
    axes = saved.axes if saved else inputs.get("axes")
    if movie is not None and (low is not None or high is not None):
        raise CarekitError("n2n training takes either --low and --high (two acquisitions) or --input (a time-lapse "
                           "of a static sample), not both")  # fmt: skip
    if movie is not None:
        found, axes = read_all(movie, axes)
        spatial = saved.spatial if saved else settings.get("spatial") or default_spatial(axes)
        return TrainingData(adjacent_frames(found, axes, spatial), axes, spatial)
    if low is None or high is None or axes is None:
        raise CarekitError("n2n training needs --low and --high (two noisy acquisitions of the same sample, matched "
                           "by name) and --axes, or --input with a time-lapse of a static sample")  # fmt: skip
    spatial = saved.spatial if saved else settings.get("spatial") or default_spatial(axes)
    return TrainingData(load_pairs(low, high, axes, spatial), axes, spatial)


def check_n2n(config: Config) -> None:
    require(config.n_channel_in == config.n_channel_out, "n2n pairs two acquisitions of the same channels")
    require(not config.net.probabilistic, NO_DISTRIBUTION.format(mode="n2n"))


# MSE: its minimiser is the mean of the noisy targets, the clean signal for zero-mean noise
N2N_TRAINING = {"loss": "mse"}

N2N = register(
    Mode(
        name="n2n",
        summary="Noise2Noise: two noisy acquisitions of the same sample (or adjacent frames of a static one)",
        inputs=("low", "high", "input", "axes"),
        data=n2n_data,
        model=CARE,
        check=check_n2n,
        net_defaults=DENOISE.net_defaults,
        train_defaults=N2N_TRAINING,
        warm_start="denoise",
        sampler=lambda patches, config: SwappedPairs(patches),
        targets="noisy",
        cite=lambda config: N2N_CITE,
        supports=frozenset({"tiling", "out_of_core", "export", "tta"}),
        options=(
            Option("--low", "one noisy acquisition: file(s) or folder(s)", {"nargs": "+", "metavar": "PATH"}),
            Option("--high", "the other acquisition, matched by name (n2n: as noisy as --low)", {"metavar": "PATH"}),
            Option("--input", "n2n: a time-lapse of a static sample (adjacent frames pair up)", {"metavar": "PATH"}),
            AXES,
        ),
    )
)


def train_n2n(low, high, axes: str | None, model_dir: str | Path, *, frames=None, **options) -> CARE:
    """Train Noise2Noise on two noisy acquisitions ``low`` and ``high`` of the same sample (arrays,
    lists or paths, as for :func:`carekit.train`), or with ``frames`` on a time-lapse of a static
    sample (adjacent time points pair up; ``low`` and ``high`` None). ``options`` as for
    :func:`carekit.train`.
    """
    inputs = {"low": low, "high": high, "input": frames, "axes": axes}
    return train_mode(N2N, model_dir, {k: v for k, v in inputs.items() if v is not None}, **options)
