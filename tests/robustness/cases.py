"""Every robustness case, by command (see :mod:`harness`); ``FAST`` run in the test suite."""

from __future__ import annotations

import cases_misc
import cases_models
import cases_packages
import cases_predict
import cases_slow
import cases_train
import cases_zarr

ALL = (
    cases_predict.CASES
    + cases_models.CASES
    + cases_packages.CASES
    + cases_zarr.CASES
    + cases_train.CASES
    + cases_misc.CASES
    + cases_slow.CASES
)
FAST = [c for c in ALL if not c.slow]

names = [f"{c.command}: {c.name}" for c in ALL]
duplicates = sorted({n for n in names if names.count(n) > 1})
if duplicates:
    raise ValueError(f"robustness cases need distinct names: {duplicates}")
