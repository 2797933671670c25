"""One training loop for every mode.

Adam with the learning rate halved when validation stops improving; the best weights
and a last checkpoint (weights, optimizer, scheduler, history) are written after every
epoch, so training can stop at a time budget or an interruption and resume later.
"""

from __future__ import annotations

import copy
import json
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from carekit.axes import check_axes
from carekit.config import RESIDUAL_FROM_DB, Config, NetConfig, TrainConfig, default_spatial
from carekit.data.pairs import ImagePair, load_pairs
from carekit.data.patches import PatchSampler
from carekit.engine import Engine, choose_engine
from carekit.errors import CarekitError
from carekit.heap import reuse_freed_memory
from carekit.io import prepare_output, read_json, write_atomic, write_json
from carekit.metrics import decibels, fitted_error
from carekit.model import (
    CARE,
    CONFIG,
    CURVE,
    HISTORY,
    LAST,
    WEIGHTS,
    build_net,
    load,
    load_weights,
    model_class,
    save_weights,
    state_dict_cpu,
)

HISTORY_COLUMNS = ("epoch", "steps", "seconds", "loss", "val_loss", "lr")
NET_FIELDS = set(NetConfig.__dataclass_fields__)
TRAIN_FIELDS = set(TrainConfig.__dataclass_fields__)


NLL_BETA = 1.0


