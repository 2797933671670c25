"""``carekit demo``: train on the shipped sample and restore what the network never saw.

The sample is a high-SNR confocal stack of nuclei (see ``samples/README.md``).

*denoise*: its middle 40 slices are the ground truth; a Poisson-Gaussian camera at a
few photons per pixel makes the low-SNR input. The network trains on the upper two
thirds of every slice and restores the lower third of ten slices, compared with
non-local means tuned against the ground truth.

*n2v*: the same noisy slices, and nothing else: Noise2Void (N2V2) trains on the noisy stack
it then restores, as a microscopist without clean images would. The ground truth is kept aside
for the scores only.

*isotropic*: the stack is blurred along z and every fourth slice kept, as if imaged
with an elongated PSF and a 4x coarser z-step. The network learns from that stack
alone and restores it to the original sampling, compared with linear and cubic
interpolation along z.
"""

from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

import numpy as np

from carekit.baselines import mean_psnr, tuned_nlm
from carekit.data.camera import poisson_gaussian, resample_axis, to_photons, upsampled_positions
from carekit.errors import CarekitError
from carekit.figures import axial_spectrum, comparison
from carekit.io import prepare_output, read_image, write_json, write_tiff
from carekit.metrics import evaluate
from carekit.modes import train, train_isotropic, train_n2v

PEAK_PHOTONS = 10.0
READ_NOISE = 2.0
SLICES = slice(10, 50)
TRAIN_ROWS = slice(0, 128)
TEST_ROWS = slice(128, 192)
TEST_SLICES = slice(15, 25)  # within SLICES
TIME_BUDGET = 120.0
SEED = 1


def sample_volume() -> np.ndarray:
    """The shipped confocal stack (ZYX, uint16)."""
    with resources.as_file(resources.files("carekit") / "samples" / "nuclei3d.tif") as path:
        volume, _ = read_image(path)
    return volume


def make_data(seed: int = SEED, photons: float = PEAK_PHOTONS) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth and low-SNR input at ``photons`` peak photons, both ``(40, 192, 192)`` float32."""
    truth = sample_volume()[SLICES].astype(np.float32)
    noisy = poisson_gaussian(to_photons(truth, photons), np.random.default_rng(seed), read_sigma=READ_NOISE)
    return truth, noisy


def scores(prediction: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Mean NRMSE, PSNR and SSIM over the 2D slices."""
    per = [evaluate(p, t) for p, t in zip(prediction, truth, strict=True)]
    return {k: float(np.mean([s[k] for s in per])) for k in per[0]}


def run(output: str | Path = "demo-output", *, mode: str = "denoise", time_budget: float | None = None,
        device: str = "auto", precision: str | None = None, progress: bool = True) -> dict:  # fmt: skip
    """Run the ``mode`` demo (``"denoise"``, ``"n2v"`` or ``"isotropic"``) into ``output``, training for
    ``time_budget`` seconds (default 120); writes the model, TIFFs, ``metrics.json`` and a figure, returns
    the metrics."""
    if mode not in DEMOS:
        raise CarekitError(f"demo mode '{mode}' is unknown; use one of {', '.join(DEMOS)}")
    out = Path(output)
    prepare_output(out / "metrics.json", role="--output")
    budget = TIME_BUDGET if time_budget is None else time_budget
    if budget <= 0:
        raise CarekitError(f"time budget must be positive, got {budget}")
    training = {"time_budget": budget, "overwrite": True, "device": device, "progress": progress, "epochs": 10_000,
                "steps_per_epoch": 50, **({"precision": precision} if precision else {})}  # fmt: skip
    start = time.monotonic()
    metrics = DEMOS[mode](out, training, {"device": device, "precision": precision})
    results, gains = metrics["metrics"], metrics["gain_db"]
    for name, r in results.items():
        print(f"  {name:7s} PSNR {r['psnr']:6.2f} dB  SSIM {r['ssim']:.3f}  NRMSE {r['nrmse']:.4f}")
    method = next(iter(gains)).split("_over_")[0].upper()
    print(f"{method} gains " + " and ".join(f"{v:.2f} dB over {k.split('_over_')[1]}" for k, v in gains.items()))
    print(f"results in {out}/: restored.tif, metrics.json, {metrics.pop('figure')}, model/ "
          f"({time.monotonic() - start:.0f} s)")  # fmt: skip
    return metrics


