import types

import numpy as np
import pytest
import torch

from carekit import tiling as predict
from carekit.config import Config, NetConfig
from carekit.engine import Engine, choose_engine
from carekit.model import CARE
from carekit.nets.unet import UNet
from carekit.tiling import (
    CPU_MAX_MEMORY,
    DEFAULT_MEMORY,
    GPU_MAX_MEMORY,
    auto_tiles,
    available_memory,
    default_memory,
    predict_tiled,
    spans,
)


def tiled(net, x, n_tiles):
    return predict_tiled(
        net.eval(),
        x,
        choose_engine("cpu", "float32"),
        grid=net.divisor(),
        halo=net.halo(),
        bytes_per_voxel=net.bytes_per_voxel(),
        n_tiles=n_tiles,
    )


@pytest.mark.parametrize("n_tiles", [(2, 2), (3, 4), (5, 1)])
def test_tiled_equals_untiled_2d(n_tiles):
    torch.manual_seed(0)
    net = UNet(2, 1, 1, n_first=8, kernel_size=5)
    x = np.random.default_rng(0).random((2, 1, 150, 171)).astype(np.float32)
    whole = tiled(net, x, (1, 1))
    assert whole.shape == x.shape
    assert np.abs(tiled(net, x, n_tiles) - whole).max() < 1e-4


def test_tiled_equals_untiled_3d_multichannel():
    torch.manual_seed(0)
    net = UNet(3, 2, 3, n_first=4, kernel_size=3)
    x = np.random.default_rng(1).random((1, 2, 22, 50, 61)).astype(np.float32)
    whole = tiled(net, x, (1, 1, 1))
    assert whole.shape == (1, 3, 22, 50, 61)
    assert np.abs(tiled(net, x, (2, 2, 3)) - whole).max() < 1e-4


def test_spans_cover_every_pixel_once():
    for size, n in [(128, 3), (64, 1), (1000, 7)]:
        covered = np.zeros(size, int)
        for s in spans(size, n, 16, 4):
            assert s.start % 4 == 0 and s.start <= s.core_start and s.core_stop <= s.start + s.length <= size
            covered[s.core_start : s.core_stop] += 1
        assert (covered == 1).all()


def test_auto_tiles_fit_the_budget_and_do_not_split_needlessly():
    assert auto_tiles((256, 256), (20, 20), (4, 4), 10**9) == (1, 1)
    n = auto_tiles((2048, 2048), (52, 52), (4, 4), 600 * 600)
    windows = [min(2048, int(np.ceil(2048 / k / 4)) * 4 + 104) for k in n]
    assert np.prod(windows) <= 600 * 600


@pytest.mark.parametrize(("free_gib", "expected_gib"), [(80, 8), (16, 4), (2, 1.5)])
def test_default_budget_is_a_share_of_free_gpu_memory(monkeypatch, free_gib, expected_gib):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(free_gib * 2**30), 80 * 2**30))
    gpu = Engine(torch.device("cuda"), "bfloat16")
    assert default_memory(gpu) == int(expected_gib * 2**30)
    assert default_memory(gpu) <= GPU_MAX_MEMORY


@pytest.mark.parametrize(("available_gib", "expected_gib"), [(64, 5), (12, 3), (4, 1.5)])
def test_default_budget_on_cpu_is_a_share_of_available_memory(monkeypatch, available_gib, expected_gib):
    monkeypatch.setattr(predict, "available_memory", lambda: int(available_gib * 2**30))
    cpu = choose_engine("cpu", "float32")
    assert default_memory(cpu) == int(expected_gib * 2**30)
    assert DEFAULT_MEMORY <= default_memory(cpu) <= CPU_MAX_MEMORY
    # the call's whole-image arrays count against the same share, down to the least default
    whole = 2**30
    assert default_memory(cpu, host_arrays=whole) == int(max(DEFAULT_MEMORY, expected_gib * 2**30 - whole))


