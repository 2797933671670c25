"""How far a restoration can be trusted: Laplace predictions, ensembles and calibration.

A probabilistic network predicts, per pixel, a Laplace distribution with mean ``mu`` and
scale ``b`` (density ``exp(-|x - mu| / b) / 2b``, variance ``2 b²``, entropy ``1 + ln 2b``
nats). An ensemble of ``M`` such networks predicts the mixture of its members.

Disagreement ``D`` (in [0, 1]) is the members' Jensen-Shannon divergence divided by its
maximum ``ln M``, in nats:

    D = [ H(mixture) - mean_m H(Laplace_m) ] / ln M

``D = 0`` when all members agree exactly, and ``D -> 1`` when their distributions do not
overlap at all. The mixture entropy has no closed form; it is integrated numerically as
``H = -mean_m E_{x ~ p_m}[ln p(x)]`` with Gaussian quadrature on each side of every member's
mode, split where the log-density has kinks (exact when members coincide).

Calibration is isotonic and conditional on each pixel's predicted intensity: on
held-out pairs the probability integral transform ``F(truth)`` is recorded per intensity bin,
and calibrated quantiles are read through its empirical quantiles, so central intervals cover
what they claim in background and on structure alike (see :mod:`carekit.calibration`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from carekit.calibration import PIT_GRID, Calibration, calibration_error, inside, pit_table

__all__ = ["PIT_GRID", "Calibration", "Distribution", "Laplace", "Mixture", "calibration_error", "coverage",
           "disagreement", "pit_table"]  # fmt: skip
LEVELS = (0.5, 0.8, 0.9, 0.95)
LEGENDRE = 12  # nodes between two kinks
LAGUERRE = 24  # nodes beyond the last kink


def laplace_quantile(mean, scale, q):
    """Quantile ``q`` (in (0, 1)) of Laplace(mean, scale)."""
    q = np.clip(np.asarray(q, np.float64), 1e-12, 1 - 1e-12)
    return mean - scale * np.sign(q - 0.5) * np.log1p(-2 * np.abs(q - 0.5))


def laplace_cdf(x, mean, scale):
    z = (np.asarray(x, np.float64) - mean) / scale
    return np.where(z < 0, 0.5 * np.exp(np.minimum(z, 0)), 1 - 0.5 * np.exp(-np.maximum(z, 0)))


class Distribution:
    """Per-pixel predictive distributions, optionally recalibrated.

    ``calibration`` (a :class:`~carekit.calibration.Calibration`, or a global table as an
    array) holds the quantiles, at :data:`PIT_GRID`, of the probability integral transform
    ``F(truth)`` measured on held-out data, per bin of predicted intensity. A
    calibrated quantile ``q`` is the raw quantile at ``table(q)`` of the pixel's bin, so
    intervals cover what they claim at every intensity (an isotonic recalibration).
    """

    calibration: Calibration | None = None
    mean: np.ndarray

    def __post_init__(self) -> None:
        if self.calibration is not None and not isinstance(self.calibration, Calibration):
            self.calibration = Calibration.global_(self.calibration)

    def raw_quantile(self, u: np.ndarray | float) -> np.ndarray:
        raise NotImplementedError

    def cdf(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def calibrated(self, q):
        """The raw quantile level that calibrated level ``q`` reads, per pixel (by its predicted intensity)."""
        return q if self.calibration is None else self.calibration.map(q, self.mean)

    def quantile(self, q: float) -> np.ndarray:
        return self.raw_quantile(self.calibrated(q)).astype(np.float32)

    def interval(self, level: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
        """Central interval that holds ``level`` of the probability."""
        return self.quantile((1 - level) / 2), self.quantile((1 + level) / 2)

    def spread(self) -> np.ndarray:
        """Half the width of the central 68.27 % interval (the standard deviation, for a Gaussian)."""
        lo, hi = self.interval(0.6827)
        return (hi - lo) / 2

    def sample(self, n: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """``n`` independent per-pixel samples, stacked on a new first axis."""
        rng = rng or np.random.default_rng()
        u = self.calibrated(rng.uniform(1e-9, 1 - 1e-9, (n, *np.shape(self.mean))))
        return self.raw_quantile(u).astype(np.float32)


@dataclass
class Laplace(Distribution):
    """Per-pixel Laplace distributions; ``mean`` and ``scale`` share shape and intensity units."""

    mean: np.ndarray
    scale: np.ndarray
    calibration: Calibration | None = None

    @property
    def variance(self) -> np.ndarray:
        """The model's variance ``2 b²`` (before any recalibration)."""
        return 2 * self.scale**2

    def entropy(self) -> np.ndarray:
        """The model's differential entropy ``1 + ln 2b`` in nats (depends on the intensity unit)."""
        return 1 + np.log(2 * self.scale)

    def raw_quantile(self, u) -> np.ndarray:
        return laplace_quantile(self.mean, self.scale, u)

    def cdf(self, x: np.ndarray) -> np.ndarray:
        return laplace_cdf(x, self.mean, self.scale)


