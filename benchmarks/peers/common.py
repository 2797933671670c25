"""What every worker shares: the job protocol, timing, peak memory. Standard library and numpy only.

A worker is run as ``python worker_<tool>.py JOB.json RESULT.json`` by that tool's own venv. The job
holds a ``task`` name and its parameters; image arrays travel as ``.npy`` files named in the job.
The result is the task's dictionary plus the worker's peak resident memory and package versions.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

THREADS = 2  # the benchmark machine's cores; every tool runs with the same number


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident memory of this process (or, with ``RUSAGE_CHILDREN``, of its largest finished child).

    Linux reports ``ru_maxrss`` in KiB.
    """
    return resource.getrusage(who).ru_maxrss / 1024


def gpu_facts() -> dict:
    """The GPU a torch worker ran on and its peak allocated memory (MB); empty where none was used."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    return {"gpu": torch.cuda.get_device_name(), "gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20}


def random_image(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A positive float32 test image (gamma noise): content does not change a network's speed."""
    return np.random.default_rng(seed).gamma(2.0, 100.0, shape).astype(np.float32)


def random_patches(n: int, shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` pairs of normalised patches of ``shape`` (input, target)."""
    rng = np.random.default_rng(seed)
    y = rng.gamma(2.0, 0.25, (n, *shape)).astype(np.float32)
    return (y + rng.normal(0, 0.2, y.shape)).astype(np.float32), y


class StepClock:
    """Timestamps of optimizer steps; the rate is taken after ``warmup`` steps."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.stamps: list[float] = []

    def tick(self) -> None:
        self.stamps.append(time.perf_counter())

    def summary(self, batch: int, pixels_per_sample: int) -> dict:
        """Steps/s and pixels/s over the steps after the warm-up."""
        timed = self.stamps[self.warmup :]
        if len(timed) < 2:
            raise RuntimeError(f"only {len(self.stamps)} steps ran; need more than warm-up {self.warmup} + 1")
        steps_s = (len(timed) - 1) / (timed[-1] - timed[0])
        return {
            "steps": len(self.stamps),
            "timed_steps": len(timed) - 1,
            "steps_per_s": steps_s,
            "ms_per_step": 1000 / steps_s,
            "mpx_per_s": steps_s * batch * pixels_per_sample / 1e6,
        }


PREDICT_REPEATS = 3  # timed calls per prediction job; the fastest counts


def timed_predict(
    predict: Callable[[np.ndarray], np.ndarray], image: np.ndarray, warmup: np.ndarray, repeats: int = PREDICT_REPEATS
) -> dict:
    """Run ``predict`` once on ``warmup`` (small), then time it ``repeats`` times on ``image``.

    Mpx/s of the input from the fastest call: single calls of the peers varied by up to 2x
    between runs (CSBDeep's 2D kernel-5 prediction took 20.6 s in one run, 10.4 s in the next).
    """
    predict(warmup)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = predict(image)
        times.append(time.perf_counter() - start)
        if out.shape != image.shape:
            raise RuntimeError(f"prediction shape {out.shape} differs from input {image.shape}")
        del out
    seconds = min(times)
    return {"seconds": seconds, "mpx_per_s": image.size / seconds / 1e6, "all_seconds": times}


def warmup_crop(shape: tuple[int, ...]) -> tuple[slice, ...]:
    """A small crop that still holds every axis at a size the networks accept."""
    return tuple(slice(0, min(s, 16 if i < len(shape) - 2 else 128)) for i, s in enumerate(shape))


def serve(tasks: dict[str, Callable[[dict], dict]], versions: Callable[[], dict]) -> None:
    """The worker's main: read the job named on the command line, run its task, write the result."""
    job_path, result_path = Path(sys.argv[1]), Path(sys.argv[2])
    job = json.loads(job_path.read_text())
    start = time.perf_counter()
    result = tasks[job["task"]](job)
    result.update(wall_s=time.perf_counter() - start, peak_rss_mb=peak_rss_mb(), versions=versions(), **gpu_facts())
    result["children_peak_rss_mb"] = peak_rss_mb(resource.RUSAGE_CHILDREN)  # forks: shares pages with ours
    result_path.write_text(json.dumps(result, indent=1))
