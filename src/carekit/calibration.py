"""Recalibration of predicted distributions that holds on images it never saw.

A predicted distribution is calibrated when the truth's probability integral transform
``F(truth)`` is uniform: then central intervals cover what they claim. Isotonic recalibration
records the quantiles of ``F(truth)`` on held-out pairs (a *table* at :data:`PIT_GRID`) and
reads a calibrated quantile ``q`` as the raw quantile at ``table(q)``.

One table for all pixels (the global calibration) only holds on images that mix background
and structure in the calibration images' proportions: a network's scale may be too wide in
background and too narrow on bright structure, and one table averages the two. Here the
tables are conditional on each pixel's *predicted intensity*: calibration pixels are cut into
bins of equal count along it, each bin gets its own table, and a pixel takes the table of the
bin its predicted intensity falls in (so the tables alone are exact per bin on the calibration pixels). The
intensity is taken in the model's output units, the training targets' units that every
restoration is mapped to, because a restoration's
errors follow the signal (shot noise) rather than a pixel's rank in its image: scaling each image
by its own percentiles moved the bins with the image's share of background and its brightest
structure, and calibrated intervals then missed by up to 27 points on some images (see the
calibration benchmark). Everything is plain numbers, stored as JSON.

Tables fitted on a few images are exact on those images and too narrow on the next one: images
differ (a background the network cannot see at low light, nuclei brighter than any it trained
on), and a table only knows the images it was fitted on. :func:`fit` therefore measures that
gap on the calibration images themselves, each calibrated by the others (leave one image out;
the two halves of a single image), and widens every table by the spread of those held-out
``F(truth)`` values. The full gap is measured with one image fewer than the final tables see
and overstates it (images that resemble one another stop being strangers once both are in the
calibration); :data:`HELD_OUT_WEIGHT` of it is applied, a default chosen leave-one-dataset-out
on the calibration benchmark (``benchmarks/calibration.py``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

PIT_GRID = np.linspace(0.0, 1.0, 201)
BINS = 10
MIN_PIXELS_PER_BIN = 2000  # fewer calibration pixels: fewer bins (one, the global table, at the least)
HELD_OUT_WEIGHT = 0.5  # share of the held-out gap by which fit() widens its tables


def pit_table(pit_values: np.ndarray) -> np.ndarray:
    """The calibration table: quantiles of the observed ``F(truth)`` values at :data:`PIT_GRID`."""
    table = np.quantile(np.asarray(pit_values, np.float64).ravel(), PIT_GRID)
    table[0], table[-1] = 0.0, 1.0
    return np.maximum.accumulate(table)


@dataclass
class Calibration:
    """Isotonic calibration tables, one per bin of predicted intensity.

    ``tables`` is ``(K, len(PIT_GRID))``; ``centres`` (``K`` increasing numbers) are the bins'
    median intensities and ``edges`` (``K - 1``) where one bin ends and the next begins (default:
    halfway between centres); a pixel takes its bin's table, so the calibration pixels' coverage
    is exact in every bin. ``pooled`` is the table of all calibration pixels together, used where
    no coordinate is given. ``K = 1`` is the global calibration (the only kind stored before
    calibration became conditional).
    """

    tables: np.ndarray
    centres: np.ndarray
    pooled: np.ndarray | None = None
    edges: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.tables = np.atleast_2d(np.asarray(self.tables, np.float64))
        self.centres = np.atleast_1d(np.asarray(self.centres, np.float64))
        midpoints = (self.centres[1:] + self.centres[:-1]) / 2
        self.edges = midpoints if self.edges is None else np.atleast_1d(np.asarray(self.edges, np.float64))
        if self.edges.shape != midpoints.shape:
            raise ValueError(f"{len(self.edges)} bin edges for {len(self.centres)} bins")
        self.pooled = self.tables[0] if self.pooled is None else np.asarray(self.pooled, np.float64)
        if self.tables.shape != (len(self.centres), len(PIT_GRID)) or self.pooled.shape != PIT_GRID.shape:
            raise ValueError(f"calibration tables of shape {self.tables.shape} for {len(self.centres)} bins")

    @classmethod
    def global_(cls, table: np.ndarray) -> Calibration:
        """One table for every pixel."""
        return cls(np.asarray(table, np.float64)[None], np.zeros(1))

    @classmethod
    def fit(cls, pit: np.ndarray, coordinate: np.ndarray, bins: int = BINS) -> Calibration:
        """Tables from ``F(truth)`` values and the pixels' predicted intensities (same shapes).

        Bins hold equal numbers of pixels, at least :data:`MIN_PIXELS_PER_BIN` each.
        """
        pit, coordinate = np.ravel(pit), np.ravel(coordinate)
        bins = int(np.clip(min(bins, pit.size // MIN_PIXELS_PER_BIN), 1, None))
        if bins == 1:
            return cls.global_(pit_table(pit))
        order = np.argsort(coordinate, kind="stable")
        groups = np.array_split(order, bins)
        centres = np.array([np.median(coordinate[g]) for g in groups])  # non-decreasing: the groups are sorted
        edges = np.array([(coordinate[a].max() + coordinate[b].min()) / 2 for a, b in itertools.pairwise(groups)])
        return cls(np.stack([pit_table(pit[g]) for g in groups]), centres, pit_table(pit), edges)

    def calibrated_pit(self, pit: np.ndarray, coordinate: np.ndarray | None = None) -> np.ndarray:
        """``F(truth)`` under the calibrated distribution: the inverse of :meth:`map`, per pixel."""
        pit = np.asarray(pit, np.float64)
        ramp = PIT_GRID * 1e-9  # tables may be flat in places; keep the inverse single-valued
        if not self.conditional or coordinate is None:
            return np.interp(pit, self.pooled + ramp, PIT_GRID)
        b = self.bins(np.asarray(coordinate, np.float64))
        out = np.empty(pit.shape)
        for k, table in enumerate(self.tables):
            out[b == k] = np.interp(pit[b == k], table + ramp, PIT_GRID)
        return out

    def widened(self, held_out_table: np.ndarray, weight: float = 1.0) -> Calibration:
        """Every table read through ``held_out_table`` (``weight`` of the way from the identity):
        calibrated level ``q`` becomes the one at which the held-out ``F(truth)`` values reach ``q``."""
        through = weight * np.asarray(held_out_table, np.float64) + (1 - weight) * PIT_GRID
        tables = np.stack([np.interp(through, PIT_GRID, t) for t in self.tables])
        return Calibration(tables, self.centres, np.interp(through, PIT_GRID, self.pooled), self.edges)

    @property
    def conditional(self) -> bool:
        return len(self.centres) > 1

    def bins(self, coordinate: np.ndarray) -> np.ndarray:
        """Each pixel's bin index (the first and last bins extend to the ends)."""
        return np.searchsorted(self.edges, coordinate, side="right")

    def map(self, q, coordinate: np.ndarray | None = None) -> np.ndarray:
        """The raw quantile level at which to read calibrated level ``q``, per pixel.

        ``q`` is a number or an array whose trailing axes match ``coordinate``'s shape (e.g.
        one level per pixel and sample). Without ``coordinate`` (or with one bin), the global map.
        """
        q = np.asarray(q, np.float64)
        if not self.conditional or coordinate is None:
            return np.interp(q, PIT_GRID, self.pooled)
        b = self.bins(np.asarray(coordinate, np.float64))
        if q.ndim == 0:  # one level: evaluate each table once, then pick per pixel
            return np.array([np.interp(q, PIT_GRID, t) for t in self.tables])[b]
        step = np.clip(q, 0.0, 1.0) * (len(PIT_GRID) - 1)
        j = np.minimum(np.floor(step).astype(np.intp), len(PIT_GRID) - 2)
        f = step - j
        return self.tables[b, j] * (1 - f) + self.tables[b, j + 1] * f

    def to_dict(self) -> dict:
        """JSON-ready numbers: the global table under ``pit`` (read by older carekit), the bins beside."""
        out = {"pit": np.round(self.pooled, 6).tolist()}
        if self.conditional:
            out["by"] = "predicted intensity"
            out["centres"] = [float(f"{c:.7g}") for c in self.centres]
            out["edges"] = [float(f"{e:.7g}") for e in self.edges]
            out["tables"] = np.round(self.tables, 6).tolist()
        return out

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        """Read :meth:`to_dict`'s output, or a global table stored as ``{"pit": [...]}``."""
        if "tables" in d:
            return cls(d["tables"], d["centres"], d["pit"], d.get("edges") or None)
        return cls.global_(d["pit"])


