"""One training outline for every mode: settings, the mode's data, a configuration, a sampler, the loop.

:func:`train_mode` is the outline: it resumes or refuses an existing folder, asks the mode for its
pairs, builds the configuration, settles the choices that depend on the data, draws patches and
hands the sampler and the loss to :func:`fit`. Samplers and losses are plug-in points (see
:mod:`carekit.trainer`): targets may be absent and a loss may count masked pixels only, as
self-supervised modes need.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from carekit.config import RESIDUAL_FROM_DB, Config, NetConfig, TrainConfig, default_spatial
from carekit.data.pairs import ImagePair, check_pairs
from carekit.engine import choose_engine
from carekit.errors import CarekitError
from carekit.filterblend import FilterBlendFit
from carekit.guards import (
    NET_FIELDS,
    TRAIN_FIELDS,
    check_intensity_map,
    check_same_run,
    check_same_settings,
    check_time_budget,
    check_trainable,
    run_record,
)
from carekit.io import prepare_output, read_json, write_json
from carekit.margin import Margin
from carekit.metrics import decibels, fitted_error
from carekit.model import CARE, CONFIG, LAST, WEIGHTS, build_net
from carekit.pretrained import warm_start
from carekit.quantize import Int8Check
from carekit.registry import Mode, TrainingData, mode_of
from carekit.sampling import PatchSampler
from carekit.trainer import Callback, Loss, Sampler, Trainer

RUN_OPTIONS = ("time_budget", "device", "progress", "callbacks", "initialize", "stop", "loss")  # fit's keywords


def check_settings(settings: dict) -> None:
    unknown = sorted(set(settings) - NET_FIELDS - TRAIN_FIELDS - {"spatial"})
    if unknown:
        raise CarekitError(f"unknown setting(s) {', '.join(unknown)}")


def make_config(axes: str, channels: tuple[int, int], settings: dict, mode: str = "denoise", **parts) -> Config:
    """A :class:`Config` from data facts and keyword settings (net or training fields by name),
    for ``mode`` with its own ``parts`` (``axial``, ``projection``, ``synthetic``)."""
    check_settings(settings)
    net = NetConfig(**{k: v for k, v in settings.items() if k in NET_FIELDS})
    train = TrainConfig(**{k: v for k, v in settings.items() if k in TRAIN_FIELDS})
    return Config(axes, mode, settings.get("spatial", ""), channels[0], channels[1], net, train, **parts)


def resumable(model_dir: Path, resume: bool, overwrite: bool, settings: dict | None = None,
              mode: str | None = None) -> Config | None:  # fmt: skip
    """The folder's configuration when resuming (its epochs raised to ``settings["epochs"]`` if given);
    None for a fresh start.

    A resumed run keeps its own settings: ``settings`` that differ from them, or another ``mode``,
    are refused. A fresh start refuses a folder that already holds a model unless ``overwrite``.
    """
    settings = settings or {}
    if resume:
        if not (model_dir / LAST).exists():
            raise CarekitError(f"{model_dir}: no checkpoint to resume; train without --resume first")
        config = Config.from_dict(read_json(model_dir / CONFIG), source=str(model_dir / CONFIG))
        if mode is not None and config.mode != mode:
            raise CarekitError(f"{model_dir}: the interrupted run trained a {config.mode} model; resume it with "
                               f"--mode {config.mode}")  # fmt: skip
        check_same_settings(model_dir, config, settings)
        if settings.get("epochs") is not None:
            config.train.epochs = settings["epochs"]
            config.train.validate()
        return config
    if (model_dir / WEIGHTS).exists() and not overwrite:
        raise CarekitError(f"{model_dir}: already holds a trained model; choose a new folder, or --overwrite")
    return None


def channels_of(pairs: list[ImagePair]) -> tuple[int, int]:
    return pairs[0].low.shape[0], pairs[0].high.shape[0]


def input_fidelity(pairs: list[ImagePair], n_pairs: int = 16, pixels: int = 250_000) -> float | None:
    """Mean PSNR (dB, :mod:`carekit.metrics`' procedure) of training inputs against their targets.

    Over up to ``n_pairs`` pairs spread over the list, each read at a stride that leaves about
    ``pixels`` pixels. None where inputs and targets differ in shape (channels, projections).
    """
    if any(p.low.shape != p.high.shape for p in pairs):
        return None
    scores = []
    for i in dict.fromkeys(np.linspace(0, len(pairs) - 1, min(n_pairs, len(pairs))).round().astype(int)):
        low, high = pairs[i].low.ravel(), pairs[i].high.ravel()
        step = max(1, low.size // pixels)
        scores.append(decibels(fitted_error(low[::step], high[::step])[2]))
    return float(np.mean(scores))


def residual_for(pairs: list[ImagePair]) -> bool:
    """Add the input back when it is already close to the target (``RESIDUAL_FROM_DB``)."""
    fidelity = input_fidelity(pairs)
    return fidelity is not None and fidelity >= RESIDUAL_FROM_DB


def train_mode(kind: Mode, model_dir: str | Path, inputs: dict, *, resume: bool = False, overwrite: bool = False,
               **settings) -> CARE:  # fmt: skip
    """The training outline of every mode: ``inputs`` (the mode's, by name) into a model in ``model_dir``.

    ``settings`` hold the options of :func:`fit` (``time_budget``, ``device``, ``progress``,
    ``callbacks``, ``initialize``, ``stop``, ``loss``), :class:`~carekit.config.NetConfig` and
    :class:`~carekit.config.TrainConfig` fields and the mode's own settings.
    """
    named_loss = isinstance(settings.get("loss"), str)  # a loss by name is the configuration's, a function fit's
    run = {k: settings.pop(k) for k in RUN_OPTIONS if k in settings and not (k == "loss" and named_loss)}
    model_dir = Path(model_dir)
    own = {k: settings.pop(k) for k in kind.settings if k in settings}
    check_settings(settings)
    saved = resumable(model_dir, resume, overwrite, settings, kind.name)
    if saved is None:  # a fresh start: the mode's training defaults where the user gave none
        settings = {**(kind.train_defaults or {}), **settings}
    data: TrainingData = kind.data(inputs, saved, {**settings, **own, "progress": run.get("progress", True)})
    check_pairs(data.pairs, self_supervised=kind.targets == "input")
    record = run_record(kind, inputs, own, data.pairs)
    if resume:
        check_same_run(model_dir, record)
    spatial = data.spatial or settings.get("spatial") or default_spatial(data.axes)
    parts = {kind.part: data.part} if kind.part else {}
    config = saved or make_config(data.axes, channels_of(data.pairs), {**settings, "spatial": spatial}, kind.name,
                                  **parts)  # fmt: skip
    if channels_of(data.pairs) != (config.n_channel_in, config.n_channel_out):
        raise CarekitError(f"{model_dir}: the model maps {config.n_channel_in} to {config.n_channel_out} channel(s) "
                           f"but the data has {channels_of(data.pairs)}; train a new model for these data")  # fmt: skip
    settle(config, data.pairs)
    t = config.train
    options = {"val_fraction": t.validation_fraction, "threshold": t.background_threshold, "augment": t.augment,
               "jitter": t.intensity_jitter, "redraw": t.redraw, **(kind.sampler_options or {})}  # fmt: skip
    sampler = PatchSampler(data.pairs, t.patch_size, **options)
    config.redraw = sampler.redraw_report()
    if kind.sampler is not None:
        sampler = kind.sampler(sampler, config)
    model = fit(sampler, config, model_dir, resume=resume, record=record, **run)
    if kind.finish is not None:
        kind.finish(model, data)
    return model


def settle(config: Config, pairs: list[ImagePair]) -> None:
    """Make the choices a configuration leaves to the data: the residual (and with it batch
    normalisation and the intensity jitter, see ``RESIDUAL_FROM_DB``)."""
    config.net = config.net.settled(residual_for(pairs) if config.net.residual is None else None)
    if config.train.intensity_jitter is None:
        config.train.intensity_jitter = bool(config.net.residual)


def fit(sampler: Sampler, config: Config, model_dir: str | Path, *, loss: Loss | None = None, resume: bool = False,
        time_budget: float | None = None, device: str = "auto", progress: bool = True,
        callbacks: Sequence[Callback] = (), initialize: Callable[[CARE], None] | None = None,
        stop: threading.Event | None = None, record: dict | None = None) -> CARE:  # fmt: skip
    """Train ``config``'s network on ``sampler``'s batches into ``model_dir`` and return the best model.

    ``loss`` defaults to the configuration's; ``callbacks`` are told of the start, every step, every
    epoch and the end (a progress bar joins them unless ``progress`` is False); ``initialize`` is
    called with the freshly built model instead of the warm start from carekit's pretrained network
    (:func:`carekit.pretrained.warm_start`; neither on ``resume``); setting
    ``stop`` from another thread ends training cleanly, keeping the best weights. ``record``
    identifies the run in its checkpoints (see :func:`run_record`).
    """
    model_dir = Path(model_dir)
    check_time_budget(time_budget)
    check_intensity_map(sampler.intensity_map)
    config.intensity_map = sampler.intensity_map.to_dict()
    prepare_output(model_dir / WEIGHTS, role="--model")
    torch.manual_seed(config.train.seed)
    config.blend = None  # a resumed model's mix is fitted anew at the end: the network never trains through one
    care = mode_of(config.mode).model(config, build_net(config), model_dir)
    engine = choose_engine(device, config.train.precision, care.probe(train=True))
    check_trainable(care, engine)
    if not resume:  # the pretrained start, unless the caller brings its own or training.init is "scratch"
        (initialize or warm_start)(care)
    write_json(model_dir / CONFIG, config.to_dict())
    ends = [FilterBlendFit(), Margin(), Int8Check()]  # in this order: the margin and int8 copy include the mix
    trainer = Trainer(care, sampler, model_dir, engine, loss, [*callbacks, *ends], stop)
    trainer.record = record
    trainer.run(time_budget=time_budget, resume=resume, progress=progress)
    return CARE.load(model_dir)