def laplace_nll(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of ``y`` under Laplace(mean, scale) stacked as ``pred = [mean, scale]``.

    Each pixel's term is weighted by its scale to the power :data:`NLL_BETA`, held constant for
    the gradient (beta-NLL, Seitzer et al. 2022). The plain NLL (beta = 0) moves the mean by
    ``sign(error) / scale``, so pixels the network is already sure of (flat background)
    dominate and the mean learns more slowly than under MAE; with ``beta = 1`` the mean's
    gradient is exactly MAE's, while the scale's optimum stays the expected absolute error.
    """
    c = y.shape[1]
    mean, scale = pred[:, :c].float(), pred[:, c:].float()
    nll = torch.abs(y - mean) / scale + torch.log(scale) + math.log(2.0)
    return torch.mean(nll * scale.detach() ** NLL_BETA)


def loss_function(name: str, probabilistic: bool = False) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if probabilistic:
        return laplace_nll
    if name == "mse":
        return lambda pred, y: torch.mean((pred.float() - y) ** 2)
    return lambda pred, y: torch.mean(torch.abs(pred.float() - y))


def check_settings(settings: dict) -> None:
    unknown = sorted(set(settings) - NET_FIELDS - TRAIN_FIELDS - {"spatial"})
    if unknown:
        raise CarekitError(f"unknown setting(s) {', '.join(unknown)}")


def make_config(axes: str, channels: tuple[int, int], settings: dict, mode: str = "denoise", **parts) -> Config:
    """A :class:`Config` from data facts and keyword settings (net or training fields by name),
    for ``mode`` with its own ``parts`` (``axial``, ``projection``, ``synthetic``)."""
    check_settings(settings)
    return Config(
        axes=axes,
        mode=mode,
        spatial=settings.get("spatial", ""),
        n_channel_in=channels[0],
        n_channel_out=channels[1],
        net=NetConfig(**{k: v for k, v in settings.items() if k in NET_FIELDS}),
        train=TrainConfig(**{k: v for k, v in settings.items() if k in TRAIN_FIELDS}),
        **parts,
    )


def train(
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
) -> CARE:
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
    **settings
        Any :class:`~carekit.config.NetConfig` or :class:`~carekit.config.TrainConfig` field,
        e.g. ``epochs=10, kernel_size=3, patch_size=(64, 64)``.

    Examples
    --------
    >>> model = carekit.train(noisy, clean, axes="YX", model_dir="m", epochs=5)  # doctest: +SKIP
    """
    model_dir = Path(model_dir)
    saved = resumable(model_dir, resume, overwrite, settings.get("epochs"))
    check_settings(settings)
    axes = saved.axes if saved else check_axes(axes, what="--axes")
    spatial = saved.spatial if saved else settings.get("spatial") or default_spatial(axes)
    pairs = load_pairs(low, high, axes, spatial)
    config = saved or make_config(axes, channels_of(pairs), settings)
    return fit(pairs, config, model_dir, resume=resume, time_budget=time_budget, device=device, progress=progress)


def channels_of(pairs: list[ImagePair]) -> tuple[int, int]:
    return pairs[0].low.shape[0], pairs[0].high.shape[0]


def resumable(model_dir: Path, resume: bool, overwrite: bool, epochs: int | None = None) -> Config | None:
    """The folder's configuration when resuming (``epochs`` raised if given); None for a fresh start.

    A fresh start refuses a folder that already holds a model unless ``overwrite``.
    """
    if resume:
        if not (model_dir / LAST).exists():
            raise CarekitError(f"{model_dir}: no checkpoint to resume; train without --resume first")
        config = Config.from_dict(read_json(model_dir / CONFIG), source=str(model_dir / CONFIG))
        if epochs is not None:
            config.train.epochs = int(epochs)
            config.train.validate()
        return config
    if (model_dir / WEIGHTS).exists() and not overwrite:
        raise CarekitError(f"{model_dir}: already holds a trained model; choose a new folder, or --overwrite")
    return None


def fit(
    pairs: list[ImagePair],
    config: Config,
    model_dir: str | Path,
    *,
    resume: bool = False,
    time_budget: float | None = None,
    device: str = "auto",
    progress: bool = True,
    rotate: bool = True,
) -> CARE:
    """Train ``config``'s network on ``pairs`` into ``model_dir`` (every mode ends here)."""
    model_dir = Path(model_dir)
    if channels_of(pairs) != (config.n_channel_in, config.n_channel_out):
        raise CarekitError(
            f"{model_dir}: the model maps {config.n_channel_in} to {config.n_channel_out} channel(s) "
            f"but the data has {channels_of(pairs)}; train a new model for these data"
        )
    t = config.train
    config.net = config.net.settled(residual_for(pairs) if config.net.residual is None else None)
    if t.intensity_jitter is None:  # see RESIDUAL_FROM_DB
        t.intensity_jitter = bool(config.net.residual)
    sampler = PatchSampler(
        pairs,
        t.patch_size,
        val_fraction=t.validation_fraction,
        threshold=t.background_threshold,
        augment=t.augment,
        rotate=rotate,
        jitter=t.intensity_jitter,
    )
    config.intensity_map = sampler.intensity_map.to_dict()
    prepare_output(model_dir / WEIGHTS, role="--model")
    torch.manual_seed(t.seed)
    care = model_class(config.mode)(
        config, build_net(config), model_dir
    )  # resuming replaces these weights with the checkpoint's
    write_json(model_dir / CONFIG, config.to_dict())
    Trainer(care, sampler, model_dir, choose_engine(device, t.precision)).run(
        time_budget=time_budget, resume=resume, progress=progress
    )
    return load(model_dir)


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


class Prefetcher:
    """Draws batches in a background thread so the optimizer never waits for patches."""

    def __init__(self, source: Iterator, depth: int = 3) -> None:
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._fill, args=(source,), daemon=True)
        self.thread.start()

    def _fill(self, source: Iterator) -> None:
        try:
            for item in source:
                while not self.stop.is_set():
                    try:
                        self.queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self.stop.is_set():
                    return
            self.queue.put(None)
        except BaseException as e:  # hand sampling errors to the training thread
            self.queue.put(e)

    def __iter__(self) -> Iterator:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self.stop.set()


