"""Shared test data: small synthetic fluorescence images with known ground truth."""

import os

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from carekit.data.camera import poisson_gaussian, to_photons

# Qt widgets draw offscreen; napari's OpenGL canvas still needs an X server (pytest-xvfb starts Xvfb)
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def blobs(shape: tuple[int, ...], seed: int = 0, density: float = 0.004, sigma: float = 2.0) -> np.ndarray:
    """Random Gaussian spots of varied brightness, float32 in [0, ~1]."""
    rng = np.random.default_rng(seed)
    img = np.zeros(shape, np.float32)
    n = max(1, int(density * np.prod(shape)))
    idx = tuple(rng.integers(0, s, n) for s in shape)
    img[idx] = rng.uniform(0.5, 1.0, n)
    img = gaussian_filter(img, sigma)
    return img / img.max()


def noisy(clean: np.ndarray, peak: float = 8.0, seed: int = 1) -> np.ndarray:
    return poisson_gaussian(to_photons(clean, peak), np.random.default_rng(seed), read_sigma=1.0)


@pytest.fixture
def pair2d():
    clean = blobs((96, 96), seed=3)
    return noisy(clean), clean


# a small, fast network; a higher learning rate lets it learn in seconds
TINY = {
    "n_first": 8,
    "kernel_size": 3,
    "batch_size": 8,
    "validation_patches": 8,
    "precision": "float32",
    "learning_rate": 2e-3,
}


def require_napari() -> None:
    """Skip a module of widget tests where napari or pytest-qt is missing, or where no X server runs
    (on CI, which installs them all, fail instead)."""
    pytest.importorskip("napari")
    pytest.importorskip("pytestqt")
    if not os.environ.get("DISPLAY"):
        reason = "napari's canvas needs an X server: install Debian's xvfb (pytest-xvfb starts it)"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason, allow_module_level=True)


def run_package(package, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A bioimage.io package's ONNX and TorchScript weights (read from the zip alone) on a 2D image."""
    import io
    import zipfile

    import onnxruntime
    import torch

    files = zipfile.ZipFile(package)
    batch = image[None, None].astype(np.float32)
    session = onnxruntime.InferenceSession(files.read("weights.onnx"), providers=["CPUExecutionProvider"])
    via_onnx = session.run(None, {"input": batch})[0][0, 0]
    script = torch.jit.load(io.BytesIO(files.read("weights_torchscript.pt")))
    with torch.no_grad():
        via_script = script(torch.from_numpy(batch)).numpy()[0, 0]
    return via_onnx, via_script
