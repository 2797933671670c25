"""The training loop: epochs, validation, checkpoints, and callbacks that watch it or stop it.

Adam with the learning rate halved when validation stops improving (or a cosine decay); the best
weights and a last checkpoint (weights, optimizer, scheduler, history) are written after every
epoch, so training can stop at a time budget, on request or at an interruption and resume later.
Progress is reported to :class:`Callback` objects (a progress bar is one of them); a GUI's Cancel
button calls :meth:`Trainer.stop`, which ends the run cleanly after the current step. Batches come
from a :class:`Sampler`, and a :class:`Loss` scores them.
"""

from __future__ import annotations

import copy
import json
import math
import queue
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from carekit import threads
from carekit.engine import Engine
from carekit.errors import CarekitError, warn
from carekit.figures import training_curve
from carekit.heap import reuse_freed_memory
from carekit.io import write_atomic
from carekit.model import CARE, CURVE, HISTORY, LAST, WEIGHTS, load_weights, save_weights, state_dict_cpu
from carekit.normalize import IntensityMap
from carekit.scalefit import fit_scale

HISTORY_COLUMNS = ("epoch", "steps", "seconds", "loss", "val_loss", "lr")
LOG_INTERVAL = 15.0  # seconds between progress lines where stderr is not a terminal
DIVERGED = 100.0  # an epoch's validation loss this many times the best one: the run diverged
SCALE_FIT_BATCHES, SCALE_FIT_SEED = 8, 10**6  # batches for the scale fit where there is no validation split

Batch = tuple  # (inputs, targets) or (inputs, targets, mask): float32 arrays (N, C, *patch); targets may be None


class Sampler(Protocol):
    """Where training batches come from (:class:`~carekit.sampling.PatchSampler` draws them from pairs)."""

    intensity_map: IntensityMap  # input to target percentiles, stored with the model

    def batches(self, seed, steps: int, size: int) -> Iterator[Batch]: ...

    def validation(self, n: int, seed: int = 0) -> Batch | None: ...


NLL_BETA = 1.0


class Loss(Protocol):
    """A training loss: network output, targets (None for self-supervised batches, whose loss reads
    the inputs it was given) and an optional mask of the pixels that count (1) and do not (0)."""

    def __call__(
        self, pred: torch.Tensor, y: torch.Tensor | None, mask: torch.Tensor | None = None
    ) -> torch.Tensor: ...