def test_large_inputs_leave_less_for_windows(monkeypatch):
    monkeypatch.setattr(predict, "available_memory", lambda: 64 * 2**30)  # the 5 GiB cap applies
    budgets = []
    real = predict.auto_tiles

    def record(size, halo, grid, voxels):
        budgets.append(voxels)
        return real(size, halo, grid, voxels)

    monkeypatch.setattr(predict, "auto_tiles", record)
    cpu = choose_engine("cpu", "float32")
    first = []  # the memory budget (later calls split 2D windows further for the cache)
    for shape in ((1, 1, 64, 64), (1, 1, 4096, 4096)):
        budgets.clear()
        predict_tiled(lambda t: t, np.zeros(shape, np.float32), cpu, grid=(4, 4), halo=(0, 0), bytes_per_voxel=1)
        first.append(budgets[0])
    assert first == [CPU_MAX_MEMORY - 2 * 64 * 64 * 4, CPU_MAX_MEMORY - 2 * 4096 * 4096 * 4]


def limits(folder, limit, used, version="v2"):
    folder.mkdir(parents=True, exist_ok=True)
    names = {"v2": ("memory.max", "memory.current"), "v1": ("memory.limit_in_bytes", "memory.usage_in_bytes")}[version]
    (folder / names[0]).write_text(f"{limit}\n")
    (folder / names[1]).write_text(f"{used}\n")


def test_available_memory_stays_within_the_tightest_cgroup_limit(tmp_path, monkeypatch):
    free = 3 * 2**30  # the system's available memory, held still while the limits change
    monkeypatch.setattr("carekit.hardware.psutil.virtual_memory", lambda: types.SimpleNamespace(available=free))
    assert available_memory(tmp_path, "") == free
    (tmp_path / "cgroup.controllers").write_text("memory\n")
    limits(tmp_path / "job" / "step", "max", 2**30)
    assert available_memory(tmp_path, "0::/job/step\n") == free  # no limit anywhere
    limits(tmp_path / "job", 2**30 + 2**28, 2**30)  # the job's limit binds its step too
    assert available_memory(tmp_path, "0::/job/step\n") == min(free, 2**28)
    limits(tmp_path / "job", 2**30, 2**31)
    assert available_memory(tmp_path, "0::/job/step\n") == 0


def test_available_memory_reads_cgroup_v1_and_ignores_its_unlimited_value(tmp_path):
    membership = "5:cpu,cpuacct:/slurm/job\n4:memory:/slurm/job\n0::/\n"
    limits(tmp_path / "memory" / "slurm" / "job", 9223372036854771712, 2**30, "v1")
    free = available_memory(tmp_path, membership)
    limits(tmp_path / "memory" / "slurm", 2**30 + 2**29, 2**30, "v1")
    assert available_memory(tmp_path, membership) == min(free, 2**29)


def test_model_predict_tiles_and_keeps_axes():
    torch.manual_seed(0)
    config = Config(axes="YX", net=NetConfig(n_first=8, kernel_size=3))
    model = CARE(config)
    img = np.random.default_rng(2).gamma(2, 50, size=(3, 70, 90)).astype(np.float32)  # X Y T, unusual order
    img = img.transpose(2, 1, 0)  # T... keep a shuffled layout: (90, 70, 3) as X Y T
    out = model.predict(img, "XYT", precision="float32")
    assert out.shape == img.shape and out.dtype == np.float32
    out_tiled = model.predict(img, "XYT", precision="float32", n_tiles=(3, 2))
    np.testing.assert_allclose(out_tiled, out, rtol=1e-4, atol=1e-3)


def test_test_time_augmentation_averages_the_dihedral_views():
    torch.manual_seed(0)
    model = CARE(Config(axes="YX", net=NetConfig(n_first=8, kernel_size=3)))
    img = np.random.default_rng(3).gamma(2, 50, size=(40, 56)).astype(np.float32)
    plain = model.predict(img, "YX", precision="float32")
    averaged = model.predict(img, "YX", precision="float32", tta=True)
    views = [np.rot90(model.predict(np.ascontiguousarray(np.rot90(img, k)), "YX", precision="float32"), -k)
             for k in range(4)]  # fmt: skip
    assert averaged.shape == img.shape and not np.allclose(averaged, plain)
    # the mean over all 8 views equals the mean of the 4 rotations and the 4 flipped rotations
    flipped = [np.fliplr(np.rot90(model.predict(np.ascontiguousarray(np.rot90(np.fliplr(img), k)), "YX",
                                                precision="float32"), -k)) for k in range(4)]  # fmt: skip
    np.testing.assert_allclose(averaged, np.mean(views + flipped, axis=0), rtol=1e-5, atol=1e-3)


