"""Isotropic restoration against interpolation, on a volume with known isotropic ground truth.

    python benchmarks/isotropic.py                       # the shipped sample, 10 minutes of training
    python benchmarks/isotropic.py --input nuclei.tif --train-seconds 1800

The volume (ZYX) is blurred along z (Gaussian, ``--sigma`` slices) and every ``--factor``-th
slice kept. An isotropic model trains on that degraded stack alone and restores it; the
result, linear and cubic interpolation along z are scored against the original with the
paper's procedure (3D PSNR/SSIM after a least-squares intensity fit), for both ways of
combining the XZ and YZ restorations. Writes ``benchmarks/results/isotropic.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from carekit.demo import interpolated, make_anisotropic, sample_volume
from carekit.io import read_with_axes
from carekit.metrics import evaluate
from carekit.modes.isotropic import train_isotropic

RESULTS = Path(__file__).parent / "results"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", help="ZYX ground-truth volume (default: the shipped sample)")
    ap.add_argument("--factor", type=int, default=4)
    ap.add_argument("--sigma", type=float, default=3.0, help="axial blur added, in slices")
    ap.add_argument("--train-seconds", type=float, default=600.0)
    ap.add_argument("--kernel-size", type=int, default=None)
    a = ap.parse_args(argv)
    truth = (read_with_axes(a.input, "ZYX")[0] if a.input else sample_volume()).astype(np.float32)
    coarse = make_anisotropic(truth, a.factor, a.sigma)
    settings = {"epochs": 100_000, "steps_per_epoch": 100, "lr_schedule": "cosine", "learning_rate": 1e-3}
    if a.kernel_size:
        settings["kernel_size"] = a.kernel_size
    with tempfile.TemporaryDirectory() as d:
        start = time.monotonic()
        model = train_isotropic(coarse, "ZYX", a.factor, Path(d) / "m", psf_sigma=(a.sigma, 0.0),
                                time_budget=a.train_seconds, progress=False, **settings)  # fmt: skip
        trained = time.monotonic() - start
        rows = {}
        for how in ("arithmetic", "geometric"):
            model.config.axial.combine = how
            start = time.monotonic()
            restored = model.predict(coarse, "ZYX")
            rows[f"care ({how} mean)"] = (restored, time.monotonic() - start)
    reference = truth[: restored.shape[0]]
    rows = {
        "linear": (interpolated(coarse, a.factor, 1), 0.0),
        "cubic": (interpolated(coarse, a.factor, 3), 0.0),
    } | rows
    results = {name: {**evaluate(v, reference), "seconds": round(s, 2)} for name, (v, s) in rows.items()}
    print(f"{truth.shape} -> blur {a.sigma:g} + {a.factor}x subsampling -> {coarse.shape}; trained {trained:.0f} s")
    print(f"{'':24s}{'PSNR':>8s}{'SSIM':>8s}{'NRMSE':>9s}")
    for name, r in results.items():
        print(f"{name:24s}{r['psnr']:8.3f}{r['ssim']:8.4f}{r['nrmse']:9.5f}")
    RESULTS.mkdir(exist_ok=True)
    payload = {"input": a.input or "shipped sample", "factor": a.factor, "sigma": a.sigma,
               "train_seconds": round(trained, 1), "results": results}  # fmt: skip
    (RESULTS / "isotropic.json").write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
