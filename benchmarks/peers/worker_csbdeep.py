"""CSBDeep's side of the peer comparison, run by its own venv (see ``common.py`` for the protocol).

Everything goes through CSBDeep's public API the way its examples use it: ``Config`` + ``CARE``,
``RawData`` / ``create_patches`` / ``load_training_data`` for training data, ``CARE.predict`` with
its default normaliser and tiling. Keras 3 wants the channel axis last (``YXC``, ``ZYXC``).
TensorBoard logging is off (it needs the extra ``tensorboard`` package and costs time).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import csbdeep
import keras
import numpy as np
import tensorflow as tf
from common import THREADS, StepClock, random_image, random_patches, serve, timed_predict, warmup_crop
from csbdeep.data import RawData, create_patches
from csbdeep.io import load_training_data
from csbdeep.models import CARE, Config

tf.config.threading.set_intra_op_parallelism_threads(THREADS)
PATCHES_PER_IMAGE = 64  # training patches cut from each training slice for the quality run


class Clock(keras.callbacks.Callback):
    """Ticks a :class:`StepClock` after every training batch."""

    def __init__(self, clock: StepClock) -> None:
        super().__init__()
        self.clock = clock

    def on_train_batch_end(self, batch, logs=None) -> None:
        self.clock.tick()


class Budget(keras.callbacks.Callback):
    """Stops training once ``seconds`` of training have passed (checked after every batch)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds, self.steps, self.start = seconds, 0, 0.0

    def on_train_begin(self, logs=None) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None) -> None:
        self.steps += 1
        if time.perf_counter() - self.start >= self.seconds:
            self.model.stop_training = True


def config(ndim: int, kernel: int | None = None, **train) -> Config:
    """CSBDeep's CARE configuration: depth 2, 32 first features; ``kernel`` None keeps its default."""
    axes = "ZYXC" if ndim == 3 else "YXC"
    net = {"unet_n_depth": 2, "unet_n_first": 32, **({"unet_kern_size": kernel} if kernel else {})}
    return Config(axes, n_channel_in=1, n_channel_out=1, train_tensorboard=False, **net, **train)


def train_speed(job: dict) -> dict:
    """Steps/s of ``CARE.train`` (Keras fit over CSBDeep's data wrapper) on random patches in memory."""
    keras.utils.set_random_seed(0)
    patch, batch = tuple(job["patch"]), job["batch"]
    x, y = random_patches(max(8 * batch, 64), (*patch, 1))
    model = CARE(config(job["ndim"], job["kernel"], train_batch_size=batch), name=None, basedir=None)
    model.prepare_for_training()
    clock = StepClock(job["warmup"])
    model.callbacks.append(Clock(clock))
    model.train(x, y, validation_data=(x[:batch], y[:batch]), epochs=1, steps_per_epoch=job["steps"])
    params = model.keras_model.count_params()
    return {**clock.summary(batch, int(np.prod(patch))), "batch": batch, "params": params}


def predict(job: dict) -> dict:
    """Mpx/s of ``CARE.predict`` with its defaults (percentile normaliser, no tiling) on a random image."""
    keras.utils.set_random_seed(0)
    model = CARE(config(job["ndim"], job.get("kernel")), name=None, basedir=None)
    axes = "ZYX" if job["ndim"] == 3 else "YX"
    image = random_image(tuple(job["shape"]))
    return timed_predict(lambda a: model.predict(a, axes), image, image[warmup_crop(image.shape)])


def training_data(low: np.ndarray, high: np.ndarray, folder: Path):
    """CSBDeep's own pipeline: patches from every slice, 10 % held out for validation."""
    raw = RawData.from_arrays(low, high, axes="YX")
    file = folder / "patches.npz"
    create_patches(raw, (64, 64), PATCHES_PER_IMAGE, save_file=str(file), verbose=False)
    return load_training_data(str(file), validation_split=0.1)


def quality(job: dict) -> dict:
    """Train with CSBDeep's defaults for the job's budget, then restore its test stack."""
    keras.utils.set_random_seed(0)
    low, high = np.load(job["train_low"]), np.load(job["train_high"])
    test = np.load(job["test_low"])
    with tempfile.TemporaryDirectory() as d:
        (x, y), validation, axes = training_data(low, high, Path(d))
        model = CARE(config(2), name="quality", basedir=d)
        model.prepare_for_training()
        budget = Budget(job["budget"])
        model.callbacks.append(budget)
        model.train(x, y, validation_data=validation)  # stops at the budget, loads the best weights
        out = np.stack([model.predict(s, "YX") for s in test])
    np.save(job["outputs"]["default"], out.astype(np.float32))
    return {"steps": budget.steps, "patches": len(x), "patch_axes": axes}


def versions() -> dict:
    return {"csbdeep": csbdeep.__version__, "tensorflow": tf.__version__, "keras": keras.__version__}


if __name__ == "__main__":
    serve({"train_speed": train_speed, "predict": predict, "quality": quality, "idle": lambda job: {}}, versions)
