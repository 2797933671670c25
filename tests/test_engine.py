import numpy as np
import torch

from carekit.config import Config
from carekit.data.pairs import ImagePair
from carekit.engine import Engine
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
