import pytest
import torch

from carekit.nets.unet import UNet, blur_pool, build_unet, count_parameters, fold_batch_norm, max_pool


def test_reference_2d_network_has_the_reference_size():
    assert count_parameters(UNet(2, 1, 1, kernel_size=5)) == 922_977


def test_reference_3d_network_is_about_a_million_parameters():
    assert 0.95e6 < count_parameters(UNet(3, 1, 1, kernel_size=3)) < 1.05e6


def test_residual_only_when_channels_match():
    assert UNet(2, 1, 1).residual and not UNet(2, 2, 1).residual


@pytest.mark.parametrize(("ndim", "kernel", "depth", "n2v2"), [(2, 5, 2, False), (2, 3, 3, False), (3, 3, 2, False),
                                                         (2, 3, 2, True), (3, 3, 2, True)])  # fmt: skip
def test_halo_covers_the_receptive_field(ndim, kernel, depth, n2v2):
    torch.manual_seed(0)
    net = UNet(ndim, 1, 1, depth=depth, n_first=8, kernel_size=kernel, blur_pool=n2v2, top_skip=not n2v2).double()
    size = 2 * net.halo()[0] + 2 * net.divisor()[0] + 8
    # the kernel is the same along every axis, so the first axis alone is measured in 3D (faster)
    shape = (1, 1, size, size) if ndim == 2 else (1, 1, size, 16, 16)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    centre = tuple(s // 2 for s in shape[2:])
    net(x)[(0, 0, *centre)].backward()
    coords = (x.grad[0, 0].abs() > 0).nonzero()
    reach = (coords[:, 0] - centre[0]).abs().max().item()
    assert reach <= net.halo()[0], (reach, net.halo())
    assert reach >= net.halo()[0] - 3 * net.divisor()[0]  # a tight bound, not a huge one


def test_anisotropic_pooling_keeps_z():
    net = UNet(3, 1, 1, n_first=4, kernel_size=3, pool=(1, 2, 2))
    assert net.divisor() == (1, 4, 4)
    assert net(torch.zeros(1, 1, 5, 8, 8)).shape == (1, 1, 5, 8, 8)


@pytest.mark.parametrize("ndim", [2, 3])
def test_folded_batch_norm_gives_the_same_output(ndim):
    torch.manual_seed(0)
    net = UNet(ndim, 1, 1, n_first=4, kernel_size=3, batch_norm=True, residual=False)
    for module in net.modules():  # running statistics far from the identity, so folding is exercised
        if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 2)
            module.bias.data.uniform_(-1, 1)
    net.eval()
    folded = fold_batch_norm(net)
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)) for m in folded.modules())
    assert any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)) for m in net.modules())  # a copy
    x = torch.randn((2, 1) + (8,) * ndim)
    with torch.no_grad():
        want, got = net(x), folded(x)
    assert torch.allclose(want, got, atol=1e-5 * want.abs().max().item()), (want - got).abs().max()


def test_folding_leaves_a_network_without_batch_norm_alone():
    net = UNet(2, 1, 1, n_first=4)
    assert fold_batch_norm(net) is net


def outputs_and_gradients(net: UNet, x: torch.Tensor, phase: bool) -> list[torch.Tensor]:
    net.zero_grad()
    net.phase_upsampling = phase
    y = net(x)
    y.pow(2).sum().backward()
    return [y.detach()] + [p.grad.clone() for p in net.parameters()]


@pytest.mark.parametrize(
    ("ndim", "kernel", "pool", "batch_norm", "n2v2"),
    [(2, 3, None, True, False), (2, 5, None, False, False), (2, 7, None, False, False), (3, 3, None, False, False),
     (3, 3, (1, 2, 2), True, False), (2, 3, None, True, True), (2, 5, None, False, True),
     (3, 3, (1, 2, 2), True, True)],
)  # fmt: skip
def test_phase_upsampling_equals_upsample_then_concat(ndim, kernel, pool, batch_norm, n2v2):
    torch.manual_seed(0)
    net = UNet(ndim, 2, 1, n_first=4, kernel_size=kernel, pool=pool, batch_norm=batch_norm, residual=False,
               blur_pool=n2v2, top_skip=not n2v2).double()  # fmt: skip
    assert net.phase_plans is not None
    shape = (2, 2, 12, 20) if ndim == 2 else (2, 2, 8, 12, 16)
    x = torch.randn(shape, dtype=torch.float64)
    plain = outputs_and_gradients(net, x, phase=False)
    phase = outputs_and_gradients(net, x, phase=True)
    for want, got in zip(plain, phase, strict=True):  # the output, then every parameter's gradient
        assert torch.allclose(want, got, rtol=1e-9, atol=1e-9 * want.abs().max().item())