def mean_over(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The mean of ``values``, over the pixels ``mask`` marks where there is one."""
    return torch.mean(values) if mask is None else torch.sum(values * mask) / torch.sum(mask).clamp(min=1)


def laplace_nll(pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
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
    return mean_over(nll * scale.detach() ** NLL_BETA, mask)


def mean_error(pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute error of the mean: the whole output, or a probabilistic network's first channels
    (``pred = [mean, scale]``)."""
    return mean_over(torch.abs(pred[:, : y.shape[1]].float() - y), mask)


def loss_function(name: str, probabilistic: bool = False) -> Loss:
    """The configured loss: MAE or MSE of the mean, or the Laplace NLL of a probabilistic network."""
    if probabilistic:
        return laplace_nll
    if name == "mse":
        return lambda pred, y, mask=None: mean_over((pred.float() - y) ** 2, mask)
    return mean_error


class Callback:
    """Watches a :class:`Trainer`; override what you need. Each method gets the trainer, whose ``care``
    (model), ``dir`` (model folder), ``val`` (validation batch), ``history`` and ``epoch`` it may read,
    and whose :meth:`Trainer.stop` it may call: at the start, after each optimizer step (``step``
    counts the run's steps from 1), after each epoch's validation and checkpoint (``row`` is its line
    of ``history.csv``) and at the end, when the best weights are in the folder and in ``care``."""

    def on_start(self, trainer: Trainer) -> None: ...

    def on_step(self, trainer: Trainer, step: int, loss: float) -> None: ...

    def on_epoch(self, trainer: Trainer, row: dict) -> None: ...

    def on_finish(self, trainer: Trainer) -> None: ...


class ProgressBar(Callback):
    """A tqdm bar over the run's steps, showing the losses and the learning rate; written to a log file
    or pipe (a cluster job's output) at most every :data:`LOG_INTERVAL` seconds."""

    def on_start(self, trainer: Trainer) -> None:
        t = trainer.config.train
        self.losses: list[float] = []
        interval = 0.1 if sys.stderr.isatty() else LOG_INTERVAL
        self.bar = tqdm(total=t.epochs * t.steps_per_epoch, initial=trainer.epoch * t.steps_per_epoch, desc="train",
                        unit="step", dynamic_ncols=True, mininterval=interval)  # fmt: skip

    def on_step(self, trainer: Trainer, step: int, loss: float) -> None:
        self.losses.append(loss)
        self.bar.update(1)
        if len(self.losses) % 10 == 0:
            self.bar.set_postfix(loss=f"{np.mean(self.losses[-50:]):.4f}", refresh=False)

    def on_epoch(self, trainer: Trainer, row: dict) -> None:
        self.losses.clear()
        row_text = {"loss": f"{row['loss']:.4f}", "val": f"{row['val_loss']:.4f}", "lr": f"{row['lr']:.1e}"}
        self.bar.set_postfix(row_text, refresh=False)

    def on_finish(self, trainer: Trainer) -> None:
        self.bar.close()


class ThreadTuning(Callback):
    """Reports each step's duration to the thread tuner of :mod:`carekit.threads` (the time between two
    steps; an epoch's validation and checkpoint are not counted)."""

    def __init__(self) -> None:
        self.last = None

    def on_step(self, trainer: Trainer, step: int, loss: float) -> None:
        now = time.perf_counter()
        if self.last is not None:
            threads.report(now - self.last)
        self.last = now

    def on_epoch(self, trainer: Trainer, row: dict) -> None:
        self.last = None


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
    """Runs epochs, validation, checkpoints and callbacks for one model, ``care``, whose weights train in
    place and end as the best ones. Batches come from ``sampler`` (see :class:`carekit.training.Sampler`);
    ``loss`` defaults to the configuration's. Setting ``stop`` (also by :meth:`stop`, from any thread)
    ends the run after the current step, keeping the best weights."""

    def __init__(self, care: CARE, sampler, model_dir: Path, engine: Engine, loss: Loss | None = None,
                 callbacks: Sequence[Callback] = (), stop: threading.Event | None = None) -> None:  # fmt: skip
        self.care, self.sampler, self.dir, self.engine = care, sampler, Path(model_dir), engine
        self.config = care.config
        t = self.config.train
        self.net = engine.prepare(care.net)
        self.loss = loss or loss_function(t.loss, self.config.net.probabilistic)
        # a probabilistic network is validated (checkpoint, schedule) by its mean alone, as a plain one:
        # its scale is fitted after training (see fit_scale), and the NLL would follow the scale
        self.val_loss = mean_error if loss is None and self.config.net.probabilistic else self.loss
        fused = engine.device.type in ("cpu", "cuda")  # one kernel for all parameters: ~4x faster steps
        self.opt = torch.optim.Adam(self.net.parameters(), lr=t.learning_rate, fused=fused)
        self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(self.opt, factor=t.lr_factor, patience=t.lr_patience)
        self.scaler = torch.amp.GradScaler("cuda", enabled=engine.precision == "float16")
        self.val = sampler.validation(t.validation_patches, seed=t.seed)
        self.epoch, self.best, self.history = 0, math.inf, []
        self.averaged = AveragedWeights(self.net, t.ema) if t.ema > 0 else None
        self.callbacks = list(callbacks)
        self.stopping = stop if stop is not None else threading.Event()
        self.diverged = False  # set when the validation loss exploded: the run ends, keeping the best weights
        self.record: dict | None = None  # what identifies the run (data, settings), kept in the checkpoint

    def stop(self) -> None:
        """Ask the run to end after the current step, keeping the best weights (safe from any thread)."""
        self.stopping.set()

    # -- one step / one pass -------------------------------------------------------
    def step(self, x: np.ndarray, *rest: np.ndarray | None) -> float:
        """One optimizer step on a batch ``(inputs, targets[, mask])``; returns its loss."""
        tensors = [None if a is None else self.engine.tensor(a) for a in rest]
        with self.engine.exact():  # the backward pass runs outside autocast, in the same precision
            with self.engine.autocast():
                pred = self.net(self.engine.tensor(x))
            loss = self.loss(pred, *tensors)
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        if self.averaged is not None:
            self.averaged.update(self.net)
        return float(loss.detach())

    @property
    def kept(self) -> torch.nn.Module:
        """The weights saved where nothing validates them: the running average, where there is one."""
        return self.averaged.net if self.averaged is not None else self.net

    def candidates(self) -> list[torch.nn.Module]:
        """The weights each epoch may keep: the running average (first, so it wins ties) and the
        trained weights, where there is an average; else the trained weights."""
        return [self.net] if self.averaged is None else [self.averaged.net, self.net]

    def set_lr(self, lr: float) -> None:
        for group in self.opt.param_groups:
            group["lr"] = lr

    def val_batches(self) -> list[tuple]:
        """The validation patches in batches of the training batch size (arrays; None where absent)."""
        size = self.config.train.batch_size
        return [
            tuple(None if a is None else a[i : i + size] for a in self.val) for i in range(0, len(self.val[0]), size)
        ]

    def validate(self, net: torch.nn.Module) -> float:
        """The validation loss of ``net`` (one of :meth:`candidates`)."""
        if self.val is None:
            return math.nan
        total = 0.0
        net.eval()
        with torch.inference_mode():
            for arrays in self.val_batches():
                part = [None if a is None else self.engine.tensor(a) for a in arrays]
                with self.engine.autocast():
                    pred = net(part[0])
                total += float(self.val_loss(pred, *part[1:])) * len(part[0])
        self.net.train()
        return total / len(self.val[0])

    # -- the loop --------------------------------------------------------------------
    def run(self, *, time_budget: float | None = None, resume: bool = False, progress: bool = True) -> list[dict]:
        """Train to the configured epochs, the time budget (seconds) or a :meth:`stop`; returns the history.

        ``progress`` shows a :class:`ProgressBar` (one more callback) during this run.
        """
        if resume:
            self.load_checkpoint()
        callbacks = self.callbacks
        self.callbacks = [*callbacks, ProgressBar()] if progress else callbacks
        with threads.scope(), reuse_freed_memory():  # threads for the free cores; heap kept for every step
            self.callbacks.append(ThreadTuning())
            self.loop(time_budget)
        self.finish()
        self.callbacks = callbacks
        return self.history

    def loop(self, time_budget: float | None) -> None:
        """Epochs until the configured number, the time budget or a stop request."""
        t = self.config.train
        start, steps = time.monotonic(), self.epoch * t.steps_per_epoch
        spent = self.history[-1]["seconds"] if self.history else 0.0
        self.announce("on_start")
        self.net.train()
        try:
            out_of_time = False
            while self.epoch < t.epochs and not out_of_time and not self.stopping.is_set() and not self.diverged:
                losses = []
                feed = Prefetcher(self.sampler.batches([t.seed, self.epoch], t.steps_per_epoch, t.batch_size))
                try:
                    for batch in feed:
                        if t.lr_schedule == "cosine":
                            done = (self.epoch * t.steps_per_epoch + len(losses)) / (t.epochs * t.steps_per_epoch)
                            if time_budget:
                                done = max(done, (time.monotonic() - start) / time_budget)
                            self.set_lr(t.learning_rate * 0.5 * (1 + math.cos(math.pi * min(done, 1.0))))
                        losses.append(self.step(*batch))
                        if not math.isfinite(losses[-1]):
                            raise self.failure(f"the loss became {losses[-1]} at step {steps + 1}")
                        steps += 1
                        self.announce("on_step", steps, losses[-1])
                        out_of_time = time_budget is not None and time.monotonic() - start >= time_budget
                        if out_of_time or self.stopping.is_set():
                            break
                finally:
                    feed.close()
                self.end_epoch(losses, spent + time.monotonic() - start)
        except KeyboardInterrupt:
            raise CarekitError(
                f"training interrupted after epoch {self.epoch}; the best model is in {self.dir}, "
                "continue with --resume"
            ) from None

    def announce(self, event: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self, *args)

    def failure(self, what: str) -> CarekitError:
        """The error that ends a run whose numbers stopped being finite (the best weights stay)."""
        kept = f"the best weights so far are in {self.dir}" if (self.dir / WEIGHTS).exists() else "no weights were kept"
        return CarekitError(f"training diverged in epoch {self.epoch + 1}: {what}; {kept}; train again with a lower "
                            "--learning-rate, or check the training images")  # fmt: skip

    def check_diverged(self, score: float) -> None:
        """Stop, with a warning, when the validation loss grew by orders of magnitude over its best."""
        if math.isfinite(self.best) and self.best > 0 and score > DIVERGED * self.best:
            self.diverged = True
            warn(f"training diverged in epoch {self.epoch}: the validation loss {score:.3g} is "
                 f"{score / self.best:.0f}x its best ({self.best:.3g}); stopped, keeping the best weights in "
                 f"{self.dir}; a lower --learning-rate trains more steadily")  # fmt: skip

    def end_epoch(self, losses: list[float], seconds: float) -> None:
        if not all(bool(torch.isfinite(p).all()) for net in self.candidates() for p in net.parameters()):
            raise self.failure("the weights became NaN or infinite")
        chosen, val = self.kept, math.nan
        if self.val is not None:
            scored = [(self.validate(net), net) for net in self.candidates()]
            bad = [v for v, _ in scored if not math.isfinite(v)]
            if bad:
                raise self.failure(f"the validation loss became {bad[0]}")
            val, chosen = min(scored, key=lambda pair: pair[0])
        score = val if not math.isnan(val) else float(np.mean(losses))
        if self.config.train.lr_schedule == "plateau":
            self.sched.step(score)
        self.epoch += 1
        row = {
            "epoch": self.epoch,
            "steps": len(losses),
            "seconds": round(seconds, 2),
            "loss": float(np.mean(losses)) if losses else math.nan,
            "val_loss": val,
            "lr": self.opt.param_groups[0]["lr"],
            "averaged": chosen is not self.net,
        }
        self.history.append(row)
        self.check_diverged(score)
        if score < self.best:
            self.best = score
            save_weights(self.dir / WEIGHTS, chosen)
        self.save_checkpoint()
        write_history(self.dir / HISTORY, self.history)
        self.announce("on_epoch", row)

    def finish(self) -> None:
        if not (self.dir / WEIGHTS).exists():
            save_weights(self.dir / WEIGHTS, self.kept)
        training_curve(self.history, self.dir / CURVE)
        load_weights(self.dir / WEIGHTS, self.care.net)
        if self.config.net.probabilistic:
            self.fit_scale()
        self.care.weights_changed()
        self.announce("on_finish")

    def fit_scale(self) -> None:
        """Fit the best weights' scale head to their errors on the validation patches (see
        :mod:`carekit.scalefit`; without a validation split, on fresh training batches) and save them."""
        t = self.config.train
        if self.val is not None:
            batches = self.val_batches()
        else:
            batches = list(self.sampler.batches([t.seed, SCALE_FIT_SEED], SCALE_FIT_BATCHES, t.batch_size))
        if fit_scale(self.care.net, batches, self.engine, seed=t.seed) is not None:
            save_weights(self.dir / WEIGHTS, self.care.net)

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
            "run": self.record,
        }
        write_atomic(self.dir / LAST, lambda tmp: save_file(tensors, str(tmp), metadata={"state": json.dumps(meta)}))

    def load_checkpoint(self) -> None:
        path = self.dir / LAST
        meta = checkpoint_state(path)
        try:
            self.restore(load_file(str(path)), meta)
        except Exception as e:  # a damaged or foreign checkpoint: safetensors and torch raise several types
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CarekitError(f"{path}: cannot resume from it ({first}); train again without --resume") from None

    def restore(self, tensors: dict, meta: dict) -> None:
        """Load the weights, optimizer and scheduler state and history of a checkpoint."""
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


def checkpoint_state(path: Path) -> dict:
    """The bookkeeping a checkpoint keeps beside its tensors (epoch, history, optimizer, run record)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return json.loads(f.metadata()["state"])
    except Exception as e:  # safetensors, json and a missing key raise several types for damaged files
        raise CarekitError(f"{path}: cannot read checkpoint ({e}); train again without --resume") from None


def write_history(path: Path, history: list[dict]) -> None:
    lines = [",".join(HISTORY_COLUMNS)]
    lines += [",".join(str(row[c]) for c in HISTORY_COLUMNS) for row in history]
    text = "\n".join(lines) + "\n"
    write_atomic(path, lambda tmp: tmp.write_text(text))
