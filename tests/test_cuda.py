"""The CUDA path. These run only where a GPU is present (CI has none); a CPU run skips them."""

import numpy as np
import pytest
import torch

from carekit.config import Config, NetConfig
from carekit.model import CARE
from carekit.normalize import PREDICT_PERCENTILES, percentiles

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_percentiles_on_the_gpu_match_numpy():
    x = np.random.default_rng(0).gamma(2, 100, (2, 3, 301, 299)).astype(np.float32)
    on_gpu = percentiles(x, PREDICT_PERCENTILES, torch.device("cuda"))
    on_cpu = percentiles(x, PREDICT_PERCENTILES)
    for g, c in zip(on_gpu, on_cpu, strict=True):
        assert g.shape == c.shape == (2, 3, 1, 1)
        np.testing.assert_allclose(g, c, rtol=1e-6)


def test_float32_on_the_gpu_is_float32():
    """cuDNN runs float32 convolutions in TF32 unless told not to (errors ~1e-3)."""
    torch.manual_seed(0)
    model = CARE(Config(axes="YX", net=NetConfig(n_first=16, kernel_size=5)))
    img = np.random.default_rng(1).gamma(2, 50, (2, 200, 232)).astype(np.float32)
    cpu = model.predict(img, "SYX", device="cpu", precision="float32")
    gpu = model.predict(img, "SYX", device="cuda", precision="float32")
    assert np.abs(gpu - cpu).max() <= 1e-5 * np.ptp(cpu)
    fast = model.predict(img, "SYX", device="cuda")
    assert np.abs(fast - cpu).max() <= 3e-2 * np.ptp(cpu)  # bfloat16: close, not equal


def test_axial_prediction_takes_the_gpu_budget(monkeypatch):
    """Isotropic planes keep their activations on the GPU: the CPU's smaller budget does not apply."""
    from test_isotropic import identity_model, record_budgets

    from carekit.modes.isotropic import PLANES_MEMORY
    from carekit.tiling import DEFAULT_MEMORY

    model = identity_model("isotropic")
    budgets = record_budgets(monkeypatch, model)
    vol = np.random.default_rng(0).random((6, 24, 20)).astype(np.float32)
    cpu = model.predict(vol, "ZYX", device="cpu", precision="float32")
    gpu = model.predict(vol, "ZYX", device="cuda", precision="float32")
    assert budgets[0] == PLANES_MEMORY and budgets[-1] >= DEFAULT_MEMORY > PLANES_MEMORY
    np.testing.assert_allclose(gpu, cpu, rtol=1e-4, atol=1e-4)
