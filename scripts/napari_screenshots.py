"""Screenshots of carekit's napari widgets, taken from a real viewer working on the shipped sample.

Trains and restores for real (about 5 minutes on a 2-core CPU) and writes PNGs into docs/napari/:
the Train widget during training, the Restore widget with a denoised stack, an ensemble's
uncertainty layers, the Calibrate and export widget after calibration and export, and an
isotropic restoration seen from the side. Run it on a display, or on a virtual one:

    apt-get install xvfb libxcb-icccm4 libxcb-keysyms1   # Debian: Xvfb and what Qt's xcb needs
    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/napari_screenshots.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import napari
import numpy as np
from PIL import Image
from qtpy.QtWidgets import QApplication

from carekit.napari import forms

SIZE = (1500, 960)  # window size in pixels
COLOURS = 192  # palette of the written PNGs (keeps them small)


def wait(widget, until=None, seconds: float = 3600) -> None:
    """Run the event loop until the widget's job ends (or ``until()`` holds)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end and (until() if until else widget.job is not None):
        QApplication.processEvents()
        time.sleep(0.02)
    settle()


def settle() -> None:
    """Let the last signals and repaints through."""
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.02)


def shot(viewer, path: Path) -> None:
    """The whole window, as a palette PNG."""
    viewer.window._qt_window.resize(*SIZE)
    settle()
    pixels = viewer.screenshot(canvas_only=False, flash=False)
    image = Image.fromarray(pixels[..., :3]).quantize(COLOURS, method=Image.Quantize.MEDIANCUT, dither=0)
    image.save(path, optimize=True)
    print(f"{path}: {path.stat().st_size / 1024:.0f} KB")


def dock(viewer, name: str):
    for other in list(viewer.window.dock_widgets):
        viewer.window.remove_dock_widget(viewer.window.dock_widgets[other])
    return viewer.window.add_plugin_dock_widget("carekit", name)[1]


def choose(combo, text: str) -> None:
    combo.setCurrentIndex(combo.findText(text))


def train(w, mode: str, inputs: dict, folder: Path, minutes: int, members: int = 1, **settings) -> None:
    choose(w.mode, mode)
    for name, value in inputs.items():
        field = w.inputs[name]
        choose(field.layers, value) if isinstance(field, forms.SourceField) else field.setText(value)
    w.budget.setValue(minutes)
    for name, value in settings.items():
        field = (w.common | w.more | w.options)[name]
        if isinstance(field, forms.FlagField):
            field.setChecked(bool(value))
        else:
            field.setText(str(value))
    w.members.setValue(members)
    w.folder.setText(str(folder))
    w.overwrite.setChecked(True)
    w.start()


def restore(w, model: Path, layer: str, axes: str) -> None:
    w.model.set(model)
    choose(w.image, layer)
    w.axes.setText(axes)
    w.start()
    wait(w)


def show(viewer, names: tuple[str, ...], grid: bool = True) -> None:
    """Only the layers ``names``, side by side (``grid``), zoomed to fit."""
    for layer in viewer.layers:
        layer.visible = layer.name in names
    viewer.layers.selection.active = viewer.layers[names[-1]]
    viewer.grid.enabled = grid
    viewer.reset_view()
    settle()


def z_at(viewer, z: float) -> None:
    """Show the plane at ``z`` (the third axis from the end: the samples of a prediction add one before)."""
    viewer.dims.set_point(viewer.dims.ndim - 3, z)


def subset(viewer, name: str, rows: slice, label: str) -> str:
    """A layer of some slices of the layer ``name``."""
    source = viewer.layers[name]
    new = f"{name} {label}"
    viewer.add_image(source.data[rows], name=new, scale=source.scale, metadata={"axes": "ZYX"}, visible=False)
    return new


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/napari", help="folder for the PNGs")
    parser.add_argument("--minutes", type=int, default=1, help="training time of each model")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="carekit-screenshots-"))
    viewer = napari.Viewer(title="carekit in napari")
    viewer.window._qt_window.resize(*SIZE)

    # Train: plain denoising of the sample's low-SNR slices (2D network, axes SYX), screenshot mid-run
    viewer.open_sample("carekit", "nuclei-pair")
    low, high = (layer.name for layer in viewer.layers)
    z_at(viewer, viewer.layers[low].scale[0] * 20)
    w = dock(viewer, "Train")
    train(w, "denoise", {"low": low, "high": high, "axes": "SYX"}, work / "denoise", args.minutes, steps_per_epoch=25)
    wait(w, until=lambda: w.progress.value() < 0.7 * w.progress.maximum() and w.job is not None)
    shot(viewer, out / "train.png")
    wait(w)

    # Restore: the low-SNR stack beside its restoration and the ground truth
    w = dock(viewer, "Restore")
    restore(w, work / "denoise", low, "SYX")
    show(viewer, (high, f"{low} restored", low))
    shot(viewer, out / "restore.png")

    # Trust: an ensemble of probabilistic members trained on slices 0-29, restoring slices 30-39
    train_low, train_high = subset(viewer, low, slice(0, 30), "[0:30]"), subset(viewer, high, slice(0, 30), "[0:30]")
    test_low, test_high = subset(viewer, low, slice(30, 40), "[30:40]"), subset(viewer, high, slice(30, 40), "[30:40]")
    w = dock(viewer, "Train")
    train(w, "denoise", {"low": train_low, "high": train_high, "axes": "SYX"}, work / "ensemble", args.minutes * 3,
          members=2, steps_per_epoch=25, probabilistic=True)  # fmt: skip
    wait(w)
    w = dock(viewer, "Restore")
    restore(w, work / "ensemble", test_low, "SYX")
    width, d = f"{test_low} 90% interval width", f"{test_low} disagreement D"
    viewer.layers[width].blending = viewer.layers[d].blending = "translucent"
    z_at(viewer, viewer.layers[test_low].scale[0] * 5)
    show(viewer, (d, width, f"{test_low} restored", test_low))
    shot(viewer, out / "uncertainty.png")

    # Calibrate the ensemble on the held-out slices; export the plain model (ensembles do not export)
    w = dock(viewer, "Calibrate and export")
    w.model.set(work / "ensemble")
    choose(w.low, test_low)
    choose(w.high, test_high)
    w.axes.setText("SYX")
    w.calibrate()
    wait(w)
    w.model.set(work / "denoise")
    w.package.setText(str(work / "nuclei-denoise.zip"))
    w.name.setText("Nuclei denoising (carekit sample)")
    w.author.setText("carekit")
    w.export()
    wait(w)
    show(viewer, (d, f"{test_low} restored"))
    shot(viewer, out / "calibrate-export.png")

    # Isotropic restoration of the stack with 4x coarser z, seen from the side (z down, x across)
    viewer.layers.clear()
    viewer.open_sample("carekit", "nuclei-anisotropic")
    coarse = viewer.layers[-1].name
    w = dock(viewer, "Train")
    train(w, "isotropic", {"input": coarse, "axes": "ZYX"}, work / "isotropic", args.minutes, steps_per_epoch=25,
          psf_sigma="3,0")  # fmt: skip
    wait(w)
    w = dock(viewer, "Restore")
    restore(w, work / "isotropic", coarse, "ZYX")
    viewer.dims.order = (1, 0, 2)
    viewer.dims.set_point(1, viewer.layers[coarse].scale[1] * 96)
    show(viewer, (f"{coarse} restored", coarse))
    viewer.grid.shape = (2, 1)  # the wide XZ planes one above the other
    viewer.reset_view()
    shot(viewer, out / "isotropic.png")
    viewer.close()


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
