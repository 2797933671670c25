"""The Calibrate and export widget: recalibrate a probabilistic model's intervals on held-out layers
(with the reliability table and diagram that ``carekit calibrate`` writes), and write a model folder
as a bioimage.io package for Fiji, ilastik, QuPath or napari itself."""

from __future__ import annotations

from pathlib import Path

from napari.utils.notifications import show_info
from qtpy.QtCore import Qt
from qtpy.QtGui import QPixmap
from qtpy.QtWidgets import (
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from carekit import app
from carekit.errors import CarekitError
from carekit.napari import forms
from carekit.napari.jobs import Job, guarded
from carekit.napari.restore_widget import ModelField, layer_input
from carekit.napari.train_widget import remember
from carekit.registry import supporting

SHIPPED = "shipped sample"  # the test image export uses when no layer is chosen
LEVELS = (0.5, 0.8, 0.9, 0.95)  # rows of the reliability table, as 'carekit calibrate' prints


class TrustWidget(QWidget):
    """Calibrate a model's uncertainty and export models (see the module's description)."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer, self.job = napari_viewer, None
        self.model = ModelField(packages=False)
        self.low, self.high = forms.ImageLayers(napari_viewer), forms.ImageLayers(napari_viewer, default=1)
        self.axes = forms.AxesField()
        self.low.currentTextChanged.connect(lambda *_: self.axes.follow(self.low.layer()))
        self.axes.follow(self.low.layer())
        self.calibrate_button = QPushButton("Calibrate")
        self.calibrate_button.clicked.connect(self.calibrate)
        self.report, self.diagram = QLabel(wordWrap=True), QLabel(alignment=Qt.AlignmentFlag.AlignCenter)
        self.report.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        package_row, self.package = forms.folder_field("MODEL.zip to write", self.pick_package)
        self.name, self.author = QLineEdit(placeholderText="from the folder name"), QLineEdit(placeholderText="you")
        self.sample = forms.ImageLayers(napari_viewer, (SHIPPED,), default=None)
        self.sample_axes = forms.AxesField()
        self.sample.currentTextChanged.connect(lambda *_: self.sample_axes.follow(self.sample.layer()))
        self.export_button = QPushButton("Export to bioimage.io")
        self.export_button.clicked.connect(self.export)
        self.busy, self.status = QProgressBar(maximum=1, textVisible=False), QLabel(wordWrap=True)

        calibration = QFormLayout()
        calibration.addRow("held-out input", self.low)
        calibration.addRow("its ground truth", self.high)
        calibration.addRow("axes", self.axes)
        calibration.addRow(self.calibrate_button)
        calibration.addRow(self.report)
        calibration.addRow(self.diagram)
        export = QFormLayout()
        for text, field in (("package", package_row), ("name", self.name), ("author", self.author),
                            ("test image", self.sample), ("its axes", self.sample_axes)):  # fmt: skip
            export.addRow(text, field)
        export.addRow(self.export_button)
        layout = QVBoxLayout(self)
        top = QFormLayout()
        top.addRow("model", self.model)
        layout.addLayout(top)
        for title, form in (("Calibrate uncertainty (probabilistic models, ensembles)", calibration),
                            (f"Export to bioimage.io ({supporting('export')} models)", export)):  # fmt: skip
            box = QGroupBox(title)
            box.setLayout(form)
            layout.addWidget(box)
        layout.addWidget(self.busy)
        layout.addWidget(self.status)
        layout.addStretch()

    def pick_package(self, parent) -> str:
        return QFileDialog.getSaveFileName(parent, "bioimage.io package", "", "*.zip")[0]

    def run(self, what: str, work, done) -> None:
        if self.job is not None:
            return
        self.busy.setMaximum(0)  # a busy bar: neither job reports its progress
        self.status.setText(f"{what}…")
        self.calibrate_button.setEnabled(False)
        self.export_button.setEnabled(False)
        self.job = Job(what, work, done, self.ended)

    def ended(self) -> None:
        self.job = None
        self.busy.setMaximum(1)
        if self.status.text().endswith("…"):
            self.status.clear()
        self.calibrate_button.setEnabled(True)
        self.export_button.setEnabled(True)

    # -- calibration -----------------------------------------------------------------------------
    def calibrate(self) -> None:
        def read() -> tuple:
            model = self.model.value()
            _, low, axes = layer_input(self.low, self.axes, "held-out input")
            high = layer_input(self.high, self.axes, "ground truth")[1]
            return model, low, high, axes

        asked = guarded(read)
        if asked is not None:
            model, low, high, axes = asked
            self.run("calibration", lambda stop: app.calibrate_arrays(model, [low], [high], axes),
                     lambda report: self.calibrated(model, report))  # fmt: skip

    def calibrated(self, model: str, report: dict) -> None:
        rows = "".join(f"<tr><td>{p:.0%}</td><td>{report['coverage_before'][p]:.1%}</td>"
                       f"<td>{report['coverage_after'][p]:.1%}</td></tr>" for p in LEVELS)  # fmt: skip
        ece = f"ECE {report['ece_before']:.3f} → {report['ece_after']:.3f} ({report['pixels']:,} pixels)"
        self.report.setText(f"<table><tr><th>nominal</th><th>before</th><th>after</th></tr>{rows}</table>{ece}")
        diagram = QPixmap(str(Path(model) / "reliability.png"))
        if not diagram.isNull():
            self.diagram.setPixmap(diagram.scaledToWidth(260, Qt.TransformationMode.SmoothTransformation))
        self.status.setText(f"calibration stored in {model}")
        show_info(f"calibration stored in {model}")

    # -- export ----------------------------------------------------------------------------------
    def export(self) -> None:
        def read() -> tuple:
            model, out = self.model.value(), self.package.text().strip()
            if not out:
                raise CarekitError("package: choose where to write MODEL.zip")
            layer = self.sample.layer()
            sample = None if layer is None else layer_input(self.sample, self.sample_axes, "test image")[1:]
            return model, out, sample

        asked = guarded(read)
        if asked is None:
            return
        model, out, sample = asked
        data, axes = sample if sample is not None else (None, None)
        metadata = {"name": self.name.text().strip() or None, "author": self.author.text().strip() or None}

        def work(stop):
            return app.export_folder(model, out, sample=data, axes=axes, **metadata)

        self.run("export", work, self.exported)

    def exported(self, path) -> None:
        remember(path)
        show_info(f"package written to {path}")
        self.status.setText(f"package written to {path}; the Restore widget runs it")