@dataclass
class Mixture(Distribution):
    """An equal-weight mixture of ``M`` Laplace predictions: ``means``/``scales`` are ``(M, ...)``."""

    means: np.ndarray
    scales: np.ndarray
    calibration: Calibration | None = None

    @cached_property
    def mean(self) -> np.ndarray:
        return self.means.mean(axis=0)

    @property
    def variance(self) -> np.ndarray:
        second = (2 * self.scales**2 + self.means**2).mean(axis=0)
        return second - self.mean**2

    def members(self, lead: int) -> tuple[np.ndarray, np.ndarray]:
        """Means and scales with ``lead`` extra leading axes, members on axis ``lead``."""
        shape = (1,) * lead
        return self.means.reshape(shape + self.means.shape), self.scales.reshape(shape + self.scales.shape)

    def cdf(self, x: np.ndarray) -> np.ndarray:
        """Mixture CDF at ``x``; ``x`` may carry extra leading axes (several samples at once)."""
        x = np.asarray(x, np.float64)
        lead = max(x.ndim - self.mean.ndim, 0)
        means, scales = self.members(lead)
        return laplace_cdf(np.expand_dims(x, lead), means, scales).mean(axis=lead)

    def raw_quantile(self, u, iterations: int = 60) -> np.ndarray:
        """Mixture quantile by bisection between the members' own quantiles."""
        u = np.asarray(u, np.float64)
        lead = max(u.ndim - self.mean.ndim, 0)
        means, scales = self.members(lead)
        member_q = laplace_quantile(means, scales, np.expand_dims(u, lead) if u.ndim else u)
        lo, hi = member_q.min(axis=lead), member_q.max(axis=lead)
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            below = self.cdf(mid) < u
            lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
        return 0.5 * (lo + hi)

    def entropy(self) -> np.ndarray:
        return mixture_entropy(self.means, self.scales)

    def disagreement(self) -> np.ndarray:
        return disagreement(self.means, self.scales)


def mixture_entropy(means: np.ndarray, scales: np.ndarray, *, chunk: int = 2048) -> np.ndarray:
    """Entropy (nats) of the equal-weight mixture of Laplace(means[m], scales[m]) per pixel.

    ``H = -mean_m E_{x ~ p_m}[ln p(x)]``. Each expectation runs over ``x = mu_m ± b_m t`` with
    weight ``e^-t``; ``ln p`` has kinks where ``x`` meets another member's mean, so the
    t-axis is cut there: Gauss-Legendre between kinks, Gauss-Laguerre beyond the last.
    """
    means = np.asarray(means, np.float64)
    scales = np.asarray(scales, np.float64)
    m = means.shape[0]
    shape = means.shape[1:]
    mu_all, b_all = means.reshape(m, -1), scales.reshape(m, -1)
    gl_t, gl_w = np.polynomial.legendre.leggauss(LEGENDRE)
    lg_t, lg_w = np.polynomial.laguerre.laggauss(LAGUERRE)
    out = np.empty(mu_all.shape[1])
    for start in range(0, mu_all.shape[1], chunk):
        mu, b = mu_all[:, start : start + chunk], b_all[:, start : start + chunk]
        total = np.zeros(mu.shape[1])
        for k in range(m):
            for side in (1.0, -1.0):
                kinks = np.sort(np.clip(side * (mu - mu[k]) / b[k], 0, None), axis=0)  # (M, P), first is 0
                a, c = kinks[:-1, :, None], kinks[1:, :, None]
                t_mid = (a + c) / 2 + (c - a) / 2 * gl_t  # (M-1, P, L) between kinks
                w_mid = (c - a) / 2 * gl_w * np.exp(-t_mid)
                t_tail = kinks[-1][:, None] + lg_t  # (P, G) beyond the last kink
                w_tail = lg_w * np.exp(-kinks[-1])[:, None]
                t = np.concatenate([t_mid.transpose(1, 0, 2).reshape(mu.shape[1], -1), t_tail], axis=1)
                w = np.concatenate([w_mid.transpose(1, 0, 2).reshape(mu.shape[1], -1), w_tail], axis=1)
                x = mu[k][:, None] + side * b[k][:, None] * t  # (P, Q)
                log_terms = -np.abs(x[None] - mu[:, :, None]) / b[:, :, None] - np.log(2 * b[:, :, None])
                top = log_terms.max(axis=0)
                log_p = top + np.log(np.exp(log_terms - top).sum(axis=0)) - np.log(m)
                total += 0.5 * (w * log_p).sum(axis=1)
        out[start : start + chunk] = -total / m
    return out.reshape(shape)


def disagreement(means: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Ensemble disagreement D in [0, 1] per pixel (see the module docstring)."""
    m = np.asarray(means).shape[0]
    if m < 2:
        raise ValueError("disagreement needs at least two members")
    members = (1 + np.log(2 * np.asarray(scales, np.float64))).mean(axis=0)
    d = (mixture_entropy(means, scales) - members) / np.log(m)
    return np.clip(d, 0.0, 1.0).astype(np.float32)


# -- calibration ------------------------------------------------------------------------
def coverage(pit_values: np.ndarray, levels=LEVELS, table: Calibration | np.ndarray | None = None,
             coordinate: np.ndarray | None = None) -> dict[float, float]:  # fmt: skip
    """Fraction of pixels inside the central interval per nominal level, from ``F(truth)`` values.

    The truth lies inside the (recalibrated, with ``table`` and the pixels' ``coordinate``)
    central ``level`` interval exactly when ``F(truth)`` lies between the calibrated
    ``(1 - level) / 2`` and ``(1 + level) / 2``.
    """
    if table is not None and not isinstance(table, Calibration):
        table = Calibration.global_(table)
    return {float(p): float(np.mean(inside(pit_values, p, table, coordinate))) for p in levels}
