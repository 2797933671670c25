"""Noise2Void and Noise2Noise: training on noisy images alone, in 2D, 3D and with several channels."""

import numpy as np
import pytest
import tifffile
from conftest import TINY, blobs, noisy

import carekit
from carekit.baselines import mean_psnr
from carekit.cli import main
from carekit.data.camera import poisson_gaussian
from carekit.errors import CarekitError
from carekit.metrics import evaluate
from carekit.modes.n2n import train_n2n
from carekit.modes.n2v import fit_blend, train_n2v

# blind spots learn from few pixels per patch: more of them, and a short run, for tests
FAST_N2V = {**TINY, "masked_fraction": 0.03, "progress": False}


@pytest.fixture(scope="module")
def n2v_2d(tmp_path_factory):
    clean = blobs((2, 96, 96), seed=3, density=0.01)
    low = noisy(clean, peak=4)
    folder = tmp_path_factory.mktemp("n2v") / "m"
    # blind spots learn slowly (the loss counts a few pixels against their noise): 480 steps, where
    # CARE and Noise2Noise need 160, for the tiny network to pass the 3 dB mark
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CAREKIT_THREADS", "2")  # the same sums whatever the load (short runs vary)
        model = train_n2v(low, "SYX", folder, epochs=12, steps_per_epoch=40, patch_size=(32, 32), **FAST_N2V)
    return model, low, clean


def gain(model, low, clean, axes) -> float:
    """PSNR gain of the restoration over the input, dB (per plane for stacks of 2D samples)."""
    score = mean_psnr if axes.startswith("S") else lambda a, b: evaluate(a, b)["psnr"]
    return score(model.predict(low, axes), clean) - score(low, clean)


def test_n2v_denoises_the_images_it_trained_on(n2v_2d):
    model, low, clean = n2v_2d
    assert gain(model, low, clean, "SYX") > 3.0
    c = model.config
    assert (c.mode, c.net.blur_pool, c.net.top_skip, c.net.residual, c.train.loss) == ("n2v", True, False, False, "mse")
    assert "blur pooling, no top skip" in model.summary()


def test_n2v_output_stays_in_input_units(n2v_2d):
    model, low, _ = n2v_2d
    out = model.predict(low, "SYX")
    assert abs(out.mean() - low.mean()) < 0.05 * low.mean()


def test_n2v_3d(tmp_path, monkeypatch):
    clean = blobs((16, 64, 64), seed=5, density=0.01)  # wide enough to hold out a validation slab of a patch
    low = noisy(clean, peak=4)
    # without the top skip a 3D network learns more slowly than a 2D one: 600 steps at a higher rate
    monkeypatch.setenv("CAREKIT_THREADS", "2")  # the same sums whatever the load
    model = train_n2v(low, "ZYX", tmp_path / "m", epochs=20, steps_per_epoch=30, patch_size=(8, 32, 32),
                      **{**FAST_N2V, "learning_rate": 4e-3})  # fmt: skip
    assert model.config.spatial == "ZYX"
    assert gain(model, low, clean, "ZYX") > 1.5


@pytest.mark.parametrize("independent", [False, True])
def test_n2v_several_channels_jointly_or_each_alone(tmp_path, independent):
    clean = np.stack([blobs((96, 96), seed=7, density=0.01), blobs((96, 96), seed=8, density=0.01)])
    low = noisy(clean, peak=4)  # CYX
    # 320 steps, as the 2D fixture's 480 for the same reason: at 120 each channel gained only 1.4 dB
    model = train_n2v(low, "CYX", tmp_path / "m", epochs=8, steps_per_epoch=40, patch_size=(32, 32),
                      independent_channels=independent, **FAST_N2V)  # fmt: skip
    members = getattr(model.net, "members", None)
    assert (members is not None and len(members) == 2) == independent
    out = model.predict(low, "CYX")
    for c in range(2):
        assert evaluate(out[c], clean[c])["psnr"] > evaluate(low[c], clean[c])["psnr"] + 2.0


def test_n2v_time_lapse_from_files_with_struct_mask(tmp_path):
    movie = noisy(blobs((3, 64, 64), seed=9, density=0.01), peak=4)
    tifffile.imwrite(tmp_path / "movie.tif", movie, metadata={"axes": "TYX"})
    model = train_n2v(tmp_path / "movie.tif", None, tmp_path / "m", epochs=1, steps_per_epoch=5,
                      patch_size=(32, 32), struct_mask="x:2", **FAST_N2V)  # fmt: skip
    assert model.config.axes == "TYX"
    assert model.config.n2v.struct_mask == [[1, 1, 1, 1, 1]]
    again = carekit.load(tmp_path / "m")
    np.testing.assert_array_equal(again.predict(movie), model.predict(movie))