def run_denoise(out: Path, training: dict, predicting: dict) -> dict:
    """Denoise the lower third of ten slices after training on the upper two thirds of every slice."""
    truth, noisy = make_data()
    test = (TEST_SLICES, TEST_ROWS)
    print(f"carekit demo: {noisy.shape[0]} noisy slices ({PEAK_PHOTONS:g} photons peak, read noise {READ_NOISE:g})")
    print(
        f"training for {training['time_budget']:.0f} s on rows {TRAIN_ROWS.start}-{TRAIN_ROWS.stop - 1} of every slice"
    )
    start = time.monotonic()
    model = train(noisy[:, TRAIN_ROWS], truth[:, TRAIN_ROWS], "SYX", out / "model", **training)
    trained = time.monotonic() - start
    print(model.summary())
    restored = model.predict(noisy[test], "SYX", **predicting)
    print("tuning non-local means against the ground truth (the fairest setting for it)")
    denoised, nlm_params = tuned_nlm(noisy[test], truth[test])
    results = {name: scores(v, truth[test]) for name, v in (("input", noisy[test]), ("nlm", denoised),
                                                            ("care", restored))}  # fmt: skip
    region = "slices 25-34 of the sample, rows 128-191"
    metrics = {
        "data": {"peak_photons": PEAK_PHOTONS, "read_noise": READ_NOISE, "test_region": region},
        "training_seconds": round(trained, 1),
        "nlm_parameters": nlm_params,
        "metrics": results,
        "gain_db": {f"care_over_{k}": results["care"]["psnr"] - results[k]["psnr"] for k in ("input", "nlm")},
    }
    for name, image in (("input", noisy[test]), ("truth", truth[test]), ("nlm", denoised), ("restored", restored)):
        write_tiff(out / f"{name}.tif", image.astype(np.float32), "SYX")
    write_json(out / "metrics.json", metrics)
    k = len(restored) // 2
    panels = {"input": noisy[test][k], "NLM (tuned)": denoised[k], "CARE": restored[k], "ground truth": truth[test][k]}
    psnrs = [mean_psnr(p[None], truth[test][k][None]) for p in list(panels.values())[:3]]
    comparison(panels, out / "demo.png", scores={n: f"PSNR {s:.2f} dB" for n, s in zip(panels, psnrs, strict=False)})
    return {**metrics, "figure": "demo.png"}


ISO_FACTOR = 4
ISO_SIGMA = 3.0  # axial blur added, in slices of the sample (close to its lateral pixel size)


def make_anisotropic(volume: np.ndarray, factor: int = ISO_FACTOR, sigma: float = ISO_SIGMA) -> np.ndarray:
    """Blur along z and keep every ``factor``-th slice (slice ``j`` is the original slice ``j * factor``)."""
    from scipy.ndimage import gaussian_filter1d

    return gaussian_filter1d(np.asarray(volume, np.float32), sigma, axis=0, mode="nearest")[::factor]


def interpolated(coarse: np.ndarray, factor: float, order: int) -> np.ndarray:
    """Linear (``order`` 1) or cubic-spline (3) interpolation along z onto the restored grid."""
    from scipy.ndimage import map_coordinates

    pos = upsampled_positions(coarse.shape[0], factor)
    if order == 1:
        return resample_axis(coarse, 0, pos)
    grid = np.meshgrid(pos, np.arange(coarse.shape[1]), np.arange(coarse.shape[2]), indexing="ij")
    return map_coordinates(coarse.astype(np.float32), grid, order=order, mode="nearest")


