"""How many threads training and prediction use, chosen from the cores that are actually free.

PyTorch's OpenMP threads wait for each other at every operation. When another process holds one of
two cores, a two-thread step waits for the thread the scheduler took away: measured on a 2-core
Zen 4 with the default 2D network (batch 8 x 96²), float32 steps took 244 ms idle, 851 ms with two
threads beside one busy process and 474 ms with one thread. So work starts with as many threads as
there are free cores (affinity, cgroup quota, the load of other processes over 0.1 s), and a
:class:`ThreadTuner` watches step times while it runs: when steps slow down it tries one thread
fewer and keeps the faster count, and now and then it tries one more again, for the other process
may have finished. ``CAREKIT_THREADS=N`` fixes the count and turns the tuning off.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterator

import torch

from carekit.hardware import free_cores, usable_cores

SLOWDOWN = 1.3  # steps this much slower than the best seen at a thread count: try fewer threads
GAIN = 0.9  # a trial count is kept when its steps take at most this share of the time before it
RETRY = 30.0  # seconds before trying more threads again (doubles after each failed try, up to 8x)
FRESH = 2.0  # seconds a measurement of the free cores is reused


def fixed_threads() -> int | None:
    """The thread count set with ``CAREKIT_THREADS``, if any."""
    value = os.environ.get("CAREKIT_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def thread_limit() -> int:
    """The most threads work may use: the usable cores, and never more than torch is set to."""
    return max(1, min(usable_cores(), torch.get_num_threads()))


_measured: tuple[float, int] | None = None  # (when, free cores): one measurement serves a few seconds
_active = threading.local()  # the innermost scope's tuner, per thread


def initial_threads(limit: int | None = None) -> int:
    """Threads to start with: ``CAREKIT_THREADS``, else the free cores within ``limit``."""
    global _measured
    fixed = fixed_threads()
    if fixed is not None:
        return fixed
    limit = thread_limit() if limit is None else limit
    if _measured is None or time.monotonic() - _measured[0] > FRESH:
        _measured = (time.monotonic(), free_cores(usable=limit))
    return max(1, min(limit, _measured[1]))


@contextlib.contextmanager
def scope(*, window: int = 4, shared_cores: bool = False, tune: bool = True) -> Iterator[ThreadTuner | None]:
    """Run a block with the thread count of :func:`initial_threads`, tuned by the step times sent to
    :func:`report` (see :class:`ThreadTuner`); torch's thread count is restored afterwards. Inside
    another scope of the same thread, the outer one keeps doing the work.

    ``shared_cores`` starts with every usable core even where other processes keep some busy: work
    made of few large operations (prediction of large tiles) gets more done on a shared core than
    without it (2048x2048 restored beside one busy process: 1.07 Mpx/s with two threads, 0.89 with
    one), while training's many small operations wait for the slowest thread (4.9 steps/s with one
    thread, 2.7 with two). ``tune=False`` keeps the starting count: float32 results can differ in
    the last bits between thread counts, and work that must repeat bit for bit (a resumed
    OME-Zarr restore) should not depend on the load.
    """
    outer = getattr(_active, "tuner", False)
    if outer is not False:
        yield outer
        return
    before = torch.get_num_threads()
    limit = min(before, usable_cores())
    start = (fixed_threads() or limit) if shared_cores else initial_threads(limit)
    torch.set_num_threads(start)
    tuner = ThreadTuner(limit, start, window=window) if tune and fixed_threads() is None and limit > 1 else None
    _active.tuner = tuner
    try:
        yield tuner
    finally:
        del _active.tuner
        torch.set_num_threads(before)


def report(seconds: float) -> None:
    """Tell the active scope's tuner how long one step (or batch of tiles) took."""
    tuner = getattr(_active, "tuner", None)
    if tuner is not None:
        tuner.step(seconds)


class ThreadTuner:
    """Keeps the thread count that makes steps fastest as the machine's load changes.

    Call :meth:`step` with each step's duration. Every ``window`` steps the median is compared with
    the best median seen at the current count: :data:`SLOWDOWN` times slower starts a trial of one
    thread fewer; at fewer threads than ``limit``, a trial of one more starts every :data:`RETRY`
    seconds (backing off while trials fail). A trial lasts ``window`` steps after one settling step
    and is kept when its median is at most :data:`GAIN` times the median before it.
    """

    def __init__(self, limit: int, threads: int, *, window: int = 6, set_threads: Callable[[int], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.limit, self.threads, self.window = limit, threads, window
        self.set_threads = set_threads or torch.set_num_threads
        self.clock = clock
        self.best: dict[int, float] = {}
        self.recent: list[float] = []
        self.trial: tuple[int, float] | None = None  # (threads before, their median)
        self.settle = 1
        self.retry, self.next_retry = RETRY, clock() + RETRY
        self.changes: list[tuple[float, int]] = []  # (time, threads) of every switch, for reports

    def step(self, seconds: float) -> None:
        if self.settle:  # the first step after a switch pays for re-laid-out threads
            self.settle -= 1
            return
        self.recent.append(seconds)
        if len(self.recent) < self.window:
            return
        median = statistics.median(self.recent)
        self.recent = []
        if self.trial is not None:
            self.end_trial(median)
            return
        best = self.best.get(self.threads)
        self.best[self.threads] = median if best is None else min(best, median)
        if best is not None and median > SLOWDOWN * best and self.threads > 1:
            self.start_trial(self.threads - 1, median)
        elif self.threads < self.limit and self.clock() >= self.next_retry:
            self.start_trial(self.threads + 1, median)

    def start_trial(self, threads: int, median: float) -> None:
        self.trial = (self.threads, median)
        self.switch(threads)

    def end_trial(self, median: float) -> None:
        before, their_median = self.trial
        self.trial, up = None, self.threads > before
        if median <= GAIN * their_median:
            self.best[self.threads] = median
            if up:
                self.retry = RETRY
        else:
            if up:  # more threads did not pay: wait longer before the next try
                self.retry = min(self.retry * 2, 8 * RETRY)
            else:  # fewer threads did not cure the slowdown: it is the new normal at this count
                self.best[before] = their_median
            self.switch(before)
        self.next_retry = self.clock() + self.retry

    def switch(self, threads: int) -> None:
        self.threads, self.settle, self.recent = threads, 1, []
        self.set_threads(threads)
        self.changes.append((self.clock(), threads))
