"""The machine-wide CPU lock that benchmarks and test runs share on a development machine.

Timed runs hold it exclusively: they announce themselves in ``WANT`` so that new shared holders
(test runs, untimed work) wait, then poll until the current ones are gone. Untimed work holds it
shared.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Iterator
from pathlib import Path

LOCK = Path("/tmp/carekit-cpu.lock")
WANT = Path("/tmp/carekit-cpu.want")


@contextlib.contextmanager
def cpu_lock(exclusive: bool) -> Iterator[None]:
    with open(LOCK, "a") as f:
        if exclusive:
            while True:
                WANT.touch()
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    time.sleep(0.05)
            WANT.unlink(missing_ok=True)
        else:
            fcntl.flock(f, fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
