"""Where and in which precision networks run.

Precision follows what runs fastest here, not what a library calls "supported": on CUDA,
bfloat16 (or float16 where bfloat16 is missing) autocast; on a CPU, bfloat16 autocast in
channels-last layout only where the CPU computes bfloat16 natively (AVX-512 BF16 or AMX).
oneDNN emulates bfloat16 on other AVX-512 CPUs, which made the default 2D training step 1.8x
slower than float32 on an Ice Lake Xeon. Where the CPU's flags do not settle it (no
``/proc/cpuinfo``, Arm), a short measurement of the network itself in both precisions decides,
cached per machine and network shape.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from carekit.errors import CarekitError
from carekit.hardware import NATIVE_BF16_X86, cache_dir, this_cpu

PRECISIONS = ("auto", "float32", "bfloat16", "float16")
PREDICT_PRECISIONS = (*PRECISIONS, "int8")  # int8: a model's quantized copy (carekit.int8), prediction only
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


BF16_GAIN = 0.8  # measured bfloat16 passes must take at most this share of float32's to be chosen


@dataclass(frozen=True)
class Probe:
    """What to time where the CPU's flags do not settle the precision: ``net`` on an input of
    ``shape``, forward and backward (``train``) or forward only."""

    net: nn.Module
    shape: tuple[int, ...]
    train: bool = False

    def key(self) -> str:
        cpu = this_cpu()
        name = type(self.net).__name__
        params = sum(p.numel() for p in self.net.parameters())
        return f"{cpu.model}|{cpu.arch}|torch {torch.__version__}|{name} {params}|{list(self.shape)}|train {self.train}"


def time_pass(net: nn.Module, shape: tuple[int, ...], engine: Engine, train: bool, repeats: int = 2) -> float:
    """The fastest of ``repeats`` timed passes of a copy of ``net`` (after one warm-up)."""
    net = engine.prepare(copy.deepcopy(net).train(train))
    x = engine.tensor(np.random.default_rng(0).random(shape, np.float32))
    best = math.inf
    for i in range(repeats + 1):
        start = time.perf_counter()
        with torch.set_grad_enabled(train), engine.autocast():
            out = net(x)
        if train:
            out.float().mean().backward()
        if i:
            best = min(best, time.perf_counter() - start)
    return best


def cached_timings(name: str, key: str, measure: Callable[[], dict[str, float]]) -> dict[str, float]:
    """Timings under ``key`` in the cache file ``name`` (see :func:`~carekit.hardware.cache_dir`),
    from ``measure()`` the first time; the file is replaced whole, never left half-written."""
    path = cache_dir() / name
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if key not in cached:
        cached[key] = measure()
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
            tmp.write_text(json.dumps(cached, indent=1))
            os.replace(tmp, path)
    return cached[key]


def measured_precision(probe: Probe) -> tuple[str, str]:
    """``(precision, reason)`` from timing ``probe`` in float32 and bfloat16 (cached on disk)."""
    cpu = torch.device("cpu")
    times = cached_timings("precision.json", probe.key(), lambda: {
        p: time_pass(probe.net, probe.shape, Engine(cpu, p), probe.train) for p in ("float32", "bfloat16")
    })  # fmt: skip
    ratio = times["bfloat16"] / times["float32"]
    chosen = "bfloat16" if ratio <= BF16_GAIN else "float32"
    return chosen, f"measured: bfloat16 takes {ratio:.2f}x float32's time on this CPU"


def cpu_precision(probe: Probe | None) -> tuple[str, str]:
    """The CPU's fastest precision and why: its flags, else a measurement, else float32."""
    cpu = this_cpu()
    native = cpu.native_bf16()
    if native:
        return "bfloat16", f"native bfloat16 ({', '.join(f for f in NATIVE_BF16_X86 if f in cpu.flags)})"
    if native is False:
        return "float32", "no native bfloat16 (no AVX-512 BF16 or AMX): bfloat16 would be emulated"
    if probe is not None:
        return measured_precision(probe)
    return "float32", "bfloat16 support unknown on this CPU and not measured"


