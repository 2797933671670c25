"""A CARE network with its normalisation inside: intensities in, intensities out.

This is what a bioimage.io package ships. The module depends on torch and the U-Net
only, so that its source (together with ``unet.py``) can travel inside the package as
the architecture file and be imported without carekit. Percentiles are taken per
sample and channel over the whole tensor the network receives, with the same linear
interpolation as ``numpy.percentile``; the de-normalisation maps them to target units
with the model's intensity map, exactly as ``CARE.predict`` does.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from carekit.nets.unet import UNet


def tensor_percentiles(x: torch.Tensor, low: float, high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``numpy.percentile``-style (linear) low and high percentiles per sample and channel, shape ``(N, C)``."""
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    ordered, _ = torch.sort(flat, dim=-1)
    last = torch.scalar_tensor(flat.shape[-1], dtype=torch.float64, device=x.device) - 1
    values = []
    for q in (low, high):
        position = last * (q / 100.0)
        below = torch.floor(position)
        weight = (position - below).to(x.dtype)
        k = below.long().reshape(1)
        k_next = torch.minimum(k + 1, last.long().reshape(1))
        a = ordered.index_select(-1, k)[..., 0]
        b = ordered.index_select(-1, k_next)[..., 0]
        values.append(a + weight * (b - a))
    return values[0], values[1]


def nonzero_span(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    span = hi - lo
    return torch.where(span > 0, span, torch.ones_like(span))


class PackagedNet(nn.Module):
    """U-Net plus percentile normalisation, end-padding to the pooling grid, and de-normalisation.

    Parameters
    ----------
    unet : dict
        Keyword arguments of :class:`UNet` (``ndim``, ``in_channels``, ``out_channels``, ...).
    gain, offset : list of float
        Per output channel, the map from input percentiles to target percentiles.
    low, high : float
        The prediction percentiles.

    The output is the mean ``(N, C_out, *S)``; probabilistic networks also return the
    Laplace scale in the same units, as a second tensor.
    """

    def __init__(self, unet: dict, gain: list[float], offset: list[float], low: float, high: float) -> None:
        super().__init__()
        self.kwargs = {"unet": dict(unet), "gain": list(gain), "offset": list(offset), "low": low, "high": high}
        self.net = UNet(**unet)
        self.net.phase_upsampling = False  # plain operators: traceable, exportable to ONNX
        self.low, self.high = float(low), float(high)
        self.grid = list(self.net.divisor())
        self.n_out = int(unet["out_channels"])
        self.register_buffer("gain", torch.tensor(gain, dtype=torch.float32))
        self.register_buffer("offset", torch.tensor(offset, dtype=torch.float32))

    def pad_to_grid(self, x: torch.Tensor) -> torch.Tensor:
        pad: list[int] = []
        for axis, g in zip(range(x.ndim - 1, 1, -1), reversed(self.grid), strict=True):
            size = x.shape[axis]
            pad += [0, (g - size % g) % g]
        return F.pad(x, pad, mode="reflect")

    def forward(self, x: torch.Tensor):
        lo, hi = tensor_percentiles(x, self.low, self.high)
        ones = [1] * (x.ndim - 2)
        span = nonzero_span(lo, hi)
        normalized = (x - lo.reshape(*lo.shape, *ones)) / span.reshape(*span.shape, *ones)
        y = self.net(self.pad_to_grid(normalized))
        y = y[(slice(None), slice(None), *(slice(0, s) for s in x.shape[2:]))]
        if lo.shape[1] != self.n_out:
            lo, hi = lo.mean(dim=1, keepdim=True), hi.mean(dim=1, keepdim=True)
        t_lo = (self.gain * lo + self.offset).reshape(lo.shape[0], self.n_out, *ones)
        t_hi = (self.gain * hi + self.offset).reshape(lo.shape[0], self.n_out, *ones)
        t_span = nonzero_span(t_lo, t_hi)
        mean = y[:, : self.n_out] * t_span + t_lo
        if y.shape[1] == self.n_out:
            return mean
        return mean, y[:, self.n_out :] * t_span
