"""What carekit gets on this machine, and why: ``carekit info --system``.

Device, precision and the reason for it, cores (affinity, cgroup quota, what other processes leave
free), threads, memory, and the measured speed of the default 2D network in training and
prediction, so a user can see what they get before a long run.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from carekit import int8, threads
from carekit._version import __version__
from carekit.config import Config
from carekit.data.pairs import ImagePair
from carekit.engine import Engine, choose_engine
from carekit.hardware import NATIVE_BF16_X86, available_memory, cpu_quota, free_cores, this_cpu, usable_cores
from carekit.model import CARE
from carekit.sampling import PatchSampler
from carekit.trainer import Trainer

SHOWN_FLAGS = ("avx2", "avx512f", *NATIVE_BF16_X86, "avx512_vnni", "avx_vnni", "amx_int8", "bf16", "asimd", "sve")
DEFAULT_2D = {"kernel_size": 3, "batch_norm": True, "residual": False}  # the 2D denoising network


def facts(device: str = "auto", precision: str = "auto") -> dict:
    """The machine and carekit's choices on it (no timing)."""
    cpu = this_cpu()
    model = CARE(Config(axes="YX", net=DEFAULT_2D))
    engine = choose_engine(device, precision, model.probe(train=True))
    quota = cpu_quota()
    return {
        "versions": f"carekit {__version__}, torch {torch.__version__}, Python {platform.python_version()}, "
        f"{platform.system()}",
        "cpu": cpu.model + f" ({cpu.arch})",
        "flags": [f for f in SHOWN_FLAGS if cpu.flags and f in cpu.flags] if cpu.flags is not None else None,
        "usable_cores": usable_cores(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cgroup_quota": quota,
        "free_cores": free_cores(),
        "threads": threads.initial_threads(),
        "fixed_threads": threads.fixed_threads(),
        "openmp_spin": os.environ.get("GOMP_SPINCOUNT"),
        "memory_gib": available_memory() / 2**30,
        "engine": engine,
    }


def int8_line(flags: list[str] | None, engine: Engine) -> str:
    """What prediction does with a model's int8 copy here (see :mod:`carekit.int8`)."""
    if engine.device.type != "cpu":
        return f"not on {engine.device.type} (int8 copies predict on CPUs)"
    dots = [f for f in int8.DOT_PRODUCT_FLAGS if flags and f in flags]
    has = f"8-bit dot products ({', '.join(dots)})" if dots else "no 8-bit dot products listed"
    return (f"{has}; a model's int8 copy predicts under auto where it measures at most "
            f"{int8.INT8_GAIN:g}x of {engine.precision}'s time")  # fmt: skip


def training_rate(engine: Engine, seconds: float = 2.0) -> float:
    """Optimizer steps per second of the default 2D network on 8 patches of 96x96."""
    rng = np.random.default_rng(0)
    image = rng.gamma(2.0, 1.0, (1, 384, 384)).astype(np.float32)
    sampler = PatchSampler([ImagePair("random", image, image)], (96, 96), val_fraction=0.0, threshold=0.0)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d, threads.scope():
        trainer = Trainer(CARE(Config(axes="YX", net=DEFAULT_2D)), sampler, Path(d), engine)
        batches = sampler.batches(0, 10_000, 8)
        for _ in range(2):  # warm-up: kernels chosen, memory laid out
            trainer.step(*next(batches))
        start, steps = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            trainer.step(*next(batches))
            steps += 1
        return steps / (time.perf_counter() - start)


def prediction_rate(engine: Engine, edge: int = 1024) -> float:
    """Megapixels per second of the default 2D network restoring an ``edge`` x ``edge`` image."""
    model = CARE(Config(axes="YX", net=DEFAULT_2D))
    image = np.random.default_rng(0).gamma(2.0, 1.0, (edge, edge)).astype(np.float32)
    options = {"device": engine.device.type, "precision": engine.precision}
    model.predict(image[:128, :128], "YX", **options)
    start = time.perf_counter()
    model.predict(image, "YX", **options)
    return image.size / 1e6 / (time.perf_counter() - start)


def report(device: str = "auto", precision: str = "auto", measure: bool = True) -> str:
    """The text of ``carekit info --system``."""
    f = facts(device, precision)
    engine: Engine = f["engine"]
    flags = "flags not listed by the OS" if f["flags"] is None else ", ".join(f["flags"]) or "none of note"
    quota = "no cgroup CPU quota" if f["cgroup_quota"] is None else f"cgroup quota {f['cgroup_quota']:g} CPUs"
    how = (f"fixed by CAREKIT_THREADS={f['fixed_threads']}" if f["fixed_threads"]
           else "one per free core, tuned while running")  # fmt: skip
    lines = [
        f["versions"],
        f"CPU         {f['cpu']}: {flags}",
        f"cores       {f['usable_cores']} usable (affinity {f['affinity']}, {quota}); {f['free_cores']} free now",
        f"device      {engine.device.type}",
        f"precision   {engine.precision}: {engine.reason}",
        f"int8        {int8_line(f['flags'], engine)}",
        f"threads     {f['threads']} ({how})",
        f"OpenMP      GOMP_SPINCOUNT={f['openmp_spin'] or 'unset'}",
        f"memory      {f['memory_gib']:.1f} GiB available to this process",
    ]
    if measure:
        lines.append(f"training    {training_rate(engine):.1f} steps/s (default 2D network, 8 x 96x96, "
                     f"{engine.precision})")  # fmt: skip
        lines.append(f"prediction  {prediction_rate(engine):.2f} Mpx/s (default 2D network, 1024x1024)")
    return "\n".join(lines)
