import numpy as np
import pytest
import torch

from carekit import engine as engine_module
from carekit.config import Config
from carekit.data.pairs import ImagePair
from carekit.engine import Engine, choose_engine
from carekit.hardware import Cpu
from carekit.model import CARE
from carekit.sampling import PatchSampler
from carekit.trainer import Trainer

CUDA_FLOAT32 = Engine(torch.device("cuda"), "float32")  # only its contexts are used: no GPU needed


def test_exact_turns_tf32_off_for_float32_on_cuda_only():
    cudnn = torch.backends.cudnn
    before = cudnn.allow_tf32
    with CUDA_FLOAT32.exact():
        assert cudnn.allow_tf32 is False
    assert cudnn.allow_tf32 == before
    for engine in (Engine(torch.device("cuda"), "bfloat16"), Engine(torch.device("cpu"), "float32")):
        with engine.exact():
            assert cudnn.allow_tf32 == before


def test_training_backward_runs_in_the_exact_context(tmp_path, monkeypatch):
    """A float32 step on CUDA computes its gradients without TF32 too, not only its forward pass."""
    cuda_exact = CUDA_FLOAT32.exact
    monkeypatch.setattr(Engine, "exact", lambda self: cuda_exact())
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)  # restored after the test
    image = np.random.default_rng(0).random((1, 32, 32)).astype(np.float32)
    sampler = PatchSampler([ImagePair("random", image, image)], (16, 16), val_fraction=0.0, threshold=0.0)
    config = Config(axes="YX", net={"depth": 1, "n_first": 4}, train={"batch_size": 2, "patch_size": (16, 16)})
    trainer = Trainer(CARE(config), sampler, tmp_path, Engine(torch.device("cpu"), "float32"))
    seen = []
    first = next(trainer.net.parameters())
    first.register_hook(lambda grad: seen.append(torch.backends.cudnn.allow_tf32))
    x, y = next(iter(sampler.batches([0, 0], 1, 2)))
    trainer.step(x, y)
    assert seen == [False]
    assert torch.backends.cudnn.allow_tf32 is True


ICE_LAKE = Cpu("Intel Xeon 8375C", "x86_64", frozenset({"avx2", "avx512f", "avx512_vnni"}))
ZEN4 = Cpu("AMD EPYC 9R14", "x86_64", frozenset({"avx2", "avx512f", "avx512_bf16"}))
SAPPHIRE_RAPIDS = Cpu("Intel Xeon 8488C", "x86_64", frozenset({"avx512f", "amx_bf16", "amx_tile"}))
UNKNOWN = Cpu("some Arm core", "aarch64", frozenset({"asimd", "bf16"}))


def probe():
    return CARE(Config(axes="YX", net={"n_first": 8, "kernel_size": 3})).probe(train=True)


@pytest.mark.parametrize(
    ("cpu", "precision"), [(ICE_LAKE, "float32"), (ZEN4, "bfloat16"), (SAPPHIRE_RAPIDS, "bfloat16")]
)
def test_cpu_precision_follows_native_bfloat16_not_emulation(monkeypatch, cpu, precision):
    monkeypatch.setattr(engine_module, "this_cpu", lambda: cpu)
    monkeypatch.setattr(engine_module, "time_pass", lambda *a, **k: pytest.fail("flags settle it: no measurement"))
    chosen = choose_engine("cpu", "auto", probe())
    assert chosen.precision == precision
    assert ("emulated" in chosen.reason) == (precision == "float32")
    assert choose_engine("cpu", "float32", probe()).precision == "float32"  # asked for: kept


@pytest.mark.parametrize(("bf16_seconds", "precision"), [(0.4, "bfloat16"), (0.9, "float32"), (1.8, "float32")])
def test_unknown_cpus_measure_once_and_cache(monkeypatch, tmp_path, bf16_seconds, precision):
    monkeypatch.setattr(engine_module, "this_cpu", lambda: UNKNOWN)
    monkeypatch.setenv("CAREKIT_CACHE", str(tmp_path))
    calls = []

    def timed(net, shape, engine, train):
        calls.append((engine.precision, shape, train))
        return 1.0 if engine.precision == "float32" else bf16_seconds

    monkeypatch.setattr(engine_module, "time_pass", timed)
    first = choose_engine("cpu", "auto", probe())
    assert first.precision == precision and "measured" in first.reason
    assert {c[0] for c in calls} == {"float32", "bfloat16"} and calls[0][1] == (1, 1, 64, 64) and calls[0][2]
    again = choose_engine("cpu", "auto", probe())
    assert again.precision == precision and len(calls) == 2  # from the cache: no second measurement
    assert (tmp_path / "precision.json").exists()
    assert choose_engine("cpu", "auto").precision == "float32"  # nothing to measure: the safe choice


def test_a_real_measurement_times_both_precisions(monkeypatch, tmp_path):
    monkeypatch.setattr(engine_module, "this_cpu", lambda: UNKNOWN)
    monkeypatch.setenv("CAREKIT_CACHE", str(tmp_path))
    chosen = choose_engine("cpu", "auto", probe())
    assert chosen.precision in ("float32", "bfloat16") and "takes" in chosen.reason
