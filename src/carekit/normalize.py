"""Percentile normalisation and its exact inverse.

Inputs and targets are each mapped so that their low percentile goes to 0 and their
high percentile to 1, per sample and channel: 2 and 99.8 at prediction, and in training
the same or, with ``TrainConfig.intensity_jitter`` (by default where the network is
residual), percentiles drawn from ``U(1, 3)`` and ``U(99.5, 99.9)``. Restorations are
mapped back to intensities afterwards, see :class:`IntensityMap`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from carekit.nets import packaged

PREDICT_PERCENTILES = (2.0, 99.8)
TRAIN_LOW_RANGE = (1.0, 3.0)
TRAIN_HIGH_RANGE = (99.5, 99.9)


def from_order_statistics(select: Callable[[list[int]], np.ndarray], n: int, q) -> list[np.ndarray]:
    """Percentiles ``q`` of ``n`` values, given ``select(ranks)``: their order statistics at the 0-based
    ``ranks``, stacked along a last axis. The rule is :func:`carekit.nets.packaged.percentile_ranks`
    (exactly ``numpy.percentile``'s); a selection may partition an array or stream it from disk."""
    rules = [packaged.percentile_ranks(n, p) for p in q]
    ranks = sorted({int(r) for rule in rules for r in rule[:2]})
    values = select(ranks)
    at = {r: values[..., i] for i, r in enumerate(ranks)}
    return [packaged.interpolate(at[int(a)], at[int(b)], np.float64(w)).astype(np.float32) for a, b, w in rules]


def percentiles(x: np.ndarray, q, device: torch.device | None = None) -> list[np.ndarray]:
    """Percentiles ``q`` of ``x`` (``(N, C, *spatial)``) per sample and channel.

    Returns one array of shape ``(N, C, 1, ..., 1)`` per entry of ``q``, ready to broadcast. On a
    CUDA ``device`` they are taken there by sorting (the same rule; on a GPU the CPU's partial sort
    otherwise takes most of a prediction's time), falling back to the CPU when the GPU has no room.
    """
    shape = (x.shape[0], x.shape[1]) + (1,) * (x.ndim - 2)
    if device is not None and device.type == "cuda":
        try:
            t = torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(device)
            return [v.cpu().numpy().reshape(shape) for v in packaged.tensor_percentiles(t, *q)]
        except torch.cuda.OutOfMemoryError:
            pass
    flat = x.reshape(x.shape[0], x.shape[1], -1)

    def select(ranks: list[int]) -> np.ndarray:
        return np.take(np.partition(flat, ranks, axis=-1), ranks, axis=-1)

    return [v.reshape(shape) for v in from_order_statistics(select, flat.shape[-1], q)]


def normalize(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Map ``lo`` to 0 and ``hi`` to 1 (float32)."""
    return ((np.asarray(x, np.float32) - lo) / packaged.nonzero_span(lo, hi)).astype(np.float32, copy=False)


def denormalize(y: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Exact inverse of :func:`normalize` with the same ``lo`` and ``hi`` (a new float32 array)."""
    return packaged.denormalize(np.array(y, np.float32), lo, hi)


@dataclass(frozen=True)
class IntensityMap:
    """Per output channel, the affine map from input intensities to target intensities.

    A network sees inputs scaled by the input's percentiles and learns targets scaled
    by the target's percentiles. At prediction there is no target, so the target's
    percentiles are estimated from the input's through this map, fitted on the
    training pairs: ``target_lo = gain * input_lo + offset`` and the same for ``hi``.
    For one training pair the map is exact; for several it is the least-squares fit.
    When input and output channel counts differ, the input side is the mean over the
    input channels.
    """

    gain: tuple[float, ...]
    offset: tuple[float, ...]

    @classmethod
    def identity(cls, channels: int) -> IntensityMap:
        return cls((1.0,) * channels, (0.0,) * channels)

    @classmethod
    def fit(cls, inputs: list[np.ndarray], targets: list[np.ndarray]) -> IntensityMap:
        """Fit from (low, high) percentile pairs, one ``(C_in, 2)``/``(C_out, 2)`` array per image."""
        x = np.stack(inputs).astype(np.float64)  # (n, C_in, 2)
        t = np.stack(targets).astype(np.float64)  # (n, C_out, 2)
        gains, offsets = [], []
        for c in range(t.shape[1]):
            tc = t[:, c, :].ravel()
            xc = (x[:, c, :] if x.shape[1] == t.shape[1] else x.mean(axis=1)).ravel()
            var = np.var(xc)
            gain = float(np.cov(xc, tc, bias=True)[0, 1] / var) if var > 0 else 1.0
            gains.append(gain)
            offsets.append(float(tc.mean() - gain * xc.mean()))
        return cls(tuple(gains), tuple(offsets))

    def apply(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Target percentiles ``(N, C_out, 1...)`` estimated from input ones ``(N, C_in, 1...)``."""
        shape = (1, len(self.gain)) + (1,) * (lo.ndim - 2)
        gain, offset = (np.asarray(v, np.float32).reshape(shape) for v in (self.gain, self.offset))
        return packaged.target_range(lo, hi, gain, offset)

    def to_dict(self) -> dict:
        return {"gain": list(self.gain), "offset": list(self.offset)}

    @classmethod
    def from_dict(cls, d: dict) -> IntensityMap:
        return cls(tuple(float(v) for v in d["gain"]), tuple(float(v) for v in d["offset"]))