def test_n2v_refuses_what_it_cannot_do(tmp_path):
    low = noisy(blobs((64, 64)))
    with pytest.raises(CarekitError, match="needs --input"):
        carekit.app.train("n2v", tmp_path / "a", axes="YX")
    with pytest.raises(CarekitError, match="axes"):
        train_n2v(low, None, tmp_path / "b")
    with pytest.raises(CarekitError, match="no distribution"):
        train_n2v(low, "YX", tmp_path / "c", probabilistic=True, **FAST_N2V)
    with pytest.raises(CarekitError, match="struct mask"):
        train_n2v(low, "YX", tmp_path / "d", struct_mask=[[1, 1]], **FAST_N2V)


def test_n2v_cli_train_and_predict(tmp_path, capsys):
    low = noisy(blobs((2, 64, 64), seed=4), peak=4)
    tifffile.imwrite(tmp_path / "noisy.tif", low)
    fast = ["--epochs", "1", "--steps-per-epoch", "5", "--n-first", "8", "--patch-size", "32,32", "--quiet",
            "--precision", "float32"]  # fmt: skip
    argv = ["train", "--mode", "n2v", "--input", str(tmp_path / "noisy.tif"), "--axes", "SYX", "--model"]
    assert main([*argv, str(tmp_path / "m"), "--struct-mask", "y:1", "--masked-fraction", "0.01", *fast]) == 0
    assert "n2v" in capsys.readouterr().out
    out = tmp_path / "restored.tif"
    assert main(["predict", "--model", str(tmp_path / "m"), "--input", str(tmp_path / "noisy.tif"), "--output",
                 str(out), "--tta", "--quiet"]) == 0  # fmt: skip
    assert tifffile.imread(out).shape == low.shape
    assert main([*argv, str(tmp_path / "bad"), "--struct-mask", "diagonal", *fast]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("carekit: error: --struct-mask diagonal") and "\n" not in err


def test_n2n_from_two_acquisitions_and_from_adjacent_frames(tmp_path):
    clean = blobs((2, 96, 96), seed=3, density=0.01)
    first, second = noisy(clean, peak=4, seed=1), noisy(clean, peak=4, seed=2)
    model = train_n2n(first, second, "SYX", tmp_path / "a", epochs=4, steps_per_epoch=40, patch_size=(32, 32),
                      progress=False, **TINY)  # fmt: skip
    assert model.config.train.loss == "mse"
    assert gain(model, first, clean, "SYX") > 3.0
    movie = np.stack([noisy(clean[0], peak=4, seed=s) for s in range(4)])  # a static sample, 4 frames
    model = train_n2n(None, None, "TYX", tmp_path / "b", frames=movie, epochs=1, steps_per_epoch=5,
                      patch_size=(32, 32), progress=False, **TINY)  # fmt: skip
    assert model.config.axes == "TYX"
    with pytest.raises(CarekitError, match="need a T"):
        train_n2n(None, None, "SYX", tmp_path / "c", frames=first)
    with pytest.raises(CarekitError, match="not both"):
        carekit.app.train("n2n", tmp_path / "d", low=first, high=second, input=movie, axes="SYX")


def test_n2v_model_restores_out_of_core_as_in_memory(n2v_2d, tmp_path):
    from carekit.chunked import restore_chunked
    from carekit.omezarr import open_omezarr

    model, low, _ = n2v_2d
    image = np.concatenate([low[0], low[1]], axis=1)  # 96 x 192
    tifffile.imwrite(tmp_path / "in.tif", image)
    out = restore_chunked(model, tmp_path / "in.tif", tmp_path / "out.zarr", axes="YX", memory=2**20,
                          precision="float32", progress=False)  # fmt: skip
    blocks = open_omezarr(out)[0][...]
    np.testing.assert_allclose(blocks, model.predict(image, "YX", precision="float32"), rtol=1e-4, atol=1e-4)


def test_n2v_demo_trains_on_noisy_slices_only(tmp_path, monkeypatch, capsys):
    from carekit import demo

    monkeypatch.setattr(demo, "tuned_nlm", lambda noisy, truth: (noisy, {}))  # the oracle's search is slow
    monkeypatch.setattr(demo, "train_n2v", lambda images, axes, folder, **kw: seen.append(images) or train_n2v(
        images[:4], axes, folder, **{**kw, "n_first": 4, "patch_size": (32, 32)}))  # fmt: skip
    seen = []
    metrics = demo.run(tmp_path / "out", mode="n2v", time_budget=1.0, precision="float32", progress=False)
    _, noisy_stack = demo.make_data()
    np.testing.assert_array_equal(seen[0], noisy_stack)  # nothing but the noisy slices
    assert set(metrics["metrics"]) == {"input", "nlm", "n2v"}
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"metrics.json", "demo.png", "restored.tif", "model"}
    assert "N2V gains" in capsys.readouterr().out


