import numpy as np
import pytest
import tifffile
import torch
from conftest import TINY, blobs

from carekit.config import Config, NetConfig
from carekit.data.axial import anisotropic_kernel, anisotropic_sigma, degrade, isotropic_pairs
from carekit.data.camera import resample_axis, subsample_and_interpolate, upsampled_positions
from carekit.errors import CarekitError
from carekit.io import read_spacing
from carekit.modes.isotropic import PLANES_MEMORY, AxialConfig, IsotropicCARE, combine, train_isotropic
from carekit.modes.upsampling import UpsamplingCARE


def spectrum(planes: np.ndarray, axis: int) -> np.ndarray:
    """Mean power spectrum along ``axis`` of a stack of 2D planes."""
    f = np.abs(np.fft.rfft(planes - planes.mean(), axis=axis)) ** 2
    other = tuple(i for i in range(planes.ndim) if i != (axis % planes.ndim))
    return f.mean(axis=other)


def gaussian_psf_volume(sz, sxy, size=25):
    r = np.arange(size) - size // 2
    zz, yy, xx = np.meshgrid(r, r, r, indexing="ij")
    psf = np.exp(-0.5 * (zz**2 / sz**2 + (yy**2 + xx**2) / sxy**2))
    return psf / psf.sum()


def identity_model(mode="isotropic", factor=3.0, channels=1, axes="ZYX"):
    """A residual network whose output layer is zero: it returns its input unchanged."""
    spatial = "YX" if mode == "isotropic" else "ZYX"
    config = Config(axes=axes, mode=mode, spatial=spatial, n_channel_in=channels, n_channel_out=channels,
                    net=NetConfig(n_first=4, kernel_size=3), axial=AxialConfig(factor=factor))  # fmt: skip
    model = (IsotropicCARE if mode == "isotropic" else UpsamplingCARE)(config)
    with torch.no_grad():
        model.net.head.weight.zero_()
        model.net.head.bias.zero_()
    return model


@pytest.mark.parametrize("factor", [1.0, 2.0, 4.0, 2.5, 10.2])
def test_upsampled_geometry(factor):
    pos = upsampled_positions(12, factor)
    assert pos[0] == 0 and pos[-1] <= 11 and 11 - pos[-1] < 1 / factor + 1e-9
    if float(factor).is_integer():
        np.testing.assert_allclose(pos[:: int(factor)], np.arange(12))
    ramp = np.arange(12, dtype=np.float32)[:, None]
    np.testing.assert_allclose(resample_axis(ramp, 0, pos)[:, 0], pos, atol=1e-5)


@pytest.mark.parametrize("factor", [3.0, 2.7])
def test_prediction_overlays_the_raw_stack(factor):
    """Output slice k lies at input position k / factor, for integer and fractional factors."""
    model = identity_model(factor=factor)
    z = np.arange(10, dtype=np.float32)
    vol = np.broadcast_to(z[:, None, None] * 10 + 5, (10, 24, 20)).copy()
    vol += np.random.default_rng(0).random(vol.shape).astype(np.float32) * 1e-3
    out = model.predict(vol, "ZYX", precision="float32")
    expected = upsampled_positions(10, factor) * 10 + 5
    assert out.shape == (len(expected), 24, 20)
    np.testing.assert_allclose(out.mean(axis=(1, 2)), expected, atol=1e-2)


def test_no_transposed_outputs():
    model = identity_model(factor=2.0)
    vol = np.random.default_rng(1).random((6, 20, 31)).astype(np.float32) * 100  # Y != X, no symmetry
    out = model.predict(vol, "ZYX", precision="float32")
    np.testing.assert_allclose(out, resample_axis(vol, 0, upsampled_positions(6, 2.0)), rtol=1e-4, atol=1e-3)
    # the same volume given as YXZ comes back as YXZ
    turned = model.predict(vol.transpose(1, 2, 0), "YXZ", precision="float32")
    np.testing.assert_allclose(turned, out.transpose(1, 2, 0), rtol=1e-4, atol=1e-3)


