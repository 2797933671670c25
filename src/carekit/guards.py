"""Checks that stop a training run before it starts when it cannot succeed, or when it is not the run
it claims to continue (``--resume`` with other data or settings)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from carekit.config import Config, NetConfig, TrainConfig
from carekit.data.pairs import ImagePair, fingerprint
from carekit.engine import Engine
from carekit.errors import CarekitError
from carekit.model import CARE, LAST
from carekit.normalize import IntensityMap
from carekit.registry import Mode
from carekit.tiling import available_memory
from carekit.trainer import checkpoint_state

NET_FIELDS = set(NetConfig.__dataclass_fields__)
TRAIN_FIELDS = set(TrainConfig.__dataclass_fields__)
DATA_INPUTS = ("low", "high", "input", "recipe", "psf")  # data by path or array: compared by content on resume
TRAINING_MEMORY = 3  # training keeps about this many times a forward pass's activations (backward pass)


def check_time_budget(time_budget: float | None) -> None:
    if time_budget is not None and not (math.isfinite(time_budget) and time_budget > 0):
        raise CarekitError(f"--time-budget must be a positive number of seconds, got {time_budget}")


def check_intensity_map(imap: IntensityMap) -> None:
    if not all(math.isfinite(v) for v in (*imap.gain, *imap.offset)):
        raise CarekitError("the training images' intensities are too large to normalise (float overflow); "
                           "rescale them")  # fmt: skip


def check_same_settings(model_dir: Path, config: Config, settings: dict) -> None:
    """A resumed run keeps its configuration: refuse given settings that differ (epochs may grow)."""
    changed = [f"--{k.replace('_', '-')} {v} (the run's: {config_value(config, k)})" for k, v in settings.items()
               if k != "epochs" and not same_setting(v, config_value(config, k))]  # fmt: skip
    if changed:
        raise CarekitError(f"{model_dir}: --resume continues the interrupted run with its own settings, but "
                           f"{'; '.join(changed)} differ; drop them, or train a new model")  # fmt: skip


def config_value(config: Config, name: str):
    """The value of setting ``name`` in ``config`` (a top-level, net or training field)."""
    part = config.net if name in NET_FIELDS else config.train if name in TRAIN_FIELDS else config
    return getattr(part, name, None)


def same_setting(given, recorded) -> bool:
    if isinstance(given, (list, tuple)) and isinstance(recorded, (list, tuple)):
        return list(given) == list(recorded)
    return given == recorded


def run_record(kind: Mode, inputs: dict, own: dict, pairs: list[ImagePair]) -> dict:
    """What identifies a training run: its mode, the settings given that are not data, and a hash of
    its training pairs (data moved to another folder is still the same data)."""
    given = {**inputs, **own}
    plain = (str, int, float, bool, tuple, list)
    named = {k: list(v) if isinstance(v, tuple) else v for k, v in given.items()
             if k not in DATA_INPUTS and v is not None and isinstance(v, plain)}  # fmt: skip
    return {"mode": kind.name, "settings": named, "data": fingerprint(pairs)}


def check_same_run(model_dir: Path, record: dict) -> None:
    """Refuse to resume a checkpoint written by a run with other data or settings."""
    recorded = checkpoint_state(model_dir / LAST).get("run")
    if not recorded:  # written before runs were recorded
        return
    if recorded.get("data") != record["data"]:
        raise CarekitError(f"{model_dir}: the training data differ from the interrupted run's; resume with the same "
                           "images, or train a new model (without --resume)")  # fmt: skip
    before = recorded.get("settings", {})
    changed = [f"{k} {v!r} (the run's: {before.get(k)!r})" for k, v in record["settings"].items() if before.get(k) != v]
    if changed:
        raise CarekitError(f"{model_dir}: --resume continues the interrupted run, but {'; '.join(changed)} differ; "
                           "give the run's own settings, or train a new model")  # fmt: skip


def check_trainable(care: CARE, engine: Engine) -> None:
    """Patches must fit the network's pooling grid, and a batch (with the validation patches) the memory."""
    t, grid = care.config.train, care.net.divisor()
    patch = t.patch_size[len(t.patch_size) - len(grid) :]
    if any(p % g for p, g in zip(patch, grid, strict=True)):
        fit = ",".join(str(max(g, p // g * g)) for p, g in zip(patch, grid, strict=True))
        raise CarekitError(f"--patch-size {','.join(map(str, t.patch_size))} must be a multiple of the network's "
                           f"pooling grid {','.join(map(str, grid))} along each axis; use e.g. {fit}")  # fmt: skip
    voxels = math.prod(t.patch_size)
    c = care.config
    need = TRAINING_MEMORY * t.batch_size * voxels * care.net.bytes_per_voxel() * engine.activation_scale
    need += t.validation_patches * voxels * 4 * (c.n_channel_in + c.n_channel_out)
    free = torch.cuda.mem_get_info(engine.device)[0] if engine.device.type == "cuda" else available_memory()
    if need > free:
        raise CarekitError(f"--batch-size {t.batch_size} of --patch-size {','.join(map(str, t.patch_size))} (and "
                           f"{t.validation_patches} validation patches) need about {need / 2**30:.1f} GiB, more than "
                           f"the {free / 2**30:.1f} GiB available; lower --batch-size or --patch-size")  # fmt: skip
