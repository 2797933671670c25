"""Ensembles of CARE models and the calibration of predicted uncertainty.

An ensemble folder holds ``ensemble.json`` and one complete model folder per member
(``member-0``, ``member-1``, ...), trained with different seeds, so different initial
weights and data order. Its prediction is the members' mean; with probabilistic
members it is the mixture of their Laplace distributions, with the disagreement map D
(see :mod:`carekit.uncertainty`).

Calibration records, on held-out pairs, where the truth falls in each predicted
distribution, and stores the tables that recalibrate quantiles (per bin of predicted
intensity, :mod:`carekit.calibration`) with the model.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from carekit._version import __version__
from carekit.calibration import BINS, Observed, calibration_report, fit
from carekit.config import check_calibration
from carekit.errors import CarekitError
from carekit.io import read_json, write_json
from carekit.model import CARE, CONFIG, LAST, stored_calibration
from carekit.uncertainty import Mixture

ENSEMBLE = "ensemble.json"
FORMAT_VERSION = 1
MAX_MEMBERS = 100


class Ensemble:
    """Several models of one kind, predicting together."""

    def __init__(self, members: list[CARE], directory: str | Path | None = None, calibration: dict | None = None):
        if not members:
            raise CarekitError("an ensemble needs at least one member")
        self.members = members
        self.directory = Path(directory) if directory is not None else None
        self.calibration = calibration

    @property
    def config(self):
        return self.members[0].config

    @property
    def probabilistic(self) -> bool:
        return all(m.config.net.probabilistic for m in self.members)

    def summary(self) -> str:
        return f"ensemble of {len(self.members)} members; each: {self.members[0].summary()}"

    def output_axes(self, axes: str) -> str:
        return self.members[0].output_axes(axes)

    def output_spacing(self, spacing, factor=None):
        return self.members[0].output_spacing(spacing, factor)

    def predict(self, image: np.ndarray, axes: str | None = None, **options) -> np.ndarray:
        """The members' mean restoration."""
        total = None
        for m in self.members:
            out = m.predict(image, axes, **options)
            total = out.astype(np.float32, copy=True) if total is None else total + out
        return total / len(self.members)

    def predict_distribution(self, image: np.ndarray, axes: str | None = None, **options) -> Mixture:
        """The mixture of the members' Laplace predictions (calibrated scales, if calibrated)."""
        if not self.probabilistic:
            raise CarekitError("ensemble members are not probabilistic; train them with --probabilistic")
        means, scales = zip(*(m.predict_with_scale(image, axes, **options) for m in self.members), strict=True)
        return Mixture(np.stack(means), np.stack(scales), stored_calibration(self.calibration, self.directory))

    def save_index(self) -> Path:
        assert self.directory is not None
        names = [m.directory.name for m in self.members]
        payload = {"format_version": FORMAT_VERSION, "carekit_version": __version__, "members": names}
        if self.calibration:
            payload["calibration"] = self.calibration
        return write_json(self.directory / ENSEMBLE, payload)

    @classmethod
    def load(cls, directory: str | Path) -> Ensemble:
        d = Path(directory)
        index = read_json(d / ENSEMBLE)
        version = index.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
            raise CarekitError(
                f"{d / ENSEMBLE}: ensemble format {index.get('format_version')} is newer; upgrade carekit"
            )
        names = index.get("members")
        if not isinstance(names, list) or not names or len(names) > MAX_MEMBERS:
            raise CarekitError(f"{d / ENSEMBLE}: 'members' must list 1..{MAX_MEMBERS} member folders; it is damaged")
        members = [CARE.load(member_folder(d, name)) for name in names]
        kinds = {(m.config.mode, m.config.axes, m.config.spatial, m.config.n_channel_in, m.config.n_channel_out,
                  m.config.net.probabilistic) for m in members}  # fmt: skip
        if len(kinds) > 1:
            raise CarekitError(f"{d / ENSEMBLE}: the members differ in mode, axes, channels or probabilistic output; "
                               "an ensemble's members must be trained alike")  # fmt: skip
        calibration = index.get("calibration")
        if calibration is not None:
            check_calibration(calibration if isinstance(calibration, dict) else {"pit": None})
        return cls(members, d, calibration)


def member_folder(ensemble: Path, name) -> Path:
    """The folder of member ``name``: a sub-folder of the ensemble, never a path outside it."""
    where = ensemble / ENSEMBLE
    if not isinstance(name, str) or not name or name in (".", "..") or Path(name).name != name or "\\" in name:
        raise CarekitError(f"{where}: member {name!r} is not a folder name inside {ensemble}; members must be the "
                           "ensemble's own sub-folders (the file is damaged or hostile)")  # fmt: skip
    folder = ensemble / name
    if not folder.resolve().is_relative_to(ensemble.resolve()):
        raise CarekitError(f"{where}: member {name!r} leads outside {ensemble} (a link); members must be the "
                           "ensemble's own sub-folders")  # fmt: skip
    return folder