@pytest.mark.parametrize("n2v2", [False, True])
def test_traced_network_reproduces_the_phase_network(n2v2):
    torch.manual_seed(0)
    net = UNet(2, 1, 1, n_first=4, kernel_size=3, batch_norm=False, blur_pool=n2v2, top_skip=not n2v2).eval()
    assert net.phase_upsampling
    x = torch.randn(1, 1, 32, 48)
    with torch.no_grad():
        want = net(x)
        traced = torch.jit.trace(net, x, check_trace=False)
        got = traced(x)
    convolutions = [n for n in traced.inlined_graph.nodes() if n.kind() == "aten::_convolution"]
    assert len(convolutions) == sum(isinstance(m, torch.nn.Conv2d) for m in net.modules())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_phase_upsampling_in_bfloat16_channels_last_is_as_accurate_as_plain():
    torch.manual_seed(0)
    net = UNet(2, 1, 1, n_first=8, kernel_size=3, residual=False).to(memory_format=torch.channels_last)
    x = torch.randn(4, 1, 32, 32).contiguous(memory_format=torch.channels_last)
    exact = outputs_and_gradients(net, x, phase=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain, phase = (outputs_and_gradients(net, x, phase=p) for p in (False, True))
    for want, a, b in zip(exact, plain, phase, strict=True):
        err_plain, err_phase = ((t.float() - want).norm() / want.norm() for t in (a, b))
        assert err_phase < max(1.5 * err_plain, 0.005), (err_phase, err_plain)  # bfloat16 rounding, not a bug


def test_pooling_that_phases_cannot_express_falls_back_to_plain_upsampling():
    net = UNet(2, 1, 1, n_first=4, kernel_size=3, pool=(3, 3))
    assert net.phase_plans is None
    assert net(torch.zeros(1, 1, 18, 18)).shape == (1, 1, 18, 18)


@pytest.mark.parametrize(
    ("shape", "pool"), [((2, 3, 13, 18), (2, 2)), ((1, 2, 5, 9, 11), (1, 2, 2)), ((1, 2, 6, 8, 7), (2, 2, 2))]
)
def test_max_pool_without_gradients_equals_the_pooling_kernel(shape, pool):
    x = torch.randn(shape)
    if len(shape) == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    kernel = torch.nn.functional.max_pool2d if len(pool) == 2 else torch.nn.functional.max_pool3d
    with torch.no_grad():
        assert torch.equal(max_pool(x, pool), kernel(x, pool))  # odd sizes drop the last row, like the kernel


def test_blur_pool_is_a_blurred_running_maximum():
    x = torch.tensor([0.0, 1.0, 5.0, 2.0, 3.0, 3.0, 0.0, 4.0]).reshape(1, 1, 1, 8)
    # maxima of neighbours: 1 5 5 3 3 3 4 4; [1, 2, 1] / 4 at 0, 2, 4, 6 (edges repeated)
    want = torch.tensor([(1 + 2 * 1 + 5) / 4, (5 + 2 * 5 + 3) / 4, (3 + 2 * 3 + 3) / 4, (3 + 2 * 4 + 4) / 4])
    torch.testing.assert_close(blur_pool(x, (1, 2))[0, 0, 0], want)
    shifted = torch.roll(x, 1, dims=-1)  # a one-pixel shift moves blur pooling less than max pooling
    blur = (blur_pool(shifted, (1, 2)) - blur_pool(x, (1, 2))).abs().sum()
    plain = (max_pool(shifted, (1, 2)) - max_pool(x, (1, 2))).abs().sum()
    assert blur < plain


def test_network_per_channel_keeps_channels_apart():
    torch.manual_seed(0)
    net = build_unet(2, 2, 2, independent_channels=True, n_first=4, kernel_size=3, probabilistic=True)
    x = torch.randn(1, 2, 16, 16)
    with torch.no_grad():
        y = net(x)
        x2 = x.clone()
        x2[:, 1] += 10  # changing channel 1 leaves channel 0's mean and scale alone
        y2 = net(x2)
    assert y.shape == (1, 4, 16, 16)  # means, then scales
    torch.testing.assert_close(y2[:, [0, 2]], y[:, [0, 2]])
    assert not torch.allclose(y2[:, [1, 3]], y[:, [1, 3]])
    assert net.halo() == UNet(2, 1, 1, n_first=4, kernel_size=3).halo()
    with pytest.raises(ValueError, match="each channel to itself"):
        build_unet(2, 2, 1, independent_channels=True)