def test_where_noise_is_weak_the_noisy_pixel_is_weighed_in(tmp_path):
    clean = blobs((2, 96, 96), seed=3, density=0.01)
    low = noisy(clean, peak=200)
    model = train_n2v(low, "SYX", tmp_path / "m", epochs=4, steps_per_epoch=40, patch_size=(32, 32), **FAST_N2V)
    blend = model.config.n2v.blend
    assert blend is not None and max(blend["weights"]) > 0.1
    a, _, floor = blend["camera"]  # the camera read from the noisy images alone: 1 per photon, read noise 1
    assert 0.7 < a < 1.4 and 0.5 < floor < 3
    with_pixel = mean_psnr(model.predict(low, "SYX"), clean)
    model.config.n2v.posterior = False
    alone = mean_psnr(model.predict(low, "SYX"), clean)
    assert with_pixel > alone + 0.3
    again = carekit.load(tmp_path / "m")  # stored with the model
    assert again.config.n2v.blend == blend


def test_frames_of_a_static_scene_calibrate_the_camera_where_the_sample_has_texture(tmp_path, capsys):
    """A sample with pixel-to-pixel texture of its own (as the clean images of real data have) makes the
    noisy images alone read more noise than the camera's, and keep the noisy pixel out; eight frames
    of another static scene read the camera's noise itself and weigh the pixel in as they should."""
    rng = np.random.default_rng(8)
    clean = blobs((2, 96, 96), seed=3, density=0.01) * rng.uniform(0.7, 1.3, (2, 96, 96)).astype(np.float32)
    low = noisy(clean, peak=200)  # 200 photons peak, read noise 1 (conftest's camera)
    ramp = np.tile(np.linspace(0, 250, 128, dtype=np.float32), (128, 1))
    frames = np.stack([poisson_gaussian(ramp, rng, read_sigma=1.0) for _ in range(8)])
    model = train_n2v(low, "SYX", tmp_path / "m", epochs=4, steps_per_epoch=40, patch_size=(32, 32),
                      noise_calibration=frames, **FAST_N2V)  # fmt: skip
    a, b, _ = model.config.n2v.camera
    assert abs(a - 1) < 0.1 and abs(b - 1) < 1.0
    assert model.config.n2v.blend["camera"] == model.config.n2v.camera
    assert carekit.load(tmp_path / "m").config.n2v.camera == model.config.n2v.camera
    calibrated = mean_psnr(model.predict(low, "SYX"), clean)
    model.config.n2v.camera = None  # the same network, the camera read from the noisy images alone
    model.directory = None
    fit_blend(model, [s[None] for s in low])
    assert model.config.n2v.blend["camera"][0] > 1.2 * a
    assert calibrated > mean_psnr(model.predict(low, "SYX"), clean) + 0.2
    tifffile.imwrite(tmp_path / "noisy.tif", low)
    tifffile.imwrite(tmp_path / "plane.tif", frames[0])
    argv = ["train", "--mode", "n2v", "--input", str(tmp_path / "noisy.tif"), "--axes", "SYX", "--model",
            str(tmp_path / "bad"), "--noise-calibration", str(tmp_path / "plane.tif"), "--quiet"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"carekit: error: --noise-calibration {tmp_path / 'plane.tif'}: needs two or more")
    assert "\n" not in err and not (tmp_path / "bad").exists()


def test_n2v2_leaves_no_grid_pattern_where_plain_noise2void_does(tmp_path, monkeypatch):
    """Spectral peaks at the pooling grid's frequencies (0.5 and 0.25 cycles per pixel) of the output,
    against those of the truth: plain Noise2Void (max pooling, top skip, the pixel itself among its
    replacements) leaves a 2-pixel pattern; N2V2 does not."""
    from carekit.resolution import checkerboard_peaks

    monkeypatch.setenv("CAREKIT_THREADS", "2")  # the same sums whatever the load (short runs vary)

    clean = blobs((4, 128, 128), seed=3, density=0.01)
    low = noisy(clean, peak=4)
    settings = {**FAST_N2V, "n_first": 16, "init": "scratch"}
    plain = {"replacement": "uniform", "blur_pool": False, "top_skip": True}
    peaks = {}
    for name, extra in (("n2v2", {}), ("plain", plain)):
        model = train_n2v(low, "SYX", tmp_path / name, epochs=8, steps_per_epoch=50, patch_size=(64, 64),
                          **settings, **extra)  # fmt: skip
        if name == "n2v2":  # the default output: the noisy pixel's share weighed in
            blended = checkerboard_peaks(model.predict(low, "SYX"))
        model.config.n2v.posterior = False  # the network's own estimate, where a pattern would come from
        peaks[name] = checkerboard_peaks(model.predict(low, "SYX"))
    truth = checkerboard_peaks(clean)
    assert peaks["plain"]["nyquist"] > max(truth["nyquist"] + 1.0, 1.5 * peaks["n2v2"]["nyquist"])
    assert peaks["n2v2"]["half_nyquist"] < truth["half_nyquist"]
    assert blended["nyquist"] < peaks["plain"]["nyquist"] and blended["half_nyquist"] < truth["half_nyquist"]
