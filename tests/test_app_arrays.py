"""The application layer on arrays (what a GUI calls): prediction with progress and cancel, calibration
from arrays, and cancelling an ensemble's training."""

import threading

import numpy as np
import pytest
import tifffile
import torch
from conftest import TINY, blobs, noisy

from carekit import app
from carekit.config import Config, NetConfig
from carekit.ensemble import Ensemble
from carekit.errors import CarekitError
from carekit.model import CARE
from carekit.trainer import Callback

PROB = NetConfig(depth=1, n_first=4, kernel_size=3, probabilistic=True)


def saved(folder, seed=0, net=PROB) -> CARE:
    torch.manual_seed(seed)
    model = CARE(Config(axes="YX", net=net))
    model.save(folder)
    return model


def test_predict_array_reports_progress_over_every_pass_and_cancels(tmp_path):
    members = [saved(tmp_path / "ens" / f"member-{i}", seed=i) for i in range(2)]
    Ensemble(members, tmp_path / "ens").save_index()
    image = noisy(blobs((64, 64)))
    told = []
    restored = app.predict_array(tmp_path / "ens", image, "YX", spacing={"Y": 0.3, "X": 0.3}, progress=told.append,
                                 n_tiles=(2, 2), memory=1)  # fmt: skip
    assert told == pytest.approx([0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0])  # 4 tiles, 2 members
    assert restored.spacing == {"Y": 0.3, "X": 0.3} and restored.axes == "YX"
    np.testing.assert_allclose(restored.mean, app.load(tmp_path / "ens").predict(image, "YX"), rtol=1e-5, atol=1e-5)
    assert 0 < restored.distribution.disagreement().max() <= 1  # an ensemble's distribution by default

    stop = threading.Event()
    with pytest.raises(CarekitError, match=r"^prediction cancelled$"):
        app.predict_array(members[0], image, "YX", progress=lambda f: stop.set(), stop=stop, n_tiles=(2, 2), memory=1)
    plain = saved(tmp_path / "plain", net=NetConfig(depth=1, n_first=4))
    assert app.predict_array(plain.directory, image).distribution is None


def test_calibrate_arrays_matches_calibrate_files(tmp_path):
    clean = blobs((64, 64), seed=4)
    low = noisy(clean)
    for name in ("a", "b"):
        saved(tmp_path / name)
    for folder, image in (("low", low), ("high", clean)):
        (tmp_path / folder).mkdir()
        tifffile.imwrite(tmp_path / folder / "x.tif", image)
    from_files = app.calibrate_files(tmp_path / "a", [tmp_path / "low"], tmp_path / "high", "YX")
    from_arrays = app.calibrate_arrays(tmp_path / "b", [low], [clean], "YX")
    assert from_arrays == from_files and (tmp_path / "b" / "reliability.png").exists()
    assert app.load(tmp_path / "b").config.calibration["pit"] == from_files["calibration"]["pit"]


class StopAt(Callback):
    """Sets ``stop`` when the member ``name`` starts training."""

    def __init__(self, stop: threading.Event, name: str) -> None:
        self.stop, self.name = stop, name

    def on_start(self, trainer) -> None:
        if trainer.dir.name == self.name:
            self.stop.set()


@pytest.mark.parametrize("at, kept", [("member-1", 2), ("member-0", 0)])
def test_cancelling_an_ensemble_keeps_the_members_trained(tmp_path, at, kept):
    clean = blobs((64, 64), seed=2)
    stop = threading.Event()
    settings = {**TINY, "n_first": 4, "epochs": 3, "steps_per_epoch": 2, "patch_size": (32, 32), "progress": False}
    train = dict(low=noisy(clean), high=clean, axes="YX", ensemble=3, callbacks=[StopAt(stop, at)], stop=stop)
    if kept < 2:
        with pytest.raises(CarekitError, match="training stopped after 1 of 3 members; an ensemble needs at least 2"):
            app.train("denoise", tmp_path / "e", **train, **settings)
        return
    ensemble = app.train("denoise", tmp_path / "e", **train, **settings)
    assert len(ensemble.members) == kept and not (tmp_path / "e" / "member-2").exists()
    assert len(app.load(tmp_path / "e").members) == kept
