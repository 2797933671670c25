"""The napari Train widget: training from layers in a thread worker, progress, Cancel, errors, and
every registered mode (also one registered after the plugin was written)."""

import math
import time

import numpy as np
import pytest
import tifffile
from conftest import blobs, noisy, require_napari

require_napari()

from qtpy.QtCore import QTimer  # noqa: E402

from carekit import cli, registry  # noqa: E402
from carekit.io import read_json  # noqa: E402
from carekit.model import CARE  # noqa: E402
from carekit.napari import forms  # noqa: E402
from carekit.napari.train_widget import TrainWidget  # noqa: E402
from carekit.registry import Mode, Option  # noqa: E402

# the conftest's TINY network, as the widget's fields take it
FAST = {"n_first": "8", "kernel_size": "3", "batch_size": "4", "validation_patches": "8", "precision": "float32",
        "learning_rate": "0.002"}  # fmt: skip


@pytest.fixture
def widget(make_napari_viewer):
    viewer = make_napari_viewer()
    clean = blobs((96, 96), seed=3)
    viewer.add_image(noisy(clean), name="low")
    viewer.add_image(clean, name="high")
    return TrainWidget(viewer)


def fill(w: TrainWidget, folder, epochs: int, steps: int) -> None:
    w.inputs["low"].layers.setCurrentText("low")
    w.inputs["high"].layers.setCurrentText("high")
    w.budget.setValue(0)
    w.common["epochs"].setText(str(epochs))
    w.common["steps_per_epoch"].setText(str(steps))
    w.common["patch_size"].setText("32,32")
    for name, text in FAST.items():
        field = (w.common | w.more)[name]
        field.setCurrentIndex(field.findText(text)) if isinstance(field, forms.ChoiceField) else field.setText(text)
    w.folder.setText(str(folder))


def notes():
    from napari.utils.notifications import notification_manager

    return [(str(n.severity), str(n.message)) for n in notification_manager.records]


def test_train_from_layers_writes_the_folder_the_cli_writes(widget, qtbot, tmp_path):
    assert widget.inputs["axes"].text() == "YX"  # inferred from the 2D layer
    fill(widget, tmp_path / "gui", epochs=2, steps=3)
    widget.train_button.click()
    assert widget.job is not None and not widget.train_button.isEnabled()
    qtbot.waitUntil(lambda: widget.job is None, timeout=120_000)
    history = (tmp_path / "gui" / "history.csv").read_text().splitlines()
    assert len(history) == 3 and widget.progress.value() == widget.progress.maximum()
    assert len(widget.plot.epochs) == 2 and all(math.isfinite(v) for v in widget.plot.val_losses)
    assert widget.plot.steps and ("info", f"model written to {tmp_path / 'gui'}") in notes()

    low, high = tmp_path / "low", tmp_path / "high"
    for folder, name in ((low, "low"), (high, "high")):
        folder.mkdir()
        tifffile.imwrite(folder / "a.tif", widget.viewer.layers[name].data)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in FAST.items()]
    flags += ["--epochs", "2", "--steps-per-epoch", "3", "--patch-size", "32,32", "--quiet"]
    assert cli.main(["train", "--low", str(low), "--high", str(high), "--axes", "YX", "--model", str(tmp_path / "cli"),
                     *flags]) == 0  # fmt: skip
    files = {p.name for p in (tmp_path / "gui").iterdir()}
    assert files == {p.name for p in (tmp_path / "cli").iterdir()}
    assert read_json(tmp_path / "gui" / "config.json") == read_json(tmp_path / "cli" / "config.json")


