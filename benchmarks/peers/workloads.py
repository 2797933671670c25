"""The workloads: which jobs each tool runs, at which sizes, and the shared quality data.

Throughput and prediction jobs use random data (content does not change a network's speed);
the quality jobs use the shipped sample degraded as ``carekit demo`` does, at several photon
levels, each tool training on the demo's training rows and restoring test rows none has seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from carekit import demo

KERNEL3_ONLY = {"careamics"}  # CAREamics' U-Net has 3x3 kernels only
N2V_TOOLS = ("carekit", "careamics")  # CSBDeep has no Noise2Void


@dataclass(frozen=True)
class Sizes:
    """Patch, batch and image sizes of one run; ``QUICK`` is the smoke-test version of ``FULL``."""

    patch2d: tuple[int, ...] = (64, 64)
    batch2d: int = 16
    steps2d: int = 60
    warmup2d: int = 10
    patch3d: tuple[int, ...] = (16, 64, 64)
    batch3d: int = 4  # 16 patches of 16x64x64 take seconds per step on 2 cores for the peers
    steps3d: int = 25
    warmup3d: int = 5
    predict2d: tuple[int, ...] = (2048, 2048)
    predict3d: tuple[int, ...] = (64, 512, 512)


FULL = Sizes()
QUICK = Sizes((32, 32), 4, 8, 3, (8, 32, 32), 2, 6, 2, (256, 256), (16, 128, 128))


@dataclass
class Job:
    """One worker run: ``spec`` goes to ``tool``'s worker; ``row`` labels it in the tables."""

    workload: str
    row: str
    tool: str
    spec: dict = field(default_factory=dict)
    result: dict | None = None


