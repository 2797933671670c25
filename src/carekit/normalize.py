"""Percentile normalisation and its exact inverse.

Inputs and targets are each mapped so that their low percentile goes to 0 and their
high percentile to 1, per sample and channel: 2 and 99.8 at prediction, and in training
the same or, with ``TrainConfig.intensity_jitter`` (by default where the network is
residual), percentiles drawn from ``U(1, 3)`` and ``U(99.5, 99.9)``. Restorations are
mapped back to intensities afterwards, see :class:`IntensityMap`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from carekit.nets.packaged import tensor_percentiles

PREDICT_PERCENTILES = (2.0, 99.8)
TRAIN_LOW_RANGE = (1.0, 3.0)
TRAIN_HIGH_RANGE = (99.5, 99.9)


def percentiles(
    x: np.ndarray, q: tuple[float, float], device: torch.device | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Low and high percentiles of ``x`` (``(N, C, *spatial)``) per sample and channel.

    Returns two arrays of shape ``(N, C, 1, ..., 1)``, ready to broadcast. On a CUDA
    ``device`` they are taken there by sorting (the same linear interpolation; on a GPU
    the CPU's partial sort otherwise takes most of a prediction's time), falling back to
    the CPU when the GPU has no room.
    """
    shape = (x.shape[0], x.shape[1]) + (1,) * (x.ndim - 2)
    if device is not None and device.type == "cuda":
        try:
            t = torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(device)
            lo, hi = (v.cpu().numpy().reshape(shape) for v in tensor_percentiles(t, *q))
            return lo, hi
        except torch.cuda.OutOfMemoryError:
            pass
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    lo, hi = np.percentile(flat, q, axis=2).astype(np.float32)
    return lo.reshape(shape), hi.reshape(shape)


def scale_of(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The divisor ``hi - lo``, with 1 where an image is flat (so nothing divides by 0)."""
    span = np.asarray(hi, np.float32) - np.asarray(lo, np.float32)
    return np.where(span > 0, span, np.float32(1.0)).astype(np.float32)


def normalize(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Map ``lo`` to 0 and ``hi`` to 1 (float32)."""
    return ((np.asarray(x, np.float32) - lo) / scale_of(lo, hi)).astype(np.float32, copy=False)


def denormalize(y: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Exact inverse of :func:`normalize` with the same ``lo`` and ``hi``."""
    return (np.asarray(y, np.float32) * scale_of(lo, hi) + lo).astype(np.float32, copy=False)


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
        gain = np.asarray(self.gain, np.float32)
        offset = np.asarray(self.offset, np.float32)
        shape = (1, len(gain)) + (1,) * (lo.ndim - 2)
        gain, offset = gain.reshape(shape), offset.reshape(shape)
        if lo.shape[1] != len(self.gain):
            lo = lo.mean(axis=1, keepdims=True)
            hi = hi.mean(axis=1, keepdims=True)
        return gain * lo + offset, gain * hi + offset

    def to_dict(self) -> dict:
        return {"gain": list(self.gain), "offset": list(self.offset)}

    @classmethod
    def from_dict(cls, d: dict) -> IntensityMap:
        return cls(tuple(float(v) for v in d["gain"]), tuple(float(v) for v in d["offset"]))
