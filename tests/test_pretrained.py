"""The warm start: new models begin from the shipped network that matches theirs."""

import json

import numpy as np
import pytest
import torch
from conftest import blobs, noisy
from safetensors.torch import save_file

import carekit
from carekit import pretrained
from carekit.config import Config
from carekit.model import CARE
from carekit.nets.unet import UNet

NET = {"depth": 2, "n_first": 8, "kernel_size": 3, "n_conv": 2, "residual": False, "batch_norm": True}


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """A made-up shipped 2D network (float16 on disk, as the script writes it)."""
    torch.manual_seed(1)
    net = UNet(2, 1, 1, **NET)
    for m in net.modules():  # non-trivial batch-norm statistics too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    state = net.state_dict()
    stored = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    save_file(stored, str(tmp_path / "denoise-2d.safetensors"))
    (tmp_path / "denoise-2d.json").write_text(json.dumps({"network": NET, "ndim": 2}))
    monkeypatch.setattr(pretrained, "folder", lambda: tmp_path)
    pretrained.catalogue.cache_clear()
    yield {k: v.float() for k, v in state.items()}
    pretrained.catalogue.cache_clear()


def model(channels: int = 1, **net) -> CARE:
    config = Config(axes="CYX" if channels > 1 else "YX", n_channel_in=channels, n_channel_out=channels,
                    net={**NET, **net})  # fmt: skip
    return CARE(config)


def test_a_matching_network_starts_from_the_shipped_weights(shipped):
    care = model()
    pretrained.warm_start(care)
    assert care.config.train.init == "pretrained"
    for key, value in care.net.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, shipped[key].half().float(), rtol=0, atol=0)


@pytest.mark.parametrize(
    "change",
    [
        {"n_first": 16},
        {"batch_norm": False},
        {"kernel_size": 5},
        {"depth": 3},
        {"blur_pool": True},
        {"top_skip": False},
    ],
)
def test_other_networks_start_from_scratch(shipped, change):
    care = model(**change)
    before = {k: v.clone() for k, v in care.net.state_dict().items()}
    pretrained.warm_start(care)
    assert care.config.train.init == "scratch"
    assert all(torch.equal(before[k], v) for k, v in care.net.state_dict().items())


def test_scratch_is_honoured(shipped):
    care = model()
    care.config.train.init = "scratch"
    before = care.net.state_dict()["head.weight"].clone()
    pretrained.warm_start(care)
    assert torch.equal(care.net.state_dict()["head.weight"], before)


def test_several_channels_start_as_the_single_channel_network(shipped):
    single, double = model(), model(channels=3)
    pretrained.warm_start(single)
    pretrained.warm_start(double)
    image = noisy(blobs((64, 64), seed=2))
    one = single.predict(image, "YX", precision="float32")
    three = double.predict(np.stack([image] * 3), "CYX", precision="float32")
    for c in range(3):  # the same channel three times restores three times as one
        np.testing.assert_allclose(three[c], one, rtol=1e-4, atol=1e-4 * np.ptp(one))


def test_training_records_how_it_started(shipped, tmp_path):
    clean = blobs((96, 96), seed=3)
    low = noisy(clean)
    settings = {"epochs": 1, "steps_per_epoch": 2, "patch_size": (32, 32), "progress": False, "precision": "float32"}
    warm = carekit.train(low, clean, "YX", tmp_path / "warm", residual=False, n_first=8, **settings)
    cold = carekit.train(low, clean, "YX", tmp_path / "cold", residual=False, n_first=8, init="scratch", **settings)
    assert warm.config.train.init == "pretrained" and cold.config.train.init == "scratch"
    saved = json.loads((tmp_path / "warm" / "config.json").read_text())
    assert saved["train"]["init"] == "pretrained"


def test_every_default_network_with_a_family_finds_its_shipped_weights(tmp_path):
    """The networks carekit ships match the defaults of the modes that start from them."""
    from carekit.modes.n2v import N2VConfig

    pretrained.catalogue.cache_clear()
    names = {e["name"] for e in pretrained.catalogue()}
    assert {"denoise-2d", "n2v-2d", "synthetic-2d-residual"} <= names
    n2v = CARE(Config(axes="YX", mode="n2v", n2v=N2VConfig()))
    assert (n2v.config.net.blur_pool, n2v.config.net.top_skip) == (True, False)
    assert pretrained.matching(n2v, "n2v")["name"] == "n2v-2d"
    assert pretrained.matching(n2v, "denoise") is None  # max pooling and a top skip: not this network
    recipe = {"shape": [64, 64], "channels": [[{"type": "tubules"}]]}
    synthetic = CARE(Config(axes="YX", mode="synthetic", synthetic=recipe, net={"residual": True}))
    assert pretrained.matching(synthetic, "synthetic")["name"] == "synthetic-2d-residual"


def test_a_3d_network_starts_as_the_2d_network_on_every_plane(shipped):
    flat, deep = model(), CARE(Config(axes="ZYX", net=NET))
    pretrained.warm_start(flat)
    pretrained.warm_start(deep)
    assert deep.config.train.init == "pretrained"
    for key, value in deep.net.state_dict().items():  # kernels on the middle z tap, zeros elsewhere
        if value.ndim == 5 and value.shape[2] == 3:
            torch.testing.assert_close(value[:, :, 1], shipped[key].half().float(), rtol=0, atol=0)
            assert not value[:, :, [0, 2]].any()
    image = torch.from_numpy(noisy(blobs((64, 64), seed=4)))[None, None]
    image = (image - image.mean()) / image.std()
    with torch.no_grad():
        plane = flat.net.eval()(image)[:, :, None]
        stack = deep.net.eval()(image[:, :, None].repeat(1, 1, 8, 1, 1))
    # planes alike: pooling and upsampling along z change nothing
    torch.testing.assert_close(stack, plane.expand_as(stack), rtol=1e-4, atol=1e-5)


def test_the_shipped_3d_network_uses_z_where_the_inflated_2d_one_cannot(monkeypatch):
    """Before any fine-tuning, the shipped 3D network restores a noisy stack better than the 2D one
    inflated along z (which restores each plane alone)."""
    from carekit.metrics import evaluate

    clean = blobs((24, 64, 64), seed=5, density=0.002)
    low = noisy(clean, peak=10.0)
    shipped_3d = CARE(Config(axes="ZYX", net={"kernel_size": 3, "residual": True}))
    pretrained.warm_start(shipped_3d)
    assert pretrained.matching(shipped_3d, "denoise")["name"] == "denoise-3d-residual-nobn"
    only_2d = [entry for entry in pretrained.catalogue() if entry["ndim"] == 2]
    monkeypatch.setattr(pretrained, "catalogue", lambda: only_2d)
    inflated = CARE(Config(axes="ZYX", net={"kernel_size": 3, "residual": True}))
    pretrained.warm_start(inflated)
    assert inflated.config.train.init == "pretrained"
    scores = [evaluate(clean, care.predict(low, axes="ZYX"))["psnr"] for care in (shipped_3d, inflated)]
    assert scores[0] > scores[1] + 1.0, scores
