"""Where and in which precision networks run.

The fast default: on CPUs with native bfloat16 (AVX-512 BF16 or AMX) networks run
under bfloat16 autocast in channels-last layout; on CUDA under bfloat16 (or float16
where bfloat16 is missing) autocast; everywhere else in float32.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import nn

from carekit.errors import CarekitError

PRECISIONS = ("auto", "float32", "bfloat16", "float16")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True where oneDNN has native bfloat16 kernels on this CPU."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        try:
            with open("/proc/cpuinfo") as f:
                flags = f.read()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass(frozen=True)
class Engine:
    """A device and a precision; ``precision`` is ``"float32"``, ``"bfloat16"`` or ``"float16"``."""

    device: torch.device
    precision: str

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return DTYPES.get(self.precision)

    @property
    def activation_scale(self) -> float:
        """Activation memory relative to float32: half in bfloat16/float16 autocast."""
        return 0.5 if self.autocast_dtype is not None else 1.0

    @property
    def channels_last(self) -> bool:
        return self.precision != "float32" or self.device.type == "cuda"

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


def choose_engine(device: str = "auto", precision: str = "auto") -> Engine:
    """Pick the device (``auto``: CUDA if present, else CPU) and the fastest safe precision."""
    if precision not in PRECISIONS:
        raise CarekitError(f"precision '{precision}' is unknown; use one of {', '.join(PRECISIONS)}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise CarekitError(f"device '{device}' is unknown; use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CarekitError("device 'cuda' requested but no CUDA GPU is available; use --device cpu")
    if precision == "auto":
        if dev.type == "cuda":
            precision = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        elif dev.type == "cpu" and cpu_has_bf16():
            precision = "bfloat16"
        else:
            precision = "float32"
    if precision == "float16" and dev.type != "cuda":
        raise CarekitError("float16 runs only on CUDA; use --precision bfloat16 or float32 on this device")
    return Engine(dev, precision)
