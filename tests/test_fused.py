import pytest
import torch

from carekit.nets import fused
from carekit.nets.unet import UNet, fold_batch_norm

CASES = [(2, 3, None, False, False), (2, 5, None, True, False), (3, 3, None, False, False),
         (3, 3, (1, 2, 2), True, False), (2, 3, None, True, True), (3, 3, None, False, True)]  # fmt: skip


def network(ndim, kernel, pool, batch_norm, n2v2):
    torch.manual_seed(0)
    net = UNet(ndim, 2, 2, n_first=8, kernel_size=kernel, pool=pool, batch_norm=batch_norm, blur_pool=n2v2,
               top_skip=not n2v2).eval()  # fmt: skip
    for module in net.modules():  # batch norms far from the identity, so folding them matters
        if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    return fold_batch_norm(net)


def plain_and_fused(net, x, monkeypatch):
    with torch.inference_mode():
        got = net(x)
        with monkeypatch.context() as m:
            m.setattr(fused, "kernels_work", lambda: False)
            want = net(x)
    return want, got


def test_the_fused_kernels_exist_in_this_torch():
    assert fused.kernels_work()  # else prediction on CPU silently runs the slower plain operators


@pytest.mark.parametrize(("ndim", "kernel", "pool", "batch_norm", "n2v2"), CASES)
def test_fused_prediction_equals_the_plain_operators(ndim, kernel, pool, batch_norm, n2v2, monkeypatch):
    net = network(ndim, kernel, pool, batch_norm, n2v2)
    x = torch.randn((2, 2, 16, 24) if ndim == 2 else (1, 2, 8, 16, 12))
    want, got = plain_and_fused(net, x, monkeypatch)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * want.abs().max().item())


def test_fused_prediction_in_bfloat16_channels_last_is_as_accurate_as_plain(monkeypatch):
    net = network(2, 3, None, False, False).to(memory_format=torch.channels_last)
    x = torch.randn(2, 2, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        exact = net(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain, got = plain_and_fused(net, x, monkeypatch)
    err_plain, err_fused = ((t.float() - exact).norm() / exact.norm() for t in (plain, got))
    assert err_fused < max(1.5 * err_plain, 0.005), (err_fused, err_plain)


def count_fused(monkeypatch) -> list[int]:
    calls = [0]
    real = fused.conv_relu

    def counted(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(fused, "conv_relu", counted)
    return calls


def test_prediction_fuses_every_convolution_a_relu_follows(monkeypatch):
    net = network(2, 3, None, True, False)
    calls = count_fused(monkeypatch)
    with torch.inference_mode():
        net(torch.randn(1, 2, 16, 16))
    convs_with_relu = sum(isinstance(m, torch.nn.ReLU) for m in net.modules())
    assert calls[0] == convs_with_relu == 10


def test_training_and_tracing_keep_the_plain_operators(monkeypatch):
    net = network(2, 3, None, False, False)
    calls = count_fused(monkeypatch)
    x = torch.randn(1, 2, 16, 16)
    net.train()(x).sum().backward()  # gradients: plain operators
    with torch.no_grad():
        torch.jit.trace(net.eval(), x, check_trace=False)
    assert calls[0] == 0


def test_a_sum_onednn_cannot_fuse_in_bfloat16_falls_back_to_separate_operators():
    conv = torch.nn.Conv2d(1, 4, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(1, 1, 8, 8).contiguous(memory_format=torch.channels_last)
    other = torch.randn(1, 4, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        want = (conv(x) + other).relu()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = fused.conv_relu(x, conv, other=other)
    torch.testing.assert_close(got.float(), want, rtol=0.02, atol=0.05)
