"""carekit's side of the peer comparison, run by carekit's own venv (see ``common.py`` for the protocol)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from common import THREADS, StepClock, random_image, serve, timed_predict, warmup_crop

import carekit
from carekit.config import Config
from carekit.data.pairs import ImagePair
from carekit.engine import choose_engine
from carekit.model import CARE
from carekit.modes.n2v import calibrated_camera, fit_blend, train_n2v
from carekit.sampling import PatchSampler
from carekit.trainer import Trainer

torch.set_num_threads(THREADS)
BUDGET_SETTINGS = {"epochs": 10_000, "steps_per_epoch": 50}  # as the demo trains to a time budget


class ClockedTrainer(Trainer):
    """carekit's training loop with a timestamp after every optimizer step."""

    def __init__(self, *args, clock: StepClock, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.clock = clock

    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        loss = super().step(x, y)
        self.clock.tick()
        return loss


def model_config(job: dict, **train) -> Config:
    """The comparison network (the peers' CARE network): depth 2, 32 first features, residual, no
    batch norm, the job's kernel."""
    axes = "ZYX" if job["ndim"] == 3 else "YX"
    net = {"depth": 2, "n_first": 32, "kernel_size": job.get("kernel"), "batch_norm": False, "residual": True}
    return Config(axes=axes, net=net, train=train)


def train_speed(job: dict) -> dict:
    """Steps/s of the full training loop (patch sampling in its thread included) on a random image."""
    torch.manual_seed(0)
    patch, batch = tuple(job["patch"]), job["batch"]
    config = model_config(job, batch_size=batch, patch_size=patch, epochs=1, steps_per_epoch=job["steps"])
    image = random_image((1, *(4 * p for p in patch[-2:])) if job["ndim"] == 2 else (1, 2 * patch[0], 128, 128))
    sampler = PatchSampler([ImagePair("random", image, image)], patch, val_fraction=0.0, threshold=0.0)
    clock = StepClock(job["warmup"])
    engine = choose_engine("auto", "auto")
    with tempfile.TemporaryDirectory() as d:
        ClockedTrainer(CARE(config), sampler, Path(d), engine, clock=clock).run(progress=False)
    params = sum(p.numel() for p in CARE(config).net.parameters())
    return {**clock.summary(batch, int(np.prod(patch))), "batch": batch, "params": params, "engine": engine.describe()}


def predict(job: dict) -> dict:
    """Mpx/s of ``model.predict`` with every default (tiling, precision) on a random image; then of
    int8 copies (all convolutions in int8, and the last two in float32, as training keeps where all
    int8 loses more than 0.05 dB), whose quality is checked on trained models by ``benchmarks/int8.py``."""
    torch.manual_seed(0)
    model = CARE(model_config(job))
    axes = model.config.axes
    image = random_image(tuple(job["shape"]))
    warmup = image[warmup_crop(image.shape)]
    result = timed_predict(lambda a: model.predict(a, axes), image, warmup)
    result["engine"] = choose_engine("auto", "auto").describe()
    for last in (0, 2):
        with tempfile.TemporaryDirectory() as d:
            with_int8_copy(model, image, Path(d), last)
            timed = timed_predict(lambda a: model.predict(a, axes, precision="int8"), image, warmup)
            result[f"int8_last{last}_float"] = {k: timed[k] for k in ("seconds", "mpx_per_s")}
    return result


def with_int8_copy(model: CARE, image: np.ndarray, folder: Path, last_float: int) -> None:
    """Give ``model`` an int8 copy in ``folder`` (calibrated on crops of ``image``; the last
    ``last_float`` convolutions in float32), as training would keep it."""
    import onnx

    from carekit import int8
    from carekit.normalize import normalize, percentiles
    from carekit.quantize import quantized

    patch = (16, 64, 64) if image.ndim == 3 else (96, 96)
    x = image[(None, None, *(slice(0, p) for p in patch))]
    lo, hi = percentiles(x, (1.0, 99.8))
    source = folder / "float32.onnx"
    int8.export(model.net, x.shape, source)
    convs = [n.name for n in onnx.load(str(source)).graph.node if n.op_type == "Conv"]
    quantized(source, folder / int8.FILE, [normalize(x, lo, hi).astype(np.float32)], convs[len(convs) - last_float :])
    model.directory = folder
    model.config.int8 = {"kept": True, "float_convolutions": last_float, "weights": int8.fingerprint(model.net)}
    model.weights_changed()


def quality(job: dict) -> dict:
    """Train on the job's pairs for its budget, restore its test stack with the default path and, where the
    job asks, in float32 and with test-time augmentation (8 flips/rotations, ``--tta``)."""
    low, high = np.load(job["train_low"]), np.load(job["train_high"])
    test = np.load(job["test_low"])
    with tempfile.TemporaryDirectory() as d:
        model = carekit.train(
            low, high, "SYX", Path(d) / "m", time_budget=job["budget"], progress=False, **BUDGET_SETTINGS
        )
        history = (Path(d) / "m" / "history.csv").read_text().splitlines()[1:]
    steps = sum(int(row.split(",")[1]) for row in history)
    options = {"default": {}, "float32": {"precision": "float32"}, "tta": {"tta": True}}
    for name, path in job["outputs"].items():
        np.save(path, model.predict(test, "SYX", **options[name]).astype(np.float32))
    return {"steps": steps, "engine": choose_engine("auto", "auto").describe()}


def quality_n2v(job: dict) -> dict:
    """Noise2Void (carekit's defaults: N2V2) on the noisy stack alone for the job's budget; restore the
    test stack with the default and float32 paths and with test-time augmentation."""
    train, test = np.load(job["train_low"]), np.load(job["test_low"])
    with tempfile.TemporaryDirectory() as d:
        model = train_n2v(train, "SYX", Path(d) / "m", time_budget=job["budget"], progress=False, **BUDGET_SETTINGS)
        history = (Path(d) / "m" / "history.csv").read_text().splitlines()[1:]
    steps = sum(int(row.split(",")[1]) for row in history)
    outputs = {"default": model.predict(test, "SYX"), "float32": model.predict(test, "SYX", precision="float32")}
    outputs["tta"] = model.predict(test, "SYX", tta=True)
    if job.get("calibration"):  # the same network, the camera's noise read from frames of a static scene
        model.config.n2v.camera = list(calibrated_camera(np.load(job["calibration"])))
        model.directory = None  # its folder is gone; the new share stays in memory
        fit_blend(model, [s[None] for s in train])
        outputs["calibrated"] = model.predict(test, "SYX")
        outputs["calibrated tta"] = model.predict(test, "SYX", tta=True)
    for name, out in outputs.items():
        np.save(job["outputs"][name], out.astype(np.float32))
    return {"steps": steps, "engine": choose_engine("auto", "auto").describe()}


def versions() -> dict:
    return {"carekit": carekit.__version__, "torch": torch.__version__}


if __name__ == "__main__":
    tasks = {"train_speed": train_speed, "predict": predict, "quality": quality, "quality_n2v": quality_n2v}
    serve({**tasks, "idle": lambda job: {}}, versions)