def run_isotropic(out: Path, training: dict, predicting: dict) -> dict:
    """Isotropic restoration of the sample made anisotropic, against interpolation along z."""
    truth = sample_volume().astype(np.float32)
    coarse = make_anisotropic(truth)
    print(
        f"carekit demo --mode isotropic: {truth.shape[0]} slices blurred (sigma {ISO_SIGMA:g}) and "
        f"subsampled {ISO_FACTOR}x to {coarse.shape[0]}; training for {training['time_budget']:.0f} s"
    )
    start = time.monotonic()
    model = train_isotropic(coarse, "ZYX", ISO_FACTOR, out / "model", psf_sigma=(ISO_SIGMA, 0.0), **training)
    trained = time.monotonic() - start
    restored = model.predict(coarse, "ZYX", progress=training["progress"], **predicting)
    reference = truth[: restored.shape[0]]
    candidates = {
        "linear": interpolated(coarse, ISO_FACTOR, 1),
        "cubic": interpolated(coarse, ISO_FACTOR, 3),
        "care": restored,
    }
    results = {name: evaluate(v, reference) for name, v in candidates.items()}
    metrics = {
        "data": {"factor": ISO_FACTOR, "axial_sigma": ISO_SIGMA, "slices": [coarse.shape[0], restored.shape[0]]},
        "training_seconds": round(trained, 1),
        "metrics": results,
        "gain_db": {"care_over_linear": results["care"]["psnr"] - results["linear"]["psnr"]},
    }
    spacing = {"Z": 0.29 * ISO_FACTOR, "Y": 0.26, "X": 0.26}
    write_tiff(out / "anisotropic.tif", coarse, "ZYX", spacing=spacing)
    write_tiff(out / "restored.tif", restored, "ZYX", spacing=model.output_spacing(spacing))
    write_json(out / "metrics.json", metrics)
    axial_spectrum(
        {"linear interpolation": candidates["linear"], "CARE": restored, "original": reference},
        out / "spectrum.png",
        voxel_ratio=0.29 / 0.26,
    )
    return {**metrics, "figure": "spectrum.png"}


def run_n2v(out: Path, training: dict, predicting: dict) -> dict:
    """Noise2Void on the noisy slices alone; scored on the denoising demo's test region."""
    truth, noisy = make_data()
    test = (TEST_SLICES, TEST_ROWS)
    print(
        f"carekit demo --mode n2v: {noisy.shape[0]} noisy slices ({PEAK_PHOTONS:g} photons peak, read noise "
        f"{READ_NOISE:g}); training for {training['time_budget']:.0f} s on them alone, no clean image"
    )
    start = time.monotonic()
    model = train_n2v(noisy, "SYX", out / "model", **training)
    trained = time.monotonic() - start
    print(model.summary())
    restored = model.predict(noisy, "SYX", **predicting)
    print("tuning non-local means against the ground truth (the fairest setting for it)")
    denoised, nlm_params = tuned_nlm(noisy[test], truth[test])
    candidates = {"input": noisy[test], "nlm": denoised, "n2v": restored[test]}
    results = {name: scores(v, truth[test]) for name, v in candidates.items()}
    metrics = {
        "data": {
            "peak_photons": PEAK_PHOTONS,
            "read_noise": READ_NOISE,
            "trained_on": "the noisy slices only",
            "test_region": "slices 25-34 of the sample, rows 128-191",
        },
        "training_seconds": round(trained, 1),
        "nlm_parameters": nlm_params,
        "metrics": results,
        "gain_db": {f"n2v_over_{k}": results["n2v"]["psnr"] - results[k]["psnr"] for k in ("input", "nlm")},
    }
    write_tiff(out / "restored.tif", restored.astype(np.float32), "SYX")
    write_json(out / "metrics.json", metrics)
    k = len(denoised) // 2
    panels = {"input": noisy[test][k], "NLM (tuned on truth)": denoised[k],
              "N2V2 (noisy images only)": restored[test][k], "ground truth": truth[test][k]}  # fmt: skip
    psnrs = [mean_psnr(p[None], truth[test][k][None]) for p in list(panels.values())[:3]]
    comparison(panels, out / "demo.png", scores={n: f"PSNR {s:.2f} dB" for n, s in zip(panels, psnrs, strict=False)})
    return {**metrics, "figure": "demo.png"}


DEMOS = {"denoise": run_denoise, "n2v": run_n2v, "isotropic": run_isotropic}
