import numpy as np
import pytest
import tifffile
import torch
from conftest import TINY

from carekit.cli import main
from carekit.data.camera import poisson_gaussian, to_photons
from carekit.data.surfaces import surface_projection, surface_stack
from carekit.engine import choose_engine
from carekit.errors import CarekitError
from carekit.metrics import evaluate
from carekit.modes.projection import train_projection
from carekit.nets.projector import ProjectionNet
from carekit.tiling import predict_tiled

# the 3D projection part is the cost: keep it small, and learn fast (with 4 features it learnt
# the surface in only some of 6 training seeds; with 8, in all of them, 4.8-5.7 dB over max)
FAST = {**TINY, "proj_features": 8, "batch_size": 4, "learning_rate": 4e-3, "epochs": 6, "steps_per_epoch": 40}


def tilted(shape=(16, 64, 80), slope=0.1, offset=3.0):
    _, ny, nx = shape
    return offset + slope * np.broadcast_to(np.arange(nx, dtype=np.float32), (ny, nx))


def low_snr(stack, peak=4.0, seed=1):
    return poisson_gaussian(to_photons(stack, peak), np.random.default_rng(seed), read_sigma=1.0)


def test_generator_is_reproducible_and_consistent():
    a = surface_stack((12, 40, 48), np.random.default_rng(5))
    b = surface_stack((12, 40, 48), np.random.default_rng(5))
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)
    stack, truth, height = a
    assert stack.shape == (12, 40, 48) and truth.shape == height.shape == (40, 48)
    assert height.min() >= 0 and height.max() <= 11
    # the stack is brightest near the surface: sampling it at the true height gives the texture
    zi = np.clip(np.round(height).astype(int), 0, 11)
    on_surface = np.take_along_axis(stack, zi[None], axis=0)[0]
    assert np.corrcoef(on_surface.ravel(), truth.ravel())[0, 1] > 0.8


def test_classical_projection_finds_a_tilted_plane():
    h = tilted()
    stack, truth, _ = surface_stack((16, 64, 80), np.random.default_rng(0), height=h, haze=0.2)
    noisy = low_snr(stack, peak=20)
    image, height = surface_projection(noisy)
    assert np.sqrt(np.mean((height - h)[8:-8, 8:-8] ** 2)) < 1.0
    assert evaluate(image, truth)["psnr"] > evaluate(noisy.max(axis=0), truth)["psnr"] + 0.5


def test_network_shapes_and_tiling():
    torch.manual_seed(0)
    net = ProjectionNet(2, 1, n_first=8, kernel_size=3).eval()
    x = np.random.default_rng(0).random((1, 2, 7, 52, 61)).astype(np.float32)

    def run(n_tiles):
        return predict_tiled(lambda t: net(t, with_height=True), x, choose_engine("cpu", "float32"),
                             grid=net.divisor(), halo=net.halo(), bytes_per_voxel=net.bytes_per_pixel(7),
                             n_tiles=n_tiles)  # fmt: skip

    whole = run((1, 1))
    assert whole.shape == (1, 2, 52, 61)  # one restored channel + the height map, Z removed
    assert whole[:, 1].min() >= 0 and whole[:, 1].max() <= 6
    assert np.abs(run((3, 2)) - whole).max() < 1e-4


def test_pooled_scores_tile_exactly_and_cost_a_fraction():
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    net = ProjectionNet(1, 1, proj_pool=4, n_first=8, kernel_size=3).eval()
    x = np.random.default_rng(1).random((1, 1, 6, 100, 70)).astype(np.float32)

    def run(n_tiles):
        return predict_tiled(lambda t: net(t, with_height=True), x, choose_engine("cpu", "float32"),
                             grid=net.divisor(), halo=net.halo(), bytes_per_voxel=net.bytes_per_pixel(6),
                             n_tiles=n_tiles)  # fmt: skip

    assert np.abs(run((3, 2)) - run((1, 1))).max() < 1e-4
    flops = {}
    for pool in (1, 4):
        with FlopCounterMode(display=False) as counter:
            ProjectionNet(1, 1, proj_pool=pool, n_first=8, kernel_size=3)(torch.rand(1, 1, 6, 32, 32))
        flops[pool] = counter.get_flop_counts()["ProjectionNet.project"]
    assert sum(flops[4].values()) * 10 < sum(flops[1].values())  # 16x fewer voxels