def record_budgets(monkeypatch, model) -> list:
    """The memory budget of every ``run_net`` call on ``model``, appended as they happen."""
    budgets, plain = [], model.run_net

    def spy(x, engine, n_tiles=None, memory=None, *args, **kwargs):
        budgets.append(memory)
        return plain(x, engine, n_tiles, memory, *args, **kwargs)

    monkeypatch.setattr(model, "run_net", spy)
    return budgets


@pytest.mark.parametrize("mode", ["isotropic", "upsampling"])
def test_planes_take_a_smaller_default_budget_than_plain_prediction(monkeypatch, mode):
    """The output volume is held whole beside the planes' activations."""
    model = identity_model(mode)
    budgets = record_budgets(monkeypatch, model)
    vol = np.random.default_rng(0).random((6, 24, 20)).astype(np.float32)
    model.predict(vol, "ZYX", precision="float32")
    model.predict(vol, "ZYX", precision="float32", memory=123 * 2**20)
    assert budgets[0] == PLANES_MEMORY < 1536 * 2**20 and budgets[-1] == 123 * 2**20


def test_upsampling_model_geometry():
    model = identity_model(mode="upsampling", factor=2.0)
    vol = np.random.default_rng(2).random((5, 16, 20)).astype(np.float32)
    out = model.predict(vol, "ZYX", precision="float32")
    np.testing.assert_allclose(out, resample_axis(vol, 0, upsampled_positions(5, 2.0)), rtol=1e-4, atol=1e-4)


