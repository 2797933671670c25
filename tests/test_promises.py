"""What carekit promises (README), checked where the robustness cases cannot look closely enough:
the weights kept when training goes wrong, a diverging run, exports of odd models, the output rules."""

import json
import math
import zipfile

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY, blobs, noisy
from safetensors.torch import load_file

import carekit
from carekit import errors, io
from carekit.config import Config, NetConfig
from carekit.errors import CarekitError
from carekit.model import CARE
from carekit.trainer import Callback

PAIR = {"low": noisy(blobs((64, 64), seed=2)), "high": blobs((64, 64), seed=2)}
FAST = {**TINY, "patch_size": (32, 32), "steps_per_epoch": 4, "progress": False, "residual": False}


class Epochs(Callback):
    """Counts finished epochs, for losses that change with them."""

    done = 0

    def on_start(self, trainer) -> None:
        Epochs.done = trainer.epoch

    def on_epoch(self, trainer, row) -> None:
        Epochs.done = row["epoch"]


def mae(pred, y, mask=None):
    return torch.mean(torch.abs(pred.float() - y))


def test_a_nan_loss_stops_training_and_the_best_weights_stay_finite(tmp_path):
    def loss(pred, y, mask=None):  # fine in epoch 1, NaN from epoch 2 on
        return mae(pred, y) * (math.nan if Epochs.done >= 1 else 1.0)

    with pytest.raises(CarekitError, match=r"training diverged in epoch 2: the loss became nan"):
        carekit.train(PAIR["low"], PAIR["high"], "YX", tmp_path / "m", epochs=3, loss=loss, callbacks=[Epochs()],
                      **FAST)  # fmt: skip
    best = load_file(str(tmp_path / "m" / "weights.safetensors"))
    assert all(bool(torch.isfinite(t).all()) for t in best.values() if t.is_floating_point())
    model = carekit.load(tmp_path / "m")
    assert np.isfinite(model.predict(PAIR["low"], "YX")).all()


def test_a_diverging_run_is_reported_and_stopped_keeping_its_best_weights(tmp_path):
    def loss(pred, y, mask=None):  # the loss explodes a thousandfold after epoch 2
        return mae(pred, y) * (1e3 if Epochs.done >= 2 else 1.0)

    diverged = r"training diverged in epoch 3: the validation loss .* is \d+x its best"
    with pytest.warns(errors.CarekitWarning, match=diverged):
        carekit.train(PAIR["low"], PAIR["high"], "YX", tmp_path / "m", epochs=6, loss=loss, callbacks=[Epochs()],
                      **FAST)  # fmt: skip
    history = (tmp_path / "m" / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 3  # stopped after the epoch that diverged


def test_export_of_a_model_whose_outputs_are_negative(tmp_path):
    pytest.importorskip("bioimageio.spec")
    config = Config(axes="YX", net=NetConfig(depth=1, n_first=4, kernel_size=3),
                    intensity_map={"gain": [1.0], "offset": [-1e5]})  # fmt: skip
    model = CARE(config)
    model.save(tmp_path / "neg")
    out = carekit.export(carekit.load(tmp_path / "neg"), tmp_path / "neg.zip", author="Test")
    rdf = yaml.safe_load(zipfile.ZipFile(out).read("rdf.yaml"))
    (tolerance,) = rdf["config"]["bioimageio"]["reproducibility_tolerance"]
    assert tolerance["absolute_tolerance"] == 0 and tolerance["relative_tolerance"] == 1e-3


def test_outputs_never_replace_inputs_or_models(tmp_path):
    image = tmp_path / "a.tif"
    image.write_bytes(b"raw data")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({}))
    (model / "weights.safetensors").write_bytes(b"w")
    with pytest.raises(CarekitError, match="never replaces its input"):
        io.check_output(tmp_path / "." / "a.tif", inputs=[image], overwrite=True)
    with pytest.raises(CarekitError, match="model folder"):
        io.check_output(model / "sub" / "x.tif", overwrite=True)
    with pytest.raises(CarekitError, match="already exists"):
        io.check_output(image, inputs=[])
    assert io.check_output(image, inputs=[], overwrite=True) == image


def test_stale_partial_files_of_dead_processes_are_removed(tmp_path):
    import subprocess

    child = subprocess.Popen(["true"])
    child.wait()
    dead = tmp_path / f".out.{child.pid}.partial.tif"
    dead.write_bytes(b"half")
    alive = tmp_path / f".out.{__import__('os').getpid()}.partial.tif"  # this process: still writing
    alive.write_bytes(b"half")
    other = tmp_path / f".other.{child.pid}.partial.tif"  # another file's: not ours to judge here
    other.write_bytes(b"half")
    assert io.remove_stale_partials(tmp_path / "out.tif") == [dead]
    assert alive.exists() and other.exists()


def test_a_library_error_for_a_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    def writer(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")

    with pytest.raises(CarekitError, match="the disk is full"):
        io.write_atomic(tmp_path / "w.safetensors", writer)
    assert list(tmp_path.iterdir()) == []
