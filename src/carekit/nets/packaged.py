"""A CARE network with its normalisation inside: intensities in, intensities out.

This is what a bioimage.io package ships. The module depends on torch and the U-Net
only, so that its source (together with ``unet.py``) can travel inside the package as
the architecture file and be imported without carekit. It also holds the normalisation rules
every carekit path applies (percentiles by ``numpy.percentile``'s linear rule, the intensity map,
de-normalisation), so that a package reproduces ``CARE.predict``: percentiles per sample and
channel over the whole tensor the network receives, mapped to target units by the model's
intensity map.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from carekit.nets.unet import build_unet

# The rules below are written with operators that numpy arrays and torch tensors share, so the
# in-memory (numpy), out-of-core (numpy, streamed) and packaged (traced torch) paths apply one rule.


def percentile_ranks(n, q: float):
    """Where ``numpy.percentile``'s linear rule finds percentile ``q`` among ``n`` sorted values.

    Returns the 0-based ranks of the order statistics below and above it and the weight of the upper
    one. ``n`` is an int, or a 0-d tensor where the size must stay symbolic (a traced network).
    """
    position = (n - 1) * (q / 100.0)
    below = position // 1
    return below, below + (below < n - 1), position - below


def interpolate(a, b, weight):
    """numpy's linear interpolation between neighbouring order statistics ``a <= b``: from ``a`` below
    the midpoint, from ``b`` above it, so results round as ``numpy.percentile``'s do. Products with
    the conditions select the branch, where numpy and torch name ``where`` differently."""
    diff = b - a
    return (a + diff * weight) * (weight < 0.5) + (b - diff * (1 - weight)) * (weight >= 0.5)


def tensor_percentiles(x: torch.Tensor, *q: float) -> tuple[torch.Tensor, ...]:
    """Percentiles ``q`` per sample and channel of ``x`` (by sorting), each of shape ``(N, C)``."""
    ordered, _ = torch.sort(x.reshape(x.shape[0], x.shape[1], -1), dim=-1)
    n = torch.scalar_tensor(ordered.shape[-1], dtype=torch.float64, device=x.device)
    values = []
    for p in q:
        below, above, weight = percentile_ranks(n, p)
        a, b = (ordered.index_select(-1, k.long().reshape(1))[..., 0] for k in (below, above))
        values.append(interpolate(a, b, weight.to(x.dtype)))
    return tuple(values)


def nonzero_span(lo, hi):
    """``hi - lo``, with 1 where it is not positive (a flat image), so that nothing divides by 0."""
    span = hi - lo
    return span * (span > 0) + (span <= 0)


def target_range(lo, hi, gain, offset) -> tuple:
    """The target's percentiles estimated from the input's ``lo``, ``hi`` ``(N, C_in, 1...)`` through
    the intensity map (``gain``, ``offset`` shaped ``(1, C_out, 1...)``); from the mean input channel
    where the channel counts differ."""
    if lo.shape[1] != gain.shape[1]:
        lo, hi = lo.mean(axis=1, keepdims=True), hi.mean(axis=1, keepdims=True)
    return gain * lo + offset, gain * hi + offset


def denormalize(y, lo, hi):
    """Map 0 to ``lo`` and 1 to ``hi``, in place: the exact inverse of normalising with them."""
    y *= nonzero_span(lo, hi)
    y += lo
    return y


class PackagedNet(nn.Module):
    """U-Net plus percentile normalisation, end-padding to the pooling grid, and de-normalisation.

    Parameters
    ----------
    unet : dict
        Keyword arguments of :func:`build_unet` (``ndim``, ``in_channels``, ``out_channels``, ...).
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
        self.net = build_unet(**unet)
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
        ones = [1] * (x.ndim - 2)
        lo, hi = (v.reshape(*v.shape, *ones) for v in tensor_percentiles(x, self.low, self.high))
        y = self.net(self.pad_to_grid((x - lo) / nonzero_span(lo, hi)))
        y = y[(slice(None), slice(None), *(slice(0, s) for s in x.shape[2:]))]
        gain, offset = (v.reshape(1, -1, *ones) for v in (self.gain, self.offset))
        t_lo, t_hi = target_range(lo, hi, gain, offset)
        mean = denormalize(y[:, : self.n_out], t_lo, t_hi)
        if y.shape[1] == self.n_out:
            return mean
        return mean, y[:, self.n_out :] * nonzero_span(t_lo, t_hi)