def test_degraded_axis_loses_high_frequencies_only():
    plane = blobs((128, 128), seed=4, density=0.02, sigma=1.0)[None]
    out = degrade(plane, 4.0, sigma=2.0)
    assert out.shape == plane.shape
    fx, fy = spectrum(out[0], -1), spectrum(out[0], 0)
    gx = spectrum(plane[0], -1)
    high = slice(len(fx) // 2, None)
    assert fx[high].sum() < 0.15 * gx[high].sum()  # X lost most of its high frequencies
    assert fy[high].sum() > 0.3 * spectrum(plane[0], 0)[high].sum()  # Y kept much of them


def test_degraded_lateral_plane_has_the_spectrum_of_an_axial_one():
    """Simulate acquisition of an isotropic volume; degrade its lateral planes; compare with axial ones."""
    from scipy.ndimage import gaussian_filter

    truth = blobs((96, 96, 96), seed=7, density=0.003, sigma=1.0)
    sz, sxy, factor = 3.0, 1.0, 3.0
    acquired = gaussian_filter(truth, (sz, sxy, sxy))[::3]  # z blurred more, sampled 3x coarser
    axial = resample_axis(acquired, 0, upsampled_positions(acquired.shape[0], factor))  # Z' Y X
    xz = axial.transpose(1, 2, 0)  # planes (Y) of X x Z', z along the last axis
    lateral = degrade(acquired, factor, sigma=anisotropic_sigma(sz, sxy))  # Z Y X, degraded along X
    s_axial, s_lateral = spectrum(xz[:, 8:-8, 8:-8], -1), spectrum(lateral[:, 8:-8, 8:-8], -1)
    n = min(len(s_axial), len(s_lateral))
    a, b = s_axial[1:n] / s_axial[1:n].sum(), s_lateral[1:n] / s_lateral[1:n].sum()
    assert np.abs(np.cumsum(a) - np.cumsum(b)).max() < 0.05


def test_fractional_factor_pairs():
    stack = blobs((3, 1, 40, 50), seed=1)
    pairs = isotropic_pairs(stack, 2.5, sigma=1.0, peak_photons=20, read_sigma=1.0)
    assert len(pairs) == 6
    assert pairs[0].low.shape == pairs[0].high.shape == (1, 40, 50)
    assert pairs[1].low.shape == (1, 50, 40)  # the transposed plane, also degraded along its X
    same = subsample_and_interpolate(np.arange(10.0)[None], -1, 2.5)
    # linear data survive exactly up to the last kept sample (7.5), and are held constant beyond it
    np.testing.assert_allclose(same[0], [0, 1, 2, 3, 4, 5, 6, 7, 7.5, 7.5], atol=1e-5)


def test_measured_psf_gives_the_gaussian_anisotropic_part():
    k = anisotropic_kernel(gaussian_psf_volume(4.0, 1.5))
    r = np.arange(k.shape[0]) - k.shape[0] // 2
    var_axial = (k.sum(axis=0) * r**2).sum()
    var_lateral = (k.sum(axis=1) * r**2).sum()
    assert abs(np.sqrt(var_axial) - anisotropic_sigma(4.0, 1.5)) < 0.3
    assert var_lateral < 0.3


def test_combine_modes():
    a, b = np.array([4.0, -1.0]), np.array([1.0, 3.0])
    np.testing.assert_allclose(combine(a, b, "geometric"), [2.0, 0.0])
    np.testing.assert_allclose(combine(a, b, "arithmetic"), [2.5, 1.0])


@pytest.fixture(scope="module")
def iso_model(tmp_path_factory):
    stack = np.stack([blobs((8, 48, 56), seed=s, sigma=1.2) for s in (1, 2)], axis=1)  # Z C Y X
    folder = tmp_path_factory.mktemp("iso")
    return train_isotropic(stack, "ZCYX", 3.0, folder / "m", psf_sigma=(3.0, 1.0), epochs=1, steps_per_epoch=5,
                           patch_size=(32, 32), progress=False, **TINY)  # fmt: skip


def test_multichannel_isotropic_keeps_channels(iso_model):
    stack = np.stack([blobs((6, 40, 44), seed=s) for s in (5, 6)], axis=1)
    out = iso_model.predict(stack, "ZCYX", precision="float32")
    assert out.shape == (len(upsampled_positions(6, 3.0)), 2, 40, 44)
    assert iso_model.net.head.in_channels and iso_model.config.n_channel_in == 2


def test_isotropic_tiled_equals_untiled(iso_model):
    stack = np.stack([blobs((6, 40, 44), seed=s) for s in (7, 8)], axis=1)
    whole = iso_model.predict(stack, "ZCYX", precision="float32")
    tiled = iso_model.predict(stack, "ZCYX", precision="float32", n_tiles=(2, 3))
    np.testing.assert_allclose(tiled, whole, rtol=1e-4, atol=1e-4 * np.abs(whole).max())


def test_factor_below_one(tmp_path):
    with pytest.raises(CarekitError, match="factor must be at least 1"):
        train_isotropic(np.zeros((4, 32, 32)), "ZYX", 0.5, tmp_path / "m")


def test_psf_of_wrong_dimension(tmp_path):
    tifffile.imwrite(tmp_path / "psf.tif", np.ones((9, 9), np.float32))
    with pytest.raises(CarekitError, match="PSF must be a 3D ZYX stack"):
        train_isotropic(np.zeros((4, 32, 32)), "ZYX", 2.0, tmp_path / "m", psf=tmp_path / "psf.tif")


def test_stack_too_thin(tmp_path):
    with pytest.raises(CarekitError, match="too thin to train on"):
        train_isotropic(np.ones((4, 8, 64)), "ZYX", 2.0, tmp_path / "m")


def test_output_spacing_is_divided_by_factor(iso_model, tmp_path):
    from carekit.cli import main

    stack = np.stack([blobs((5, 32, 32), seed=s) for s in (1, 2)], axis=1).astype(np.float32)
    tifffile.imwrite(tmp_path / "in.tif", stack, metadata={"axes": "ZCYX", "spacing": {"Z": 1.2, "Y": 0.3, "X": 0.3}})
    assert main(["predict", "--model", str(iso_model.directory), "--input", str(tmp_path / "in.tif"),
                 "--output", str(tmp_path / "out.tif"), "--quiet"]) == 0  # fmt: skip
    assert read_spacing(tmp_path / "out.tif") == pytest.approx({"Z": 0.4, "Y": 0.3, "X": 0.3})
    assert tifffile.imread(tmp_path / "out.tif").shape[0] == len(upsampled_positions(5, 3.0))