def test_large_2d_windows_on_cpu_are_cut_to_cache_size_at_a_bounded_halo_cost():
    halo, grid = (32, 32), (4, 4)
    n = predict.cache_tiles((2048, 2048), halo, grid, (1, 1))
    windows = predict.window_sizes((2048, 2048), halo, grid, n)
    assert np.prod(windows) <= predict.CPU_LARGE and n != (1, 1)
    assert predict.recomputed((2048, 2048), halo, grid, n) <= predict.CPU_OVERHEAD
    assert predict.cache_tiles((512, 512), halo, grid, (1, 1)) == (1, 1)  # small images stay whole
    # a wide halo stops the cut early: its windows would recompute too much
    wide = predict.cache_tiles((2048, 2048), (52, 52), grid, (1, 1))
    assert np.prod(predict.window_sizes((2048, 2048), (52, 52), grid, wide)) > np.prod(windows)


def test_bfloat16_prediction_on_cpu_runs_large_2d_images_in_cache_sized_windows_and_the_rest_by_memory():
    seen = []

    def forward(t):
        seen.append(tuple(t.shape))
        return t

    bf16, f32 = Engine(torch.device("cpu"), "bfloat16"), Engine(torch.device("cpu"), "float32")
    image = np.zeros((1, 1, 2048, 2048), np.float32)
    predict_tiled(forward, image, bf16, grid=(4, 4), halo=(32, 32), bytes_per_voxel=8)
    assert len(seen) > 1 and all(s[0] * s[2] * s[3] <= predict.CPU_LARGE for s in seen)
    seen.clear()
    predict_tiled(forward, image, f32, grid=(4, 4), halo=(32, 32), bytes_per_voxel=8)
    assert seen == [(1, 1, 2048, 2048)]  # float32: one window, the memory budget holds it
    seen.clear()
    predict_tiled(forward, np.zeros((1, 1, 32, 256, 256), np.float32), bf16, grid=(4, 4, 4), halo=(32, 32, 32),
                  bytes_per_voxel=8)  # fmt: skip
    assert seen == [(1, 1, 32, 256, 256)]  # a volume: one window too


def test_windows_run_by_several_workers_come_back_in_order_and_restore_the_threads():
    before = torch.get_num_threads()
    ran = []

    def run(chunk):
        ran.append((chunk[0], torch.get_num_threads()))
        return np.full((1,), chunk[0], np.float32)

    chunks = [[k] for k in range(9)]
    got = list(predict.window_results(run, chunks, workers=2))
    assert [c for c, _ in got] == chunks and [float(r[0]) for _, r in got] == list(range(9))
    assert all(n == 1 for _, n in ran)  # each worker with a single torch thread
    assert torch.get_num_threads() == before


def test_a_cancelled_prediction_stops_its_workers():
    started = []

    def run(chunk):
        started.append(chunk[0])
        return np.zeros(1, np.float32)

    results = predict.window_results(run, [[k] for k in range(50)], workers=2)
    next(results)
    results.close()  # what a progress callback that raises does to the loop over the results
    assert len(started) <= 5  # the windows ahead of the workers, not all fifty


def test_bfloat16_windows_on_several_workers_equal_one_worker(monkeypatch):
    torch.manual_seed(0)
    net = UNet(2, 1, 1, n_first=8, kernel_size=3).eval()
    x = np.random.default_rng(0).random((1, 1, 1024, 1024)).astype(np.float32)
    bf16 = Engine(torch.device("cpu"), "bfloat16")
    kwargs = dict(grid=net.divisor(), halo=net.halo(), bytes_per_voxel=net.bytes_per_voxel())
    pooled = predict_tiled(net, x, bf16, **kwargs)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    single = predict_tiled(net, x, bf16, **kwargs)
    assert np.abs(pooled - single).max() < 1e-3  # same windows, same places (bfloat16 rounding aside)