def shape_text(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def throughput_jobs(tools: list[str], s: Sizes) -> list[Job]:
    """Training steps/s: 2D kernel 5 and 3, 3D kernel 3, the same depth-2 / 32-feature U-Net."""
    cases = [
        (2, 5, s.patch2d, s.batch2d, s.steps2d, s.warmup2d),
        (2, 3, s.patch2d, s.batch2d, s.steps2d, s.warmup2d),
        (3, 3, s.patch3d, s.batch3d, s.steps3d, s.warmup3d),
    ]
    jobs = []
    for ndim, kernel, patch, batch, steps, warmup in cases:
        row = f"train {ndim}D k{kernel}, batch {batch} x {shape_text(patch)}"
        spec = {"task": "train_speed", "ndim": ndim, "kernel": kernel, "patch": list(patch), "batch": batch}
        spec.update(steps=steps, warmup=warmup)
        jobs += [Job("throughput", row, t, dict(spec)) for t in tools if kernel == 3 or t not in KERNEL3_ONLY]
    return jobs


def predict_jobs(tools: list[str], s: Sizes) -> list[Job]:
    """Prediction Mpx/s with each tool's default tiling: 2D kernel 5 and 3, 3D kernel 3."""
    cases = [(2, 5, s.predict2d), (2, 3, s.predict2d), (3, 3, s.predict3d)]
    jobs = []
    for ndim, kernel, shape in cases:
        row = f"predict {ndim}D k{kernel}, {shape_text(shape)}"
        spec = {"task": "predict", "ndim": ndim, "kernel": kernel, "shape": list(shape)}
        jobs += [Job("predict", row, t, dict(spec)) for t in tools if kernel == 3 or t not in KERNEL3_ONLY]
    return jobs


def idle_jobs(tools: list[str]) -> list[Job]:
    """The memory a worker holds after importing its tool and nothing else."""
    return [Job("memory", "import only", t, {"task": "idle"}) for t in tools]


@dataclass
class QualityData:
    """One photon level's data as ``.npy`` files, and the truth of its test region in memory
    (``train_high`` None: self-supervised training on ``train_low`` alone)."""

    photons: float
    train_low: Path
    train_high: Path | None
    test_low: Path
    test_truth: np.ndarray
    test_noisy: np.ndarray
    title: str = "CARE from pairs"
    calibration: Path | None = None  # frames of a static scene that read the camera's noise (Noise2Void)


def quality_data(photons: float, folder: Path) -> QualityData:
    """Write the training rows and the test region of one photon level into ``folder``."""
    truth, noisy = demo.make_data(photons=photons)
    test = (demo.TEST_SLICES, demo.TEST_ROWS)
    files = {name: folder / f"p{photons:g}-{name}.npy" for name in ("train_low", "train_high", "test_low")}
    np.save(files["train_low"], noisy[:, demo.TRAIN_ROWS].astype(np.float32))
    np.save(files["train_high"], truth[:, demo.TRAIN_ROWS])
    np.save(files["test_low"], noisy[test].astype(np.float32))
    return QualityData(photons, **files, test_truth=truth[test], test_noisy=noisy[test])


def quality_jobs(tools: list[str], data: list[QualityData], budget: float, folder: Path,
                 carekit_budgets: tuple[float, ...] = ()) -> list[Job]:  # fmt: skip
    """One training run per tool and photon level, each for ``budget`` seconds; carekit also trains for
    each of ``carekit_budgets`` (the time it takes to reach each peer's quality)."""
    jobs = []
    for d in data:
        for t in tools:
            names = ("default", "float32", "tta") if t == "carekit" else ("default",)
            runs = [(budget, names, t)]
            if t == "carekit":
                runs += [(b, ("default",), f"carekit {b:g} s") for b in carekit_budgets]
            for seconds, kinds, label in runs:
                outputs = {n: str(folder / f"p{d.photons:g}-{label.replace(' ', '')}-{n}.npy") for n in kinds}
                spec = {"task": "quality", "budget": seconds, "outputs": outputs, "label": label}
                spec.update(train_low=str(d.train_low), train_high=str(d.train_high), test_low=str(d.test_low))
                jobs.append(Job("quality", f"{d.photons:g} photons", t, spec))
    return jobs


def noisy_images(photons: float, image: Path | None) -> tuple[np.ndarray, np.ndarray, tuple, str]:
    """Truth, noisy stack (``SYX``), test region and a name: the demo's data and test region, or an
    image of the user's (its 2D planes, scored whole) under the demo's camera."""
    if image is None:
        truth, noisy = demo.make_data(photons=photons)
        return truth, noisy, (demo.TEST_SLICES, demo.TEST_ROWS), "demo stack"
    import tifffile

    from carekit.data.camera import poisson_gaussian, to_photons

    truth = np.asarray(tifffile.imread(image), np.float32)
    truth = truth.reshape(-1, *truth.shape[-2:])
    photons_image = to_photons(truth, photons)
    noisy = poisson_gaussian(photons_image, np.random.default_rng(demo.SEED), read_sigma=demo.READ_NOISE)
    return truth, noisy, (slice(None),), Path(image).name


def n2v_data(photons: float, folder: Path, image: Path | None = None) -> QualityData:
    """Noise2Void's data at one photon level: the whole noisy stack to train on (no clean image), and
    the test region to restore (the CARE rows' on the demo stack; the whole of a user's image)."""
    truth, noisy, test, name = noisy_images(photons, image)
    tag = f"n2v-p{photons:g}-{name.split('.')[0].replace(' ', '-')}"
    files = {"train_low": folder / f"{tag}-train.npy", "test_low": folder / f"{tag}-test.npy"}
    np.save(files["train_low"], noisy.astype(np.float32))
    np.save(files["test_low"], noisy[test].astype(np.float32))
    files["calibration"] = folder / f"{tag}-calibration.npy"
    np.save(files["calibration"], calibration_frames(photons))
    title = f"Noise2Void on the noisy {name} alone (no clean image), {noisy.shape[0]} x {shape_text(noisy.shape[1:])}"
    return QualityData(photons, train_high=None, test_truth=truth[test], test_noisy=noisy[test], title=title,
                       **files)  # fmt: skip


CALIBRATION_FRAMES = 8


def calibration_frames(photons: float) -> np.ndarray:
    """What a user records to calibrate the camera: frames of one static scene (here an unevenly lit
    fluorescent slide, dark to the images' peak and beyond) taken one after another with the images'
    camera settings, none of the images' structures in it."""
    from carekit.data.camera import poisson_gaussian

    y, x = np.mgrid[0:256, 0:256].astype(np.float32) / 255
    scene = 1.2 * photons * x * (0.6 + 0.4 * y)
    rng = np.random.default_rng([demo.SEED, 7])
    return np.stack([poisson_gaussian(scene, rng, read_sigma=demo.READ_NOISE) for _ in range(CALIBRATION_FRAMES)])


def n2v_jobs(tools: list[str], data: list[QualityData], budget: float, folder: Path) -> list[Job]:
    """One Noise2Void (N2V2) training run per tool that has one and photon level, ``budget`` seconds each."""
    jobs = []
    for d in data:
        for t in (t for t in tools if t in N2V_TOOLS):
            names = ("default", "float32", "tta", "calibrated", "calibrated tta") if t == "carekit" else ("default",)
            outputs = {n: str(folder / f"{d.test_low.stem}-{t}-{n.replace(' ', '-')}.npy") for n in names}
            spec = {"task": "quality_n2v", "budget": budget, "outputs": outputs, "label": t,
                    "train_low": str(d.train_low), "test_low": str(d.test_low)}  # fmt: skip
            if t == "carekit" and d.calibration is not None:
                spec["calibration"] = str(d.calibration)
            jobs.append(Job("n2v", f"{d.photons:g} photons", t, spec))
    return jobs


NLM_ROWS = ("carekit", "carekit tta", "carekit calibrated", "carekit calibrated tta")


def score_level(data: QualityData, jobs: list[Job]) -> dict:
    """The paper's per-slice evaluation of the input, tuned NLM and every tool's restoration."""
    from carekit.baselines import tuned_nlm

    denoised, nlm_params = tuned_nlm(data.test_noisy, data.test_truth)
    scores = {
        "input": demo.scores(data.test_noisy, data.test_truth),
        "NLM (tuned on truth)": demo.scores(denoised, data.test_truth),
    }
    for job in jobs:
        if job.result is None or "error" in job.result:
            scores[job.tool] = {"error": (job.result or {}).get("error", "not run")}
            continue
        for name, path in job.spec["outputs"].items():
            tool = job.spec.get("label", job.tool)
            label = tool if name == "default" else f"{tool} {name}"
            scores[label] = {**demo.scores(np.load(path), data.test_truth), "steps": job.result.get("steps")}
    psnr = {k: v.get("psnr") for k, v in scores.items()}

    def over_peers(label: str) -> dict:
        return {p: psnr[label] - psnr[p] for p in ("csbdeep", "careamics") if psnr.get(p) and psnr.get(label)}

    gap = psnr["carekit float32"] - psnr["carekit"] if psnr.get("carekit float32") and psnr.get("carekit") else None
    nlm = psnr["NLM (tuned on truth)"]
    budgets = sorted((j.spec["budget"], psnr.get(j.spec["label"])) for j in jobs if j.tool == "carekit")
    reach = {p: next((b for b, v in budgets if v is not None and v >= psnr[p]), None)
             for p in ("csbdeep", "careamics") if psnr.get(p) is not None}  # fmt: skip
    return {
        "title": data.title,
        "photons": data.photons,
        "nlm_gain_db": {k: psnr[k] - nlm for k in NLM_ROWS if psnr.get(k)},
        "nlm_parameters": nlm_params,
        "scores": scores,
        "gain_db": over_peers("carekit"),
        "tta_gain_db": over_peers("carekit tta"),
        "float32_gap_db": gap,
        "carekit_psnr_by_budget": budgets,
        "carekit_seconds_to_peer": reach,
    }