class AveragedWeights:
    """An exponential moving average of a network's weights, updated after every optimizer step.

    The decay ramps up as ``min(decay, (1 + n) / (10 + n))`` over the first steps ``n``, so
    the average is not held back by the random initial weights; buffers (batch-norm
    statistics) are copied, as they are averages already.
    """

    def __init__(self, net: torch.nn.Module, decay: float) -> None:
        self.decay, self.steps = decay, 0
        self.net = copy.deepcopy(net)
        for p in self.net.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, net: torch.nn.Module) -> None:
        self.steps += 1
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        torch._foreach_lerp_(list(self.net.parameters()), list(net.parameters()), 1.0 - decay)
        for mine, theirs in zip(self.net.buffers(), net.buffers(), strict=True):
            mine.copy_(theirs)

    def load(self, tensors: dict, net: torch.nn.Module) -> None:
        """Restore from a checkpoint's tensors; one written without an average starts from ``net``."""
        state = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
        self.net.load_state_dict(state or net.state_dict())
        self.steps = int(tensors["ema_steps"][0]) if "ema_steps" in tensors else 0


class Trainer:
    """Runs epochs, validation, checkpoints and the progress bar for one model."""

    def __init__(self, care: CARE, sampler, model_dir: Path, engine: Engine, loss: Callable | None = None) -> None:
        self.care, self.sampler, self.dir, self.engine = care, sampler, Path(model_dir), engine
        self.config = care.config
        t = self.config.train
        self.net = engine.prepare(care.net)
        self.loss = loss or loss_function(t.loss, self.config.net.probabilistic)
        fused = engine.device.type in ("cpu", "cuda")  # one kernel for all parameters: ~4x faster steps
        self.opt = torch.optim.Adam(self.net.parameters(), lr=t.learning_rate, fused=fused)
        self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(self.opt, factor=t.lr_factor, patience=t.lr_patience)
        self.scaler = torch.amp.GradScaler("cuda", enabled=engine.precision == "float16")
        self.val = sampler.validation(t.validation_patches, seed=t.seed)
        self.epoch, self.best, self.history = 0, math.inf, []
        self.averaged = AveragedWeights(self.net, t.ema) if t.ema > 0 else None

    # -- one step / one pass -------------------------------------------------------
    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        with self.engine.exact():  # the backward pass runs outside autocast, in the same precision
            with self.engine.autocast():
                pred = self.net(self.engine.tensor(x))
            loss = self.loss(pred, self.engine.tensor(y))
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        if self.averaged is not None:
            self.averaged.update(self.net)
        return float(loss.detach())

    @property
    def kept(self) -> torch.nn.Module:
        """The weights that are validated and saved: the running average, where there is one."""
        return self.averaged.net if self.averaged is not None else self.net

    def set_lr(self, lr: float) -> None:
        for group in self.opt.param_groups:
            group["lr"] = lr

    def validate(self) -> float:
        if self.val is None:
            return math.nan
        x, y = self.val
        net = self.kept
        net.eval()
        total = 0.0
        with torch.inference_mode():
            for i in range(0, len(x), self.config.train.batch_size):
                xb, yb = x[i : i + self.config.train.batch_size], y[i : i + self.config.train.batch_size]
                with self.engine.autocast():
                    pred = net(self.engine.tensor(xb))
                total += float(self.loss(pred, self.engine.tensor(yb))) * len(xb)
        self.net.train()
        return total / len(x)

    # -- the loop --------------------------------------------------------------------
    def run(self, *, time_budget: float | None = None, resume: bool = False, progress: bool = True) -> list[dict]:
        t = self.config.train
        if resume:
            self.load_checkpoint()
        start = time.monotonic()
        spent = self.history[-1]["seconds"] if self.history else 0.0
        bar = tqdm(
            total=t.epochs * t.steps_per_epoch,
            initial=self.epoch * t.steps_per_epoch,
            desc="train",
            unit="step",
            disable=not progress,
            dynamic_ncols=True,
        )
        self.net.train()
        out_of_time = False
        with reuse_freed_memory():  # large tensors of every step come back from the heap
            try:
                while self.epoch < t.epochs and not out_of_time:
                    losses = []
                    feed = Prefetcher(self.sampler.batches([t.seed, self.epoch], t.steps_per_epoch, t.batch_size))
                    try:
                        for x, y in feed:
                            if t.lr_schedule == "cosine":
                                done = (self.epoch * t.steps_per_epoch + len(losses)) / (t.epochs * t.steps_per_epoch)
                                if time_budget:
                                    done = max(done, (time.monotonic() - start) / time_budget)
                                self.set_lr(t.learning_rate * 0.5 * (1 + math.cos(math.pi * min(done, 1.0))))
                            losses.append(self.step(x, y))
                            bar.update(1)
                            if len(losses) % 10 == 0:
                                bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", refresh=False)
                            if time_budget is not None and time.monotonic() - start >= time_budget:
                                out_of_time = True
                                break
                    finally:
                        feed.close()
                    self.end_epoch(losses, spent + time.monotonic() - start)
                    bar.set_postfix(
                        loss=f"{self.history[-1]['loss']:.4f}",
                        val=f"{self.history[-1]['val_loss']:.4f}",
                        lr=f"{self.opt.param_groups[0]['lr']:.1e}",
                    )
            except KeyboardInterrupt:
                bar.close()
                raise CarekitError(
                    f"training interrupted after epoch {self.epoch}; the best model is in {self.dir}, "
                    "continue with --resume"
                ) from None
            finally:
                bar.close()
        self.finish()
        return self.history

    def end_epoch(self, losses: list[float], seconds: float) -> None:
        val = self.validate()
        score = val if not math.isnan(val) else float(np.mean(losses))
        if self.config.train.lr_schedule == "plateau":
            self.sched.step(score)
        self.epoch += 1
        self.history.append(
            {
                "epoch": self.epoch,
                "steps": len(losses),
                "seconds": round(seconds, 2),
                "loss": float(np.mean(losses)) if losses else math.nan,
                "val_loss": val,
                "lr": self.opt.param_groups[0]["lr"],
            }
        )
        if score < self.best:
            self.best = score
            save_weights(self.dir / WEIGHTS, self.kept)
        self.save_checkpoint()
        write_history(self.dir / HISTORY, self.history)

    def finish(self) -> None:
        from carekit.figures import training_curve

        if not (self.dir / WEIGHTS).exists():
            save_weights(self.dir / WEIGHTS, self.kept)
        training_curve(self.history, self.dir / CURVE)
        load_weights(self.dir / WEIGHTS, self.care.net)
        self.care.weights_changed()

    # -- checkpoints ----------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        tensors = {f"net.{k}": v for k, v in state_dict_cpu(self.net).items()}
        if self.averaged is not None:
            tensors.update({f"ema.{k}": v for k, v in state_dict_cpu(self.averaged.net).items()})
            tensors["ema_steps"] = torch.tensor([self.averaged.steps])
        opt_state = self.opt.state_dict()
        for i, state in opt_state["state"].items():
            for name, value in state.items():
                tensors[f"optim.{i}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous().clone()
        meta = {
            "epoch": self.epoch,
            "best": self.best,
            "history": self.history,
            "param_groups": opt_state["param_groups"],
            "scheduler": self.sched.state_dict(),
        }
        write_atomic(self.dir / LAST, lambda tmp: save_file(tensors, str(tmp), metadata={"state": json.dumps(meta)}))

    def load_checkpoint(self) -> None:
        path = self.dir / LAST
        try:
            tensors = load_file(str(path))
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                meta = json.loads(f.metadata()["state"])
        except Exception as e:
            raise CarekitError(f"{path}: cannot read checkpoint ({e}); train again without --resume") from None
        self.net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        if self.averaged is not None:
            self.averaged.load(tensors, self.net)
        params = list(self.net.parameters())
        state: dict = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, i, name = key.split(".", 2)
                p = params[int(i)]
                if value.shape == p.shape:  # keep the parameter's memory layout (channels-last)
                    value = torch.empty_like(p).copy_(value)
                state.setdefault(int(i), {})[name] = value
        self.opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        self.sched.load_state_dict(meta["scheduler"])
        self.epoch, self.best, self.history = meta["epoch"], meta["best"], meta["history"]


def write_history(path: Path, history: list[dict]) -> None:
    lines = [",".join(HISTORY_COLUMNS)]
    lines += [",".join(str(row[c]) for c in HISTORY_COLUMNS) for row in history]
    text = "\n".join(lines) + "\n"
    write_atomic(path, lambda tmp: tmp.write_text(text))
