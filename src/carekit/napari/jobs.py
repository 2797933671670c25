"""Work in napari's thread workers: results and progress come back to the main thread, and errors
appear as notifications carrying the command line's one-line messages, never as tracebacks."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal

from carekit.errors import CarekitError
from carekit.trainer import Callback

BACKGROUND_NICE = 5  # a job's threads yield the cores to the viewer's own short bursts of work


def run_in_background(call: Callable[[], Any]) -> Any:
    """``call()`` in a fresh thread whose scheduling priority is lowered (Linux nice is per thread,
    and the OpenMP threads PyTorch starts from it inherit it), waiting for it; returns its result or
    raises its error. Training then takes whatever CPU the viewer leaves instead of competing with
    it: on a 2-core first-generation EPYC, a 20 ms timer ticked 81 times in 3 s of training with
    this and 65 without (36 and 48 when the loss plot still redrew every 0.1 s)."""
    outcome: dict[str, Any] = {}

    def body() -> None:
        if hasattr(os, "setpriority"):  # Unix only
            with contextlib.suppress(OSError):  # not allowed or not per thread here: run as is
                nice = os.getpriority(os.PRIO_PROCESS, 0)
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice + BACKGROUND_NICE)
        try:
            outcome["value"] = call()
        except BaseException as e:  # re-raised in the waiting thread
            outcome["error"] = e

    thread = threading.Thread(target=body, name="carekit-job", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def message(error: BaseException) -> str:
    """The line a user sees: a :class:`CarekitError`'s message, as ``carekit`` prints it after
    ``carekit: error:``; any other error's type and first line."""
    if isinstance(error, CarekitError):
        return str(error)
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def guarded(action: Callable[[], Any]) -> Any:
    """Run a main-thread ``action`` (reading a widget's fields, say); an error becomes a notification."""
    try:
        return action()
    except Exception as e:
        show_error(message(e))
        return None


class Relay(QObject):
    """Carries values from a worker thread to the main thread (Qt queues signals across threads)."""

    sent = Signal(object)


class Job:
    """``work(stop)`` in a napari thread worker. ``stop`` is the event its Cancel button sets; ``done``
    receives the result in the main thread, ``ended`` is called after it or after an error, which is
    shown as a notification (a cancelled job's as an information: ``"<what> cancelled"``)."""

    def __init__(self, what: str, work: Callable[[threading.Event], Any], done: Callable[[Any], None],
                 ended: Callable[[], None]) -> None:  # fmt: skip
        self.what, self.done = what, done
        self.stop = threading.Event()
        self.worker = create_worker(self.run, work)
        self.worker.returned.connect(self.returned)
        self.worker.finished.connect(ended)
        self.worker.start()

    def run(self, work: Callable[[threading.Event], Any]) -> tuple[Any, str | None]:
        try:
            return run_in_background(lambda: work(self.stop)), None
        except Exception as e:  # shown in the main thread, by returned
            return None, message(e)

    def returned(self, outcome: tuple[Any, str | None]) -> None:
        value, error = outcome
        if error is None:
            self.done(value)
        elif self.stop.is_set():
            show_info(f"{self.what} cancelled")
        else:
            show_error(error)

    def cancel(self) -> None:
        self.stop.set()


class TrainingFeed(Callback):
    """Reports training to ``send`` (a :class:`Relay`'s emit) from the training thread: a ``start`` per
    member, ``step``s at most every ``interval`` seconds with the mean loss since the last (each
    redraws the loss plot in the viewer's thread: 0.5 s keeps it responsive on slow CPUs), every
    ``epoch``'s row, and the ``fraction`` done over all ``members`` (by steps or by the time budget)."""

    def __init__(self, send: Callable[[dict], None], members: int = 1, time_budget: float | None = None,
                 interval: float = 0.5) -> None:  # fmt: skip
        self.send, self.members, self.interval = send, members, interval
        self.budget = time_budget / members if time_budget else None
        self.member, self.steps, self.losses, self.last = 0, 0, [], 0.0

    def fraction(self, trainer, step: int) -> float:
        t = trainer.config.train
        done = (trainer.epoch * t.steps_per_epoch if step == 0 else step) / (t.epochs * t.steps_per_epoch)
        if self.budget:
            done = max(done, (time.monotonic() - self.started) / self.budget)
        return (self.member - 1 + min(done, 1.0)) / self.members

    def on_start(self, trainer) -> None:
        self.member += 1
        self.started = time.monotonic()
        self.send({"event": "start", "member": self.member, "members": self.members,
                   "fraction": self.fraction(trainer, 0)})  # fmt: skip

    def on_step(self, trainer, step: int, loss: float) -> None:
        self.steps += 1
        self.losses.append(loss)
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self.send({"event": "step", "step": self.steps, "loss": sum(self.losses) / len(self.losses),
                       "epoch": trainer.epoch + 1, "fraction": self.fraction(trainer, step)})  # fmt: skip
            self.losses = []

    def on_epoch(self, trainer, row: dict) -> None:
        done = self.fraction(trainer, row["epoch"] * trainer.config.train.steps_per_epoch)
        self.send({"event": "epoch", "step": self.steps, "row": dict(row), "fraction": done})