def is_ensemble(directory: str | Path) -> bool:
    return (Path(directory) / ENSEMBLE).exists()


def load(directory: str | Path) -> CARE | Ensemble:
    """Load a model or ensemble folder: ``carekit.load("my_model")``."""
    return Ensemble.load(directory) if is_ensemble(directory) else CARE.load(directory)


def train_ensemble(train_one: Callable[..., CARE], k: int, model_dir: str | Path, *, time_budget: float | None = None,
                   resume: bool = False, overwrite: bool = False, seed: int = 0, stop: threading.Event | None = None,
                   **options) -> Ensemble:  # fmt: skip
    """Train ``k`` members one after the other with seeds ``seed, seed + 1, ...``.

    ``train_one(model_dir=..., seed=..., time_budget=..., resume=..., overwrite=..., **options)``
    trains one member (any mode); a time budget is shared equally. On ``resume``, members
    with a checkpoint continue and missing ones start. ``stop`` (a ``threading.Event``, passed on
    to ``train_one``) cancels: the member in training keeps its best weights and no further one starts.
    """
    if not 2 <= k <= MAX_MEMBERS:
        raise CarekitError(f"an ensemble (--ensemble) needs 2..{MAX_MEMBERS} members, got {k}")
    d = Path(model_dir)
    if is_ensemble(d) and not (resume or overwrite):
        raise CarekitError(f"{d}: already holds an ensemble; choose a new folder, --resume or --overwrite")
    members = []
    share = None if time_budget is None else time_budget / k
    for i in range(k):
        if stop is not None and stop.is_set():  # cancelled: the members trained so far stay
            break
        folder = d / f"member-{i}"
        again = resume and (folder / LAST).exists()
        members.append(train_one(model_dir=folder, seed=seed + i, time_budget=share, resume=again,
                                 overwrite=overwrite, stop=stop, **options))  # fmt: skip
    if len(members) < 2:
        raise CarekitError(f"training stopped after {len(members)} of {k} members; an ensemble needs at least 2, "
                           f"continue with --resume")  # fmt: skip
    ensemble = Ensemble(members, d)
    ensemble.save_index()
    return ensemble


# -- calibration ------------------------------------------------------------------------
def raw_distribution(model: CARE | Ensemble, image: np.ndarray, axes: str | None, **options):
    """The model's prediction without any stored recalibration."""
    dist = model.predict_distribution(image, axes, **options)
    dist.calibration = None
    return dist


def observe(model: CARE | Ensemble, images: list, truths: list, axes: str | None = None, **options) -> list[Observed]:
    """Where each ground truth falls in the model's raw prediction, image by image."""
    observed = []
    for image, truth in zip(images, truths, strict=True):
        dist = raw_distribution(model, image, axes, **options)
        truth = np.asarray(truth, np.float64)
        if truth.shape != dist.mean.shape:
            raise CarekitError(f"ground truth of shape {truth.shape} does not match the prediction {dist.mean.shape}")
        observed.append(Observed.of(dist, truth))
    return observed


def calibrate(model: CARE | Ensemble, images: list, truths: list, axes: str | None = None,
              levels=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95), bins: int = BINS,
              **options) -> dict:  # fmt: skip
    """Recalibrate ``model`` on held-out ``images``/``truths`` and store the calibration with it.

    The calibration is conditional on predicted intensity (``bins`` bins of equal
    pixel count; fewer for small data, see :mod:`carekit.calibration`). Returns the report:
    coverage of central intervals at ``levels``, overall and per intensity decile, before and
    after on these data, the expected calibration error (mean absolute coverage gap) and, with
    at least two images (else the two halves of one), a held-out estimate: calibrated on one
    half of the images, measured on the other, both ways.
    """
    observed = observe(model, images, truths, axes, **options)
    report = calibration_report(observed, fit(observed, bins), levels, bins)
    store_calibration(model, report)
    return report


def store_calibration(model: CARE | Ensemble, report: dict) -> None:
    saved = {**report["calibration"], **{k: report[k] for k in ("ece_before", "ece_after", "pixels")}}
    if report["held_out"] is not None:
        saved["coverage_held_out"] = {str(p): round(c, 6) for p, c in report["held_out"]["coverage"].items()}
    if isinstance(model, Ensemble):
        model.calibration = saved
        if model.directory is not None:
            model.save_index()
        return
    model.config.calibration = saved
    if model.directory is not None:
        write_json(model.directory / CONFIG, model.config.to_dict())
