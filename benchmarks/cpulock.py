"""The machine-wide CPU lock that benchmarks and test runs share on a development machine.

Timed runs hold it exclusively: they announce themselves in ``WANT`` so that new shared holders
(test runs) wait, poll until the current ones are gone, and pause the long untimed jobs that
registered in ``PAUSABLE`` (SIGSTOP, then SIGCONT when done). Long untimed work registers with
:func:`pausable` instead of holding the lock, so it never keeps a timed run waiting.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

LOCK = Path("/tmp/carekit-cpu.lock")
WANT = Path("/tmp/carekit-cpu.want")
PAUSABLE = Path("/tmp/carekit-pausable")


def children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def pause_others() -> list[int]:
    paused = []
    for entry in PAUSABLE.glob("*") if PAUSABLE.exists() else []:
        pid = int(entry.name)
        if pid == os.getpid():
            continue
        for p in [pid, *children(pid)]:
            try:
                os.kill(p, signal.SIGSTOP)
                paused.append(p)
            except ProcessLookupError:
                entry.unlink(missing_ok=True)
    return paused


@contextlib.contextmanager
def cpu_lock(exclusive: bool) -> Iterator[None]:
    with open(LOCK, "a") as f:
        paused: list[int] = []
        if exclusive:
            while True:
                WANT.touch()
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    time.sleep(0.05)
            WANT.unlink(missing_ok=True)
            paused = pause_others()
        else:
            fcntl.flock(f, fcntl.LOCK_SH)
        try:
            yield
        finally:
            for p in paused:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGCONT)
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def pausable() -> Iterator[None]:
    """Let timed runs pause this process while they hold the CPU."""
    PAUSABLE.mkdir(exist_ok=True)
    mark = PAUSABLE / str(os.getpid())
    mark.write_text("")
    try:
        yield
    finally:
        mark.unlink(missing_ok=True)
