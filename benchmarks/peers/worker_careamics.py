"""CAREamics' side of the peer comparison, run by its own venv (see ``common.py`` for the protocol).

Everything goes through CAREamics' public API: ``create_advanced_care_config`` + ``CAREamist``
(``train`` on arrays, ``predict`` with its default: the whole image, no tiling). Without tiling its
``predict`` refuses images whose height or width is not a multiple of its pooling factor (the
time-lapse sample is 511 pixels high), so test stacks are padded by reflection to a multiple of 16
and the restoration cropped back (:func:`predict_stack`). Its U-Net has 3x3 kernels only. Timing
uses a Lightning callback; the time budget is Lightning's ``max_time`` trainer parameter. CAREamics
turns early stopping on by default for CARE; it is turned off here (an empty
``early_stopping_params``) so that it trains for the whole budget like the others.
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import THREADS, StepClock, random_image, random_patches, serve, timed_predict, warmup_crop

torch.set_num_threads(THREADS)
_TORCHVISION_DEFS = []  # keeps the placeholder library alive


def declare_missing_torchvision_ops() -> None:
    """Let torchvision import where its compiled ops cannot load.

    PyPI's torchvision wheels are built against the CUDA torch; beside the CPU torch their
    ``_C`` library fails to load, and ``import torchvision`` (which CAREamics imports) then
    fails while registering fake kernels for ``nms`` and ``qnms``. CAREamics' CARE path never
    calls a torchvision op, so declaring those two schemas (with no kernels) is enough.
    """
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    library = Path(next(iter(spec.submodule_search_locations))) / "_C.so"
    try:
        torch.ops.load_library(str(library))
        return
    except (OSError, RuntimeError):
        pass
    lib = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _TORCHVISION_DEFS.append(lib)


declare_missing_torchvision_ops()

import careamics  # noqa: E402
import lightning  # noqa: E402
from careamics import CAREamist  # noqa: E402
from careamics.config import create_advanced_care_config, create_advanced_n2v_config  # noqa: E402

SAME_NET = {"depth": 2, "num_channels_init": 32, "residual": True, "use_batch_norm": False}


class Clock(lightning.pytorch.Callback):
    """Ticks a :class:`StepClock` after every training batch."""

    def __init__(self, clock: StepClock) -> None:
        self.clock = clock

    def on_train_batch_end(self, *args, **kwargs) -> None:
        self.clock.tick()


def careamist(ndim: int, batch: int, folder: str, callbacks: list | None = None, **options) -> CAREamist:
    """A CAREamist for single-channel stacks (``SYX`` or ``SZYX``), early stopping off."""
    axes, patch = ("SZYX", [16, 64, 64]) if ndim == 3 else ("SYX", [64, 64])
    options = {"patch_size": patch, "early_stopping_params": {}, **options}
    config = create_advanced_care_config(
        experiment_name="peers", data_type="array", axes=axes, batch_size=batch, seed=1, **options
    )
    return CAREamist(config, work_dir=folder, callbacks=callbacks)


def stack_for(patch: tuple[int, ...], patches: int) -> tuple[np.ndarray, np.ndarray]:
    """Random image pairs large enough that ``patches`` patches fit in one epoch."""
    shape = (4 * patch[0], 4 * patch[1]) if len(patch) == 2 else (2 * patch[0], 2 * patch[1], 2 * patch[2])
    per_image = int(np.prod(shape) // np.prod(patch))
    return random_patches(-(-patches // per_image) + 2, shape)


def train_speed(job: dict) -> dict:
    """Steps/s of ``CAREamist.train`` (Lightning loop and data loader included) on random arrays."""
    patch, batch = tuple(job["patch"]), job["batch"]
    low, high = stack_for(patch, job["steps"] * batch)
    clock = StepClock(job["warmup"])
    steps = {"num_epochs": 1000, "trainer_params": {"max_steps": job["steps"]}}
    with tempfile.TemporaryDirectory() as d:
        cam = careamist(job["ndim"], batch, d, [Clock(clock)], patch_size=list(patch), model_params=SAME_NET, **steps)
        cam.train(train_data=low, train_data_target=high)
        params = sum(p.numel() for p in cam.model.parameters())
    return {**clock.summary(batch, int(np.prod(patch))), "batch": batch, "params": params}


def predict(job: dict) -> dict:
    """Mpx/s of ``CAREamist.predict`` with its defaults (whole image, best checkpoint) after one short epoch."""
    ndim = job["ndim"]
    image = random_image(tuple(job["shape"]))
    patch = [8, 32, 32] if ndim == 3 else [32, 32]  # small, so that training leaves little memory behind
    low, high = stack_for(tuple(patch), 16)
    with tempfile.TemporaryDirectory() as d:
        cam = careamist(ndim, 16, d, model_params=SAME_NET, num_epochs=1, patch_size=patch)
        cam.train(train_data=low, train_data_target=high)
        axes = "ZYX" if ndim == 3 else "YX"
        run = lambda a: np.asarray(cam.predict(a, axes=axes, output_axes=axes)[0][0]).reshape(a.shape)  # noqa: E731
        return timed_predict(run, image, image[warmup_crop(image.shape)])


class StepCount(lightning.pytorch.Callback):
    """Counts training batches."""

    def __init__(self) -> None:
        self.steps = 0

    def on_train_batch_end(self, *args, **kwargs) -> None:
        self.steps += 1


def predict_stack(cam: CAREamist, stack: np.ndarray) -> np.ndarray:
    """Restore a ``SYX`` stack whole, reflection-padded to a multiple of 16 in Y and X and cropped back."""
    padded = np.pad(stack, [(0, 0)] + [(0, -n % 16) for n in stack.shape[1:]], mode="reflect")
    out = np.asarray(cam.predict(padded, axes="SYX")[0][0]).reshape(padded.shape)
    return out[:, : stack.shape[1], : stack.shape[2]]


def quality(job: dict) -> dict:
    """Train with CAREamics' defaults (early stopping off) for the job's budget, then restore the test stack."""
    low, high = np.load(job["train_low"]), np.load(job["train_high"])
    test = np.load(job["test_low"])
    budget = {"max_time": {"seconds": round(job["budget"])}}
    with tempfile.TemporaryDirectory() as d:
        counter = StepCount()
        cam = careamist(2, 16, d, [counter], num_epochs=100_000, trainer_params=budget)
        cam.train(train_data=low, train_data_target=high)
        out = predict_stack(cam, test)
    np.save(job["outputs"]["default"], out.astype(np.float32))
    return {"steps": counter.steps}


def quality_n2v(job: dict) -> dict:
    """N2V2 with CAREamics' defaults (``use_n2v2``: median replacement, blur pooling, no top skip;
    0.2 % masked, mean/std normalisation, Adam at its default rate) on the noisy stack alone for the
    job's budget; then restore the test stack. Patches and batch as in the CARE rows (64x64, 16)."""
    train, test = np.load(job["train_low"]), np.load(job["test_low"])
    budget = {"max_time": {"seconds": round(job["budget"])}}
    with tempfile.TemporaryDirectory() as d:
        counter = StepCount()
        config = create_advanced_n2v_config(experiment_name="peers", data_type="array", axes="SYX", patch_size=[64, 64],
                                            batch_size=16, num_epochs=100_000, use_n2v2=True, trainer_params=budget,
                                            seed=1)  # fmt: skip
        cam = CAREamist(config, work_dir=d, callbacks=[counter])
        cam.train(train_data=train)
        out = predict_stack(cam, test)
    np.save(job["outputs"]["default"], out.astype(np.float32))
    return {"steps": counter.steps}


def versions() -> dict:
    return {"careamics": careamics.__version__, "torch": torch.__version__, "lightning": lightning.__version__}


if __name__ == "__main__":
    tasks = {"train_speed": train_speed, "predict": predict, "quality": quality, "quality_n2v": quality_n2v}
    serve({**tasks, "idle": lambda job: {}}, versions)
