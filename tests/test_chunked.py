import json
import os
import signal

import numpy as np
import pytest
import tifffile
import torch
import zarr

from carekit import chunked
from carekit.axes import to_net
from carekit.blocks import Plan, window_bytes_per_voxel
from carekit.chunked import restore_chunked
from carekit.cli import main
from carekit.config import Config, NetConfig
from carekit.errors import CarekitError
from carekit.lazy import percentiles_chunked
from carekit.model import CARE
from carekit.normalize import percentiles
from carekit.omezarr import is_zarr, open_omezarr, write_omezarr

F32 = {"precision": "float32", "progress": False}


def tiny(axes: str, channels: int = 1, seed: int = 0) -> CARE:
    torch.manual_seed(seed)
    net = NetConfig(depth=1, n_first=4, kernel_size=3, n_conv=1)
    return CARE(Config(axes=axes, n_channel_in=channels, n_channel_out=channels, net=net))


def image(shape, seed=1, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).gamma(2, 50, size=shape).astype(dtype)


def read(path):
    array, axes, spacing = open_omezarr(path)
    return array[...], axes, spacing


def block_memory(model: CARE, core: int, ndim: int, channels: int = 1) -> int:
    """A budget for block windows of ``core`` pixels plus halo along each axis (uint16 or float32 input)."""
    return window_bytes_per_voxel(model, channels, 4) * (core + 2 * model.net.halo()[0]) ** ndim


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny 3D model in a folder (Dask workers load it from there), a ZYX OME-Zarr input and its restoration."""
    root = tmp_path_factory.mktemp("chunked")
    model = tiny("ZYX")
    model.save(root / "model")
    write_omezarr(root / "in.zarr", image((22, 50, 61)), "ZYX", spacing={"Z": 1.0, "Y": 0.25, "X": 0.25})
    restore_chunked(root / "model", root / "in.zarr", root / "here.zarr", memory=block_memory(model, 12, 3), **F32)
    return root, model, read(root / "here.zarr")[0]


# -- OME-Zarr ------------------------------------------------------------------------------------
def test_omezarr_round_trip_keeps_data_axes_and_spacing(tmp_path):
    data = image((5, 2, 30, 40))
    path = write_omezarr(tmp_path / "a.zarr", data, "ZCYX", spacing={"Z": 2.0, "Y": 0.5, "X": 0.5})
    back, axes, spacing = read(path)
    assert axes == "CZYX" and spacing == {"Z": 2.0, "Y": 0.5, "X": 0.5}  # stored in OME order
    np.testing.assert_array_equal(back, data.transpose(1, 0, 2, 3))
    meta = json.loads((path / ".zattrs").read_text())["multiscales"][0]
    assert meta["version"] == "0.4" and [a["type"] for a in meta["axes"]] == ["channel", "space", "space", "space"]
    assert meta["axes"][1]["unit"] == "micrometer" and (path / "0" / ".zarray").exists()
    assert is_zarr(path) and not is_zarr(tmp_path)


def test_reads_ome_ngff_0_5_from_zarr_v3(tmp_path):
    group = zarr.open_group(tmp_path / "v3.zarr", mode="w", zarr_format=3)
    group.create_array("s0", shape=(3, 16, 20), chunks=(1, 16, 20), dtype="uint16")[:] = 7
    axes = [{"name": n, "type": "space", "unit": "nanometer"} for n in "zyx"]
    transform = [{"type": "scale", "scale": [500.0, 100.0, 100.0]}]
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": [
        {"path": "s0", "coordinateTransformations": transform}]}]}  # fmt: skip
    array, found, spacing = open_omezarr(tmp_path / "v3.zarr")
    assert found == "ZYX" and array.shape == (3, 16, 20) and spacing == pytest.approx({"Z": 0.5, "Y": 0.1, "X": 0.1})
    assert isinstance(array, zarr.Array) and int(array[1, 2, 3]) == 7


def test_plain_zarr_array_needs_axes_and_bad_ome_axes_are_refused(tmp_path):
    zarr.create_array(tmp_path / "plain.zarr", shape=(8, 9), dtype="float32")[:] = image((8, 9))
    with pytest.raises(CarekitError, match="pass --axes"):
        open_omezarr(tmp_path / "plain.zarr")
    assert open_omezarr(tmp_path / "plain.zarr", "YX")[1] == "YX"
    path = write_omezarr(tmp_path / "b.zarr", image((4, 8, 9)), "ZYX")
    group = zarr.open_group(path, mode="r+")
    meta = group.attrs["multiscales"]
    meta[0]["axes"][0]["name"] = "angle"
    group.attrs["multiscales"] = meta
    with pytest.raises(CarekitError, match=r"b\.zarr: OME axis 'angle' is not supported"):
        open_omezarr(path)


# -- exact percentiles ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "data, axes, spatial",
    [
        (image((3, 37, 41)), "TYX", "YX"),
        (np.random.default_rng(2).integers(0, 4, (2, 30, 40, 3)).astype(np.uint16), "ZYXC", "ZYX"),  # many ties
        (np.full((20, 30), 7.5, np.float32), "YX", "YX"),
        (np.random.default_rng(3).normal(0, 1e3, (6, 17, 19)).astype(np.int16), "ZYX", "YX"),
        (np.r_[np.zeros(900), np.random.default_rng(4).normal(size=30), -np.ones(70)].reshape(1, 40, 25), "CYX", "YX"),
    ],
)
def test_percentiles_equal_numpy_exactly(data, axes, spatial, tmp_path):
    expected = percentiles(to_net(data, axes, spatial)[0], (2.0, 99.8))
    chunks = tuple(max(1, s // 3) for s in data.shape)
    stored = zarr.create_array(tmp_path / "p.zarr", shape=data.shape, chunks=chunks, dtype=data.dtype)
    stored[:] = data
    for source in (data, stored):
        lo, hi = percentiles_chunked(source, axes, spatial)
        assert lo.shape == expected[0].shape
        np.testing.assert_array_equal(lo, expected[0])
        np.testing.assert_array_equal(hi, expected[1])


def test_block_windows_mirror_the_end_like_numpy_pad():
    for size, grid in [(2, 8), (3, 4), (5, 4), (9, 8), (13, 2)]:
        plan = Plan((size, 1), (grid, 1), (grid, 0), (size, 1), (size, 1))
        padded = -(-size // grid) * grid
        for shape, mode in (((size, 1), "edge"), ((size, 4), "reflect")):
            plan = Plan(shape, (grid, 1), (grid, 0), shape, shape)
            maps = plan.window(((0, size), (0, shape[1])))
            np.testing.assert_array_equal(maps[0], np.pad(np.arange(size), (0, padded - size), mode=mode))


# -- restoration ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "axes, shape, net_axes, channels, core",
    [("YX", (96, 111), "YX", 1, 32), ("ZYX", (22, 50, 61), "ZYX", 1, 12), ("ZYX", (40, 30, 27), "ZYX", 1, 10),
     ("TYX", (2, 70, 45), "YX", 1, 16), ("CZYX", (2, 12, 40, 45), "ZYX", 2, 6), ("YXC", (61, 40, 2), "YX", 2, 12)],
)  # fmt: skip
def test_chunked_equals_in_memory_prediction(tmp_path, axes, shape, net_axes, channels, core):
    model = tiny(("C" if channels > 1 else "") + net_axes, channels)
    data = image(shape, dtype=np.uint16)
    expected = model.predict(data, axes, precision="float32")
    blocks = []
    memory = block_memory(model, core, len(net_axes), channels)
    out = restore_chunked(model, data, tmp_path / "out.zarr", axes=axes, memory=memory, on_block=blocks.append, **F32)
    restored, out_axes, _ = read(out)
    expected = np.moveaxis(expected, [axes.index(a) for a in out_axes], range(len(out_axes)))
    assert restored.shape == expected.shape and restored.dtype == np.float32
    assert np.abs(restored - expected).max() <= 1e-4 * np.ptp(expected)
    n_samples = np.prod([s for a, s in zip(axes, shape, strict=True) if a not in "C" + net_axes])
    cuts = {a: len({b.core[net_axes.index(a)] for b in blocks}) for a in net_axes}
    assert len(blocks) >= 4 * n_samples and sum(n > 1 for n in cuts.values()) >= 2, cuts  # several blocks per axis
    assert not (tmp_path / "out.zarr.partial").exists() and not (out / chunked.MARKERS).exists()


def test_zarr_input_with_spacing(saved):
    root, model, restored = saved
    expected = model.predict(read(root / "in.zarr")[0], "ZYX", precision="float32")
    assert read(root / "here.zarr")[1:] == ("ZYX", {"Z": 1.0, "Y": 0.25, "X": 0.25})
    assert np.abs(restored - expected).max() <= 1e-4 * np.ptp(expected)


def test_interrupted_run_resumes_without_recomputing(tmp_path, monkeypatch):
    model, data = tiny("YX"), image((2, 60, 70))
    options = {"axes": "TYX", "memory": block_memory(model, 24, 2), **F32}
    blocks = []
    reference = read(restore_chunked(model, data, tmp_path / "ref.zarr", on_block=blocks.append, **options))[0]
    calls = []
    compute = chunked.compute_block
    monkeypatch.setattr(chunked, "compute_block", lambda job, block: calls.append(block.name) or compute(job, block))

    def fail_after_5(block):
        if len(calls) == 5:
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        restore_chunked(model, data, tmp_path / "out.zarr", on_block=fail_after_5, **options)
    partial = tmp_path / "out.zarr.partial"
    first = set(calls)
    assert sorted(p.stem for p in (partial / chunked.MARKERS).iterdir()) == sorted(first)
    assert not (tmp_path / "out.zarr").exists()
    calls.clear()
    monkeypatch.setattr(chunked, "percentiles_chunked", lambda *a, **k: pytest.fail("percentiles recomputed"))
    out = restore_chunked(model, data, tmp_path / "out.zarr", **options)
    assert len(first) == 5 and not first & set(calls) and len(first) + len(calls) == len(blocks) == 16
    np.testing.assert_array_equal(read(out)[0], reference)


def test_refuses_existing_output_mismatched_partial_and_other_modes(tmp_path):
    model, data = tiny("YX"), image((40, 50))
    out = restore_chunked(model, data, tmp_path / "o.zarr", axes="YX", **F32)
    with pytest.raises(CarekitError, match=r"o\.zarr: already exists; pass --overwrite"):
        restore_chunked(model, data, out, axes="YX", **F32)
    restore_chunked(model, data * 2, out, axes="YX", overwrite=True, **F32)
    (tmp_path / "p.zarr.partial").mkdir()
    with pytest.raises(RuntimeError):
        restore_chunked(model, data, tmp_path / "p.zarr", axes="YX", on_block=stop, **F32)
    with pytest.raises(CarekitError, match=r"p\.zarr\.partial: an unfinished run with a different model, shape"):
        restore_chunked(tiny("YX", seed=5), image((40, 60)), tmp_path / "p.zarr", axes="YX", **F32)
    model.config.mode = "isotropic"
    with pytest.raises(CarekitError, match="supports denoise, n2v, n2n and synthetic models, not isotropic"):
        restore_chunked(model, data, tmp_path / "q.zarr", axes="YX", **F32)


def stop(block):
    raise RuntimeError("stop")


# -- Dask ----------------------------------------------------------------------------------------
def test_dask_local_cluster_matches_single_process(saved, tmp_path):
    root, model, here = saved
    tifffile.imwrite(tmp_path / "in.tif", read(root / "in.zarr")[0])  # uncompressed: workers map it too
    mapped = tifffile.memmap(tmp_path / "in.tif", mode="r")
    out = restore_chunked(root / "model", mapped, tmp_path / "dask.zarr", axes="ZYX", dask="local",
                          memory=block_memory(model, 12, 3), **F32)  # fmt: skip
    np.testing.assert_array_equal(read(out)[0], here)


def test_dask_survives_a_killed_worker(saved, tmp_path):
    from distributed import Client, LocalCluster

    root, model, here = saved
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with cluster, Client(cluster) as client:
        victim, pid = sorted(client.run(os.getpid).items())[0]
        done = []

        def kill_after_2(block):
            done.append(block)
            if len(done) == 2:
                os.kill(pid, signal.SIGKILL)  # a crash mid-run: its running and queued blocks go elsewhere

        out = restore_chunked(root / "model", root / "in.zarr", tmp_path / "dask.zarr", dask=cluster.scheduler_address,
                              memory=block_memory(model, 12, 3), on_block=kill_after_2, **F32)  # fmt: skip
        assert victim not in client.scheduler_info()["workers"] and len(done) == 16
    np.testing.assert_array_equal(read(out)[0], here)


# -- command line --------------------------------------------------------------------------------
def test_cli_predicts_ome_zarr_and_tiff_to_ome_zarr(saved, tmp_path, capsys):
    root, model, _ = saved
    expected = model.predict(read(root / "in.zarr")[0], "ZYX", precision="float32")
    tifffile.imwrite(tmp_path / "in.tif", read(root / "in.zarr")[0], metadata={"axes": "ZYX"})
    for source in (root / "in.zarr", tmp_path / "in.tif"):
        out = tmp_path / f"{source.suffix[1:]}.zarr"
        argv = ["predict", "--model", str(root / "model"), "--input", str(source), "--output", str(out)]
        assert main([*argv, "--precision", "float32", "--quiet"]) == 0
        restored, axes, _ = read(out)
        assert axes == "ZYX" and np.abs(restored - expected).max() <= 1e-4 * np.ptp(expected)
    assert main([*argv, "--quiet"]) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main([*argv, "--tta"]) == 2
    assert "--tta cannot be combined with OME-Zarr" in capsys.readouterr().err