def test_old_model_folders_keep_full_resolution_scores():
    from carekit.config import Config

    config = Config(axes="ZYX", mode="projection", spatial="YX", projection={"depth": 2, "n_first": 8,
                    "kernel_size": 3})  # as written before the pooling existed  # fmt: skip
    assert config.projection.pool == 1
    assert Config.from_dict(config.to_dict()).projection.pool == 1
    with pytest.raises(CarekitError, match="projection pooling must be 1, 2, 4 or 8"):
        Config(axes="ZYX", mode="projection", spatial="YX", projection={"pool": 3})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    rng = np.random.default_rng(3)
    stacks, truths = [], []
    for _ in range(3):
        stack, truth, _ = surface_stack((12, 64, 96), rng)
        stacks.append(low_snr(stack, seed=int(rng.integers(1000))))
        truths.append(truth)
    folder = tmp_path_factory.mktemp("proj")
    model = train_projection(stacks, truths, "ZYX", folder / "m", patch_size=(32, 32), progress=False, **FAST)
    return model


def test_tiny_training_beats_max_projection(trained):
    stack, truth, _ = surface_stack((12, 64, 96), np.random.default_rng(42))
    noisy = low_snr(stack, seed=43)
    restored = trained.predict(noisy, "ZYX", precision="float32")
    assert restored.shape == truth.shape
    care, maxproj = evaluate(restored, truth)["psnr"], evaluate(noisy.max(axis=0), truth)["psnr"]
    assert care > maxproj + 2.5, (care, maxproj)
    assert trained.config.projection.pool == 4  # new models score laterally averaged stacks


def test_height_map_follows_a_tilted_plane(tmp_path):
    rng = np.random.default_rng(7)
    stacks, truths = [], []
    for slope in (0.08, -0.08, 0.05):
        h = tilted((16, 64, 96), slope, offset=4.0 if slope > 0 else 11.0)
        stack, truth, _ = surface_stack((16, 64, 96), rng, height=h, haze=0.3)
        stacks.append(low_snr(stack, peak=10, seed=int(rng.integers(1000))))
        truths.append(truth)
    model = train_projection(stacks, truths, "ZYX", tmp_path / "m", patch_size=(32, 32), progress=False, **FAST)
    h = tilted((16, 64, 96), 0.06, offset=5.0)
    stack, _, _ = surface_stack((16, 64, 96), np.random.default_rng(8), height=h, haze=0.3)
    _, height = model.predict(low_snr(stack, peak=10, seed=9), "ZYX", precision="float32", return_height=True)
    assert height.shape == h.shape
    assert np.sqrt(np.mean((height - h)[8:-8, 8:-8] ** 2)) < 1.0


def test_sizes_not_divisible_are_padded(trained):
    stack, _, _ = surface_stack((12, 37, 53), np.random.default_rng(1))
    assert trained.predict(low_snr(stack), "ZYX").shape == (37, 53)


def test_two_d_input_is_refused(trained):
    with pytest.raises(CarekitError, match="no Z; projection needs 3D input stacks"):
        trained.predict(np.zeros((32, 32), np.float32), "YX")


def test_mismatched_target_shape(tmp_path):
    with pytest.raises(CarekitError, match="do not match; the target must be the stack's YX size"):
        train_projection(np.zeros((8, 32, 32)), np.zeros((32, 30)), "ZYX", tmp_path / "m")
    with pytest.raises(CarekitError, match="should be 2D with axes YX"):
        train_projection(np.zeros((8, 32, 32)), np.zeros((8, 32, 32)), "ZYX", tmp_path / "m")


def test_cli_writes_2d_image_and_height_map(trained, tmp_path, capsys):
    stack, _, _ = surface_stack((12, 40, 48), np.random.default_rng(2))
    tifffile.imwrite(tmp_path / "s.tif", low_snr(stack), metadata={"axes": "ZYX"})
    code = main(["predict", "--model", str(trained.directory), "--input", str(tmp_path / "s.tif"),
                 "--output", str(tmp_path / "p.tif"), "--height-map", str(tmp_path / "h.tif"), "--quiet"])  # fmt: skip
    assert code == 0
    assert tifffile.imread(tmp_path / "p.tif").shape == (40, 48)
    height = tifffile.imread(tmp_path / "h.tif")
    assert height.shape == (40, 48) and height.min() >= 0 and height.max() <= 11


def test_bfloat16_channels_last_runs_the_mixed_2d_3d_network():
    from carekit.engine import Engine

    net = Engine(torch.device("cpu"), "bfloat16").prepare(ProjectionNet(1, 1, n_first=4, kernel_size=3).eval())
    x = torch.rand(1, 1, 6, 32, 32)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert net(x, with_height=True).shape == (1, 2, 32, 32)