def test_cancel_stops_cleanly_and_keeps_the_best_model(widget, qtbot, tmp_path):
    fill(widget, tmp_path / "m", epochs=1000, steps=2)
    widget.train_button.click()
    qtbot.waitUntil(lambda: len(widget.plot.epochs) >= 2, timeout=120_000)
    widget.cancel_button.click()
    cancelled = time.monotonic()
    qtbot.waitUntil(lambda: widget.job is None, timeout=60_000)
    assert time.monotonic() - cancelled < 10
    rows = [line.split(",") for line in (tmp_path / "m" / "history.csv").read_text().splitlines()[1:]]
    assert 2 <= len(rows) < 1000
    best = min(range(len(rows)), key=lambda i: float(rows[i][4]))
    model = CARE.load(tmp_path / "m")  # the best weights, complete and loadable
    assert np.isfinite(model.predict(widget.viewer.layers["low"].data, "YX")).all()
    assert widget.status.text().startswith("stopped") and best < len(rows)


def test_the_viewer_stays_responsive_while_training(widget, qtbot, tmp_path):
    fill(widget, tmp_path / "m", epochs=1000, steps=5)
    ticks = []
    timer = QTimer(interval=20)
    timer.timeout.connect(lambda: ticks.append(time.monotonic()))
    widget.train_button.click()
    qtbot.waitUntil(lambda: len(widget.plot.steps) >= 1, timeout=120_000)  # training runs
    before = widget.plot.steps[-1]
    timer.start()
    qtbot.wait(3000)
    timer.stop()
    print("ticks", len(ticks), "max gap", np.diff(ticks).max(), "steps", before, widget.plot.steps[-1])
    widget.cancel_button.click()
    qtbot.waitUntil(lambda: widget.job is None, timeout=60_000)
    gaps = np.diff(ticks)  # 20 ms apart in an idle viewer
    assert len(ticks) > 50 and gaps.max() < 0.5, (len(ticks), gaps.max())
    assert widget.plot.steps[-1] > before  # while training went on


def test_errors_are_notifications_with_the_cli_messages(widget, qtbot, tmp_path, capsys):
    widget.train_button.click()  # no model folder
    assert notes()[-1] == ("error", "model folder: choose the folder to write the model into")
    fill(widget, tmp_path / "m", epochs=1, steps=1)
    widget.inputs["high"].layers.setCurrentText(forms.FROM_FILES)  # and no file given
    widget.train_button.click()
    qtbot.waitUntil(lambda: widget.job is None, timeout=60_000)
    tifffile.imwrite(tmp_path / "low.tif", np.zeros((8, 8), np.float32))
    assert cli.main(["train", "--low", str(tmp_path / "low.tif"), "--axes", "YX", "--model", str(tmp_path / "c")]) == 2
    printed = capsys.readouterr().err.strip()
    assert notes()[-1] == ("error", printed.removeprefix("carekit: error: "))
    assert "Traceback" not in printed


def test_every_registered_mode_has_its_form(widget, monkeypatch):
    names = [widget.mode.itemData(i) for i in range(widget.mode.count())]
    assert names == list(registry.MODES)
    later = Mode(name="later", summary="registered after the plugin", inputs=("input", "axes"), data=None, model=CARE,
                 settings=("ratio",), options=(Option("--input", "stack"), Option("--axes", "axes"),
                                               Option("--ratio", "a number", {"type": float})))  # fmt: skip
    monkeypatch.setitem(registry.MODES, "later", later)
    w = TrainWidget(widget.viewer)
    w.mode.setCurrentIndex(w.mode.findData("later"))
    assert isinstance(w.inputs["input"], forms.SourceField) and set(w.options) == {"ratio"}
    w.options["ratio"].setText("0.25")
    w.folder.setText("m")
    keywords = w.keywords()
    assert keywords["ratio"] == 0.25 and keywords["mode"] == "later" and keywords["input"].shape == (96, 96)


def test_noise2void_settings_are_fields_and_a_switch_off_is_a_tick(widget):
    widget.mode.setCurrentIndex(widget.mode.findData("n2v"))
    assert isinstance(widget.inputs["input"], forms.SourceField)
    assert {"struct_mask", "masked_fraction", "replacement", "window", "posterior"} <= set(widget.options)
    switch = widget.options["posterior"]
    assert isinstance(switch, forms.FlagField) and switch.value() is None
    switch.setChecked(True)
    assert switch.value() is False  # ticking "leave out" turns the noisy pixel's share off