@dataclass(frozen=True)
class Engine:
    """A device and a precision; ``precision`` is ``"float32"``, ``"bfloat16"``, ``"float16"`` or, for
    prediction on a CPU, ``"int8"`` (the model's quantized copy in ONNX Runtime: float32 in and out)."""

    device: torch.device
    precision: str
    reason: str = field(default="", compare=False)  # why this precision (for carekit info --system)
    predicting: bool = False  # prediction only: float32 on a CPU then runs channels-last too

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return DTYPES.get(self.precision)

    @property
    def activation_scale(self) -> float:
        """Activation memory relative to float32: half in bfloat16/float16 autocast."""
        return 0.5 if self.autocast_dtype is not None else 1.0

    @property
    def channels_last(self) -> bool:
        """Channels-last layout: in bfloat16/float16 autocast, on CUDA, and in float32 prediction on a
        CPU (2048x2048 with the default 2D network: 0.82 against 0.46 Mpx/s contiguous, 64x512x512 in
        3D 0.32 against 0.23 Mvox/s; 2-core AMD EPYC, Zen 4). Float32 training keeps the contiguous
        layout: its changed rounding flipped a short Noise2Void training in the checkerboard test."""
        cpu_float32 = self.predicting and self.device.type == "cpu" and self.precision == "float32"
        return self.autocast_dtype is not None or self.device.type == "cuda" or cpu_float32

    @property
    def cache_windows(self) -> bool:
        """Whether 2D prediction runs fastest in cache-sized windows, one worker per thread (see
        :mod:`carekit.tiling`): on a CPU in bfloat16 or int8."""
        return self.device.type == "cpu" and self.precision in ("bfloat16", "int8")

    def autocast(self) -> contextlib.AbstractContextManager:
        """The precision context of a forward pass (float32: :meth:`exact`)."""
        dtype = self.autocast_dtype
        if dtype is not None:
            return torch.autocast(self.device.type, dtype=dtype)
        return self.exact()

    def exact(self) -> contextlib.AbstractContextManager:
        """Keeps float32 on CUDA true float32, also for a backward pass outside :meth:`autocast`.

        cuDNN's convolutions otherwise run in TensorFloat-32 by default (10-bit mantissa,
        ~1e-3 relative error). Elsewhere, and in reduced precision, it changes nothing.
        """
        if self.device.type == "cuda" and self.autocast_dtype is None:
            cudnn = torch.backends.cudnn
            return cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                               allow_tf32=False)  # fmt: skip
        return contextlib.nullcontext()

    def prepare(self, net: nn.Module) -> nn.Module:
        net = net.to(self.device)
        if self.channels_last:  # per convolution: a network may mix 2D and 3D parts
            for module in net.modules():
                if isinstance(module, (nn.Conv2d, nn.Conv3d)):
                    module.to(memory_format=memory_format(module.weight.ndim - 2))
        return net

    def tensor(self, x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(self.device, non_blocking=True)
        if self.channels_last and t.ndim in (4, 5):
            t = t.contiguous(memory_format=memory_format(t.ndim - 2))
        return t

    def describe(self) -> str:
        return f"{self.device.type} {self.precision}" + (" channels-last" if self.channels_last else "")


def memory_format(ndim: int) -> torch.memory_format:
    return torch.channels_last_3d if ndim == 3 else torch.channels_last


def choose_engine(device: str = "auto", precision: str = "auto", probe: Probe | None = None) -> Engine:
    """Pick the device (``auto``: CUDA if present, else CPU) and the fastest safe precision.

    ``probe`` is timed where the CPU's flags leave bfloat16's speed open (see :func:`cpu_precision`).
    """
    if precision not in PREDICT_PRECISIONS:
        raise CarekitError(f"precision '{precision}' is unknown; use one of {', '.join(PREDICT_PRECISIONS)}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise CarekitError(f"device '{device}' is unknown; use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CarekitError("device 'cuda' requested but no CUDA GPU is available; use --device cpu")
    reason = "asked for"
    if precision == "auto":
        if dev.type == "cuda":
            precision = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
            reason = "CUDA autocast"
        elif dev.type == "cpu":
            precision, reason = cpu_precision(probe)
        else:
            precision, reason = "float32", f"{dev.type} runs float32"
    if precision == "float16" and dev.type != "cuda":
        raise CarekitError("float16 runs only on CUDA; use --precision bfloat16 or float32 on this device")
    if precision == "int8" and dev.type != "cpu":
        raise CarekitError(f"int8 prediction runs only on a CPU; use --device cpu or --precision auto on {dev.type}")
    return Engine(dev, precision, reason)
