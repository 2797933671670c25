"""Self-supervised restoration measured: N2V2 against plain Noise2Void (checkerboards), structN2V
against Noise2Void on noise correlated along x, and Noise2Noise against CARE at equal training.

    python benchmarks/n2v.py checkerboard            # spectra of N2V and N2V2 outputs
    python benchmarks/n2v.py struct                  # structN2V vs N2V2 on x-correlated noise
    python benchmarks/n2v.py n2n --photons 10,100    # Noise2Noise vs CARE on the same steps

Every run trains for a fixed number of steps (``--steps``, default 2000; the networks and patches
are the same in each comparison, so equal steps are equal training time) on the demo's sample
(``carekit.demo``); scores use the paper's procedure per slice (``carekit.demo.scores``). Writes
``benchmarks/results/n2v-<what>.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter1d

from carekit import demo
from carekit.data.camera import poisson_gaussian, to_photons
from carekit.modes import train
from carekit.modes.n2n import train_n2n
from carekit.modes.n2v import train_n2v
from carekit.resolution import checkerboard_peaks

RESULTS = Path(__file__).resolve().parent / "results"
STEPS = {"epochs": 40, "steps_per_epoch": 50}
PLAIN_N2V = {"replacement": "uniform", "blur_pool": False, "top_skip": True}  # the original Noise2Void
TEST = (demo.TEST_SLICES, demo.TEST_ROWS)


def steps(n: int) -> dict:
    return {"epochs": max(1, n // 50), "steps_per_epoch": min(n, 50)}


def timed(fn, *args, **kwargs):
    start = time.monotonic()
    out = fn(*args, **kwargs)
    return out, round(time.monotonic() - start, 1)


def checkerboard(a: argparse.Namespace) -> dict:
    """N2V2 and plain Noise2Void on the demo's noisy stack: PSNR and the spectral peaks of the output
    at the pooling grid's frequencies (half-Nyquist, 0.25 cycles per pixel, and Nyquist)."""
    truth, noisy = demo.make_data(photons=a.photons[0])
    rows = {}
    for name, extra in (("N2V2 (default)", {}), ("Noise2Void (uniform, max pooling, top skip)", PLAIN_N2V)):
        with tempfile.TemporaryDirectory() as d:  # both from scratch: only plain N2V's network has no warm start
            model, seconds = timed(train_n2v, noisy, "SYX", Path(d) / "m", progress=False, seed=a.seed,
                                   init="scratch", **steps(a.steps), **extra)  # fmt: skip
            out = model.predict(noisy, "SYX")
        rows[name] = {"psnr": demo.scores(out[TEST[0]], truth[TEST[0]])["psnr"], "peaks": checkerboard_peaks(out),
                      "seconds": seconds, "settings": extra}  # fmt: skip
        print(name, rows[name], flush=True)
    rows["ground truth"] = {"peaks": checkerboard_peaks(truth)}
    return {"photons": a.photons[0], "steps": a.steps, "rows": rows}


def line_noise(truth: np.ndarray, photons: float, sigma: float, strength: float, seed: int) -> np.ndarray:
    """Poisson-Gaussian camera noise plus Gaussian noise correlated along x (a Gaussian profile of
    ``sigma`` pixels), of ``strength`` times the read noise's standard deviation."""
    rng = np.random.default_rng(seed)
    camera = poisson_gaussian(to_photons(truth, photons), rng, read_sigma=demo.READ_NOISE)
    lines = gaussian_filter1d(rng.normal(size=truth.shape), sigma, axis=-1)
    return (camera + strength * demo.READ_NOISE * lines / lines.std()).astype(np.float32)


def struct(a: argparse.Namespace) -> dict:
    """structN2V (a horizontal mask) against N2V2 without it, on noise correlated along x."""
    truth = demo.sample_volume()[demo.SLICES].astype(np.float32)
    noisy = line_noise(truth, a.photons[0], a.sigma, a.strength, a.seed)
    rows = {"input": demo.scores(noisy[TEST[0]], truth[TEST[0]])}
    for name, extra in (("N2V2", {}), (f"structN2V (x:{a.span})", {"struct_mask": f"x:{a.span}"})):
        with tempfile.TemporaryDirectory() as d:
            model, seconds = timed(train_n2v, noisy, "SYX", Path(d) / "m", progress=False, seed=a.seed,
                                   **steps(a.steps), **extra)  # fmt: skip
            rows[name] = {**demo.scores(model.predict(noisy[TEST[0]], "SYX"), truth[TEST[0]]), "seconds": seconds}
        print(name, rows[name], flush=True)
    gain = rows[f"structN2V (x:{a.span})"]["psnr"] - rows["N2V2"]["psnr"]
    noise = {"photons": a.photons[0], "line_sigma": a.sigma, "line_strength": a.strength}
    return {"noise": noise, "steps": a.steps, "rows": rows, "struct_gain_db": gain}


def n2n(a: argparse.Namespace) -> dict:
    """Noise2Noise from two noisy acquisitions against CARE from the first and the clean truth, both on
    the demo's training rows for the same steps, scored on its test region."""
    levels = []
    for photons in a.photons:
        truth, first = demo.make_data(photons=photons)
        _, second = demo.make_data(seed=demo.SEED + 1, photons=photons)
        part = (slice(None), demo.TRAIN_ROWS)
        runs = {"CARE (clean targets)": (train, truth), "Noise2Noise": (train_n2n, second)}
        rows = {"input": demo.scores(first[TEST], truth[TEST])}
        for name, (fit, target) in runs.items():
            with tempfile.TemporaryDirectory() as d:
                model, seconds = timed(fit, first[part], target[part], "SYX", Path(d) / "m", progress=False,
                                       seed=a.seed, **steps(a.steps))  # fmt: skip
                rows[name] = {**demo.scores(model.predict(first[TEST], "SYX"), truth[TEST]), "seconds": seconds,
                              "residual": model.config.net.residual}  # fmt: skip
            print(photons, name, rows[name], flush=True)
        gap = rows["Noise2Noise"]["psnr"] - rows["CARE (clean targets)"]["psnr"]
        levels.append({"photons": photons, "rows": rows, "n2n_minus_care_db": gap})
    return {"steps": a.steps, "levels": levels}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["checkerboard", "struct", "n2n"])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--photons", default="10", help="peak photons (comma list for n2n)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sigma", type=float, default=2.0, help="struct: correlation length along x (pixels)")
    ap.add_argument("--strength", type=float, default=3.0, help="struct: line noise over read noise")
    ap.add_argument("--span", type=int, default=4, help="struct: pixels hidden either side along x")
    ap.add_argument("--name", default="", help="suffix of the result file")
    a = ap.parse_args()
    a.photons = [float(p) for p in a.photons.split(",")]
    result = {"checkerboard": checkerboard, "struct": struct, "n2n": n2n}[a.what](a)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"n2v-{a.what}{'-' + a.name if a.name else ''}.json"
    path.write_text(json.dumps({"options": vars(a), **result}, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
