"""The Restore widget: a model folder, ensemble or bioimage.io package restores an image layer, tiled
automatically, in a thread worker with progress and Cancel; the result and, for probabilistic models
and ensembles, maps of how far to trust it arrive as new layers (see :func:`restoration_layers`)."""

from __future__ import annotations

from pathlib import Path

from napari.utils.notifications import show_info
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from carekit import app
from carekit.errors import CarekitError
from carekit.napari import forms
from carekit.napari.jobs import Job, Relay, guarded
from carekit.napari.layers import SAMPLES, layer_array, per_axis, restoration_layers
from carekit.napari.train_widget import RECENT


class RecentModels(QComboBox):
    """An editable path whose list holds the models trained and exported in this session."""

    def showPopup(self) -> None:
        text = self.currentText()
        self.clear()
        self.addItems(RECENT)
        self.setEditText(text)
        super().showPopup()


class ModelField(QWidget):
    """A model folder, ensemble folder or bioimage.io package (.zip): typed, chosen, or one from this session."""

    def __init__(self, packages: bool = True) -> None:
        super().__init__()
        self.packages = packages
        self.path = RecentModels(editable=True, toolTip="model folder, ensemble folder or bioimage.io package")
        self.path.lineEdit().setPlaceholderText("model folder or MODEL.zip" if packages else "model folder")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.path, 1)
        folder = QPushButton("folder…", toolTip="choose a model or ensemble folder")
        folder.clicked.connect(lambda: self.set(QFileDialog.getExistingDirectory(self, "model folder")))
        layout.addWidget(folder)
        if packages:
            package = QPushButton("package…", toolTip="choose a bioimage.io package")
            package.clicked.connect(
                lambda: self.set(QFileDialog.getOpenFileName(self, "bioimage.io package", "", "*.zip")[0])
            )
            layout.addWidget(package)

    def set(self, path: str | Path) -> None:
        if path:
            self.path.setEditText(str(Path(path)))

    def value(self) -> str:
        """The path; left empty, the model trained last in this session (shown in the field)."""
        if not self.path.currentText().strip() and RECENT:
            self.set(RECENT[0])
        text = self.path.currentText().strip()
        if not text:
            also = " or a bioimage.io MODEL.zip" if self.packages else ""
            raise CarekitError(f"model: choose a model folder (written by Train or 'carekit train'){also}")
        return text


def layer_input(layers: forms.ImageLayers, axes: forms.AxesField, role: str) -> tuple:
    """The chosen layer, its pixels and its axes (as typed), or an error naming what is missing."""
    layer = layers.layer()
    if layer is None:
        raise CarekitError(f"{role}: open or choose an image layer first")
    return layer, layer_array(layer), axes.value()


class RestoreWidget(QWidget):
    """Restore an image layer with a trained model (see the module's description)."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer, self.job = napari_viewer, None
        self.model = ModelField()
        self.image = forms.ImageLayers(napari_viewer)
        self.axes = forms.AxesField()
        self.image.currentTextChanged.connect(lambda *_: self.axes.follow(self.image.layer()))
        self.axes.follow(self.image.layer())
        self.tta = QCheckBox(toolTip="average the 8 flips and rotations (8x slower, often cleaner)")
        self.factor = forms.TextField("factor", float, "the model's")
        self.factor.setToolTip("isotropic and upsampling models: another z factor than the model's")
        self.level = QDoubleSpinBox(minimum=0.5, maximum=0.99, singleStep=0.05, value=0.9)
        self.level.setToolTip("probabilistic models: the central interval whose width is shown")
        self.samples = QSpinBox(minimum=0, maximum=64, value=SAMPLES,
                                toolTip="probabilistic models: draws from the prediction, on a slider")  # fmt: skip
        self.device = forms.ChoiceField("device", ("cpu", "cuda"), "auto")
        self.restore_button, self.cancel_button = QPushButton("Restore"), QPushButton("Cancel", enabled=False)
        self.restore_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(lambda: self.job and self.job.cancel())
        self.progress, self.status = QProgressBar(maximum=1000, textVisible=False), QLabel(wordWrap=True)
        self.relay = Relay(self)
        self.relay.sent.connect(lambda fraction: self.progress.setValue(int(fraction * self.progress.maximum())))

        form = QFormLayout()
        for text, field in (("model", self.model), ("image", self.image), ("axes", self.axes),
                            ("test-time aug.", self.tta), ("z factor", self.factor), ("interval level", self.level),
                            ("samples", self.samples), ("device", self.device)):  # fmt: skip
            form.addRow(text, field)
        buttons = QHBoxLayout()
        buttons.addWidget(self.restore_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addStretch()

    def request(self) -> dict:
        """What the form asks for (raises on a field it cannot read)."""
        layer, data, axes = layer_input(self.image, self.axes, "image")
        return {"model": self.model.value(), "layer": layer, "data": data, "axes": axes,
                "options": {"tta": self.tta.isChecked(), "factor": self.factor.value(), "device": self.device.value()},
                "level": self.level.value(), "samples": self.samples.value()}  # fmt: skip

    def start(self) -> None:
        asked = guarded(self.request)
        if asked is None or self.job is not None:
            return
        layer, axes = asked["layer"], asked["axes"]
        spacing, translate = (per_axis(layer, axes or "", a) for a in ("scale", "translate"))
        self.progress.setValue(0)
        self.status.setText(f"restoring {layer.name}…")
        self.restore_button.setEnabled(False)
        self.cancel_button.setEnabled(True)

        def work(stop):
            model = app.open_model(asked["model"])
            restored = app.predict_array(model, asked["data"], axes, spacing=spacing, progress=self.relay.sent.emit,
                                         stop=stop, **asked["options"])  # fmt: skip
            layers = restoration_layers(restored, layer.name, translate, asked["level"], asked["samples"])
            return layers, describe(model)

        self.job = Job("restoration", work, self.restored, self.ended)

    def restored(self, outcome: tuple) -> None:
        layers, description = outcome
        for data, keywords, _ in layers:
            self.viewer.add_image(data, **keywords)
        self.progress.setValue(self.progress.maximum())
        self.status.setText(f"added {', '.join(k['name'] for _, k, _ in layers)}\n{description}")
        show_info(f"restored into '{layers[0][1]['name']}'")

    def ended(self) -> None:
        self.job = None
        self.restore_button.setEnabled(True)
        self.cancel_button.setEnabled(False)


def describe(model) -> str:
    """One line on a model, ensemble or package."""
    return model.summary() if hasattr(model, "summary") else f"bioimage.io package {model.name}"