def central_bounds(level: float) -> tuple[float, float]:
    return (1 - level) / 2, (1 + level) / 2


def inside(pit: np.ndarray, level: float, calibration: Calibration | None = None, coordinate=None) -> np.ndarray:
    """Whether the truth lies inside the (recalibrated) central ``level`` interval, per pixel.

    That is exactly when ``F(truth)`` lies between the calibrated ``(1 - level) / 2`` and
    ``(1 + level) / 2`` levels.
    """
    lo, hi = central_bounds(level)
    if calibration is not None:
        lo, hi = calibration.map(lo, coordinate), calibration.map(hi, coordinate)
    pit = np.asarray(pit, np.float64)
    return (pit >= lo) & (pit <= hi)


def deciles(mean: np.ndarray) -> np.ndarray:
    """Each pixel's decile (0-9) of predicted intensity within its own image."""
    flat = np.ravel(mean)
    rank = np.empty(flat.size, np.intp)
    rank[np.argsort(flat, kind="stable")] = np.arange(flat.size)
    return (rank * 10 // max(flat.size, 1)).reshape(np.shape(mean))


# -- fitting and reporting ----------------------------------------------------------------------
@dataclass
class Observed:
    """One calibration image under its raw prediction: ``F(truth)``, predicted intensity, its decile."""

    pit: np.ndarray
    coordinate: np.ndarray
    decile: np.ndarray

    @classmethod
    def of(cls, dist, truth: np.ndarray) -> Observed:
        """From a raw (uncalibrated) distribution and its ground truth."""
        mean = np.asarray(dist.mean, np.float64)
        return cls(np.asarray(dist.cdf(np.asarray(truth, np.float64))), mean, deciles(mean))

    def halves(self) -> list[Observed]:
        """The first and second half along the first axis (for a held-out estimate from one image)."""
        cut = self.pit.shape[0] // 2
        return [Observed(self.pit[s], self.coordinate[s], self.decile[s]) for s in (slice(0, cut), slice(cut, None))]


def pooled(observed: list[Observed], name: str) -> np.ndarray:
    return np.concatenate([getattr(o, name).ravel() for o in observed])


def fit_tables(observed: list[Observed], bins: int = BINS) -> Calibration:
    """Tables exact on ``observed`` (see :meth:`Calibration.fit`)."""
    return Calibration.fit(pooled(observed, "pit"), pooled(observed, "coordinate"), bins)


def folds(observed: list[Observed]) -> list[tuple[list[Observed], list[Observed]]] | None:
    """(calibrating, tested) pairs: each image against the others, or the two halves of one image."""
    if len(observed) > 1:
        return [(observed[:j] + observed[j + 1 :], [o]) for j, o in enumerate(observed)]
    if observed[0].pit.shape[0] < 2:
        return None
    first, second = observed[0].halves()
    return [([second], [first]), ([first], [second])]


def fit(observed: list[Observed], bins: int = BINS, held_out_weight: float = HELD_OUT_WEIGHT) -> Calibration:
    """Tables from ``observed``, widened by ``held_out_weight`` of the gap they leave on
    calibration images they were not fitted on (see the module's docstring)."""
    calibration = fit_tables(observed, bins)
    pairs = folds(observed) if held_out_weight > 0 else None
    if pairs is None:
        return calibration
    held = [fit_tables(calibrating, bins).calibrated_pit(o.pit, o.coordinate).ravel()
            for calibrating, tested in pairs for o in tested]  # fmt: skip
    return calibration.widened(pit_table(np.concatenate(held)), held_out_weight)


def coverage_table(observed: list[Observed], levels, calibration: Calibration | None = None,
                   calibrations: list[Calibration] | None = None) -> dict:  # fmt: skip
    """Coverage per level over all pixels, and per intensity decile (``calibrations``: one per image)."""
    chosen = calibrations or [calibration] * len(observed)
    out: dict = {"coverage": {}, "deciles": {}}
    for p in levels:
        hits = [inside(o.pit, p, c, o.coordinate).ravel() for o, c in zip(observed, chosen, strict=True)]
        every, decile = np.concatenate(hits), pooled(observed, "decile")
        out["coverage"][p] = float(every.mean())
        out["deciles"][p] = [float(every[decile == d].mean()) if (decile == d).any() else float("nan")
                             for d in range(10)]  # fmt: skip
    return out


def held_out(observed: list[Observed], levels, bins: int = BINS) -> dict | None:
    """Coverage on calibration data the calibration was not fitted on: two folds, each fitted on
    the other (alternate images; the two halves of a single image), pooled."""
    split = "images" if len(observed) > 1 else "halves"
    if split == "halves":
        if observed[0].pit.shape[0] < 2:
            return None
        parts = [[h] for h in observed[0].halves()]
    else:
        parts = [observed[0::2], observed[1::2]]
    tested = parts[0] + parts[1]
    calibrations = [fit(parts[1], bins)] * len(parts[0]) + [fit(parts[0], bins)] * len(parts[1])
    return {"split": split, **coverage_table(tested, levels, calibrations=calibrations)}


def calibration_report(observed: list[Observed], calibration: Calibration, levels, bins: int = BINS) -> dict:
    """Coverage before and after ``calibration`` (fitted on ``observed``), overall and per
    intensity decile, with the expected calibration error and a held-out estimate."""
    before, after = coverage_table(observed, levels), coverage_table(observed, levels, calibration)
    return {
        "levels": list(levels),
        "coverage_before": before["coverage"],
        "coverage_after": after["coverage"],
        "deciles_before": before["deciles"],
        "deciles_after": after["deciles"],
        "ece_before": calibration_error(before["coverage"]),
        "ece_after": calibration_error(after["coverage"]),
        "held_out": held_out(observed, levels, bins),
        "pixels": int(pooled(observed, "pit").size),
        "bins": len(calibration.centres),
        "calibration": calibration.to_dict(),
    }


def calibration_error(cover: dict[float, float]) -> float:
    """Expected calibration error: the mean absolute gap between empirical and nominal coverage."""
    return float(np.mean([abs(c - p) for p, c in cover.items()]))
