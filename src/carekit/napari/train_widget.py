"""The Train widget: every registered mode, its inputs from layers or files, the common settings, and
training in a thread worker with progress, a live loss plot and a Cancel button that keeps the best model.

It calls :func:`carekit.app.train`, so the model folder is the one ``carekit train`` writes.
"""

from __future__ import annotations

import time
from pathlib import Path

from napari.utils.notifications import show_info
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from carekit import app
from carekit.errors import CarekitError
from carekit.napari import forms
from carekit.napari.jobs import Job, Relay, TrainingFeed, guarded
from carekit.napari.plot import LossPlot
from carekit.registry import MODES, Mode

COMMON = ("epochs", "steps_per_epoch", "patch_size", "batch_size", "probabilistic")  # shown; the rest folded
RECENT: list[str] = []  # model folders trained or exported in this session, newest first (the other widgets offer them)


def remember(folder: str | Path) -> None:
    text = str(folder)
    if text in RECENT:
        RECENT.remove(text)
    RECENT.insert(0, text)


class TrainWidget(QWidget):
    """Train a model of any registered mode on layers or files (see the module's description)."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer, self.job, self.started, self.member = napari_viewer, None, 0.0, ""
        self.mode = QComboBox()
        for kind in MODES.values():
            self.mode.addItem(kind.name, kind.name)
            self.mode.setItemData(self.mode.count() - 1, kind.summary, 3)  # 3: Qt's tool-tip role
        self.summary = QLabel(wordWrap=True)
        self.inputs_box, self.options_box = QGroupBox("Inputs"), QCollapsible("Mode options")
        self.options_holder = QWidget()
        self.options_box.addWidget(self.options_holder)
        self.inputs: dict = {}
        self.options: dict = {}

        self.budget = QSpinBox(minimum=0, maximum=24 * 60, value=5, suffix=" min", toolTip="0: no time limit")
        self.members = QSpinBox(minimum=1, maximum=20, value=1, toolTip="2 or more: an ensemble (disagreement map D)")
        self.device = forms.ChoiceField("device", ("cpu", "cuda"), "auto")
        self.common = forms.settings_fields(COMMON)
        self.more = forms.settings_fields(skip=COMMON)
        settings = QFormLayout()
        settings.addRow("time budget", self.budget)
        settings.addRow("ensemble members", self.members)
        for name, field in self.common.items():
            settings.addRow(forms.label(name), field)
        settings.addRow("device", self.device)
        more = QCollapsible("More settings")
        more_form = QWidget()
        more_layout = QFormLayout(more_form)
        for name, field in self.more.items():
            more_layout.addRow(forms.label(name), field)
        more.addWidget(more_form)

        folder_row, self.folder = forms.folder_field("model folder to write", self.pick_folder)
        self.overwrite = QCheckBox("overwrite", toolTip="replace a model already in the folder")
        self.train_button, self.cancel_button = QPushButton("Train"), QPushButton("Cancel", enabled=False)
        self.train_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.progress, self.status = QProgressBar(maximum=1000, textVisible=False), QLabel(wordWrap=True)
        self.plot = LossPlot()
        self.relay = Relay(self)
        self.relay.sent.connect(self.report)

        layout = QVBoxLayout(self)
        top = QFormLayout()
        top.addRow("mode", self.mode)
        layout.addLayout(top)
        layout.addWidget(self.summary)
        layout.addWidget(self.inputs_box)
        layout.addWidget(self.options_box)
        box = QGroupBox("Settings")
        box.setLayout(settings)
        layout.addWidget(box)
        layout.addWidget(more)
        folder = QFormLayout()
        folder.addRow("model folder", folder_row)
        folder.addRow("", self.overwrite)
        layout.addLayout(folder)
        buttons = QHBoxLayout()
        buttons.addWidget(self.train_button)
        buttons.addWidget(self.cancel_button)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.plot)
        layout.addStretch()
        self.mode.currentIndexChanged.connect(self.show_mode)
        self.show_mode()

    # -- the form ------------------------------------------------------------------------------
    @property
    def kind(self) -> Mode:
        return MODES[self.mode.currentData()]

    def show_mode(self, *_) -> None:
        """Lay out the chosen mode's inputs and options, as its registration declares them."""
        kind = self.kind
        self.summary.setText(kind.summary)
        self.inputs, self.options = {}, {}
        inputs, options = QFormLayout(), QFormLayout()
        for option in kind.options:
            name = forms.destination(option)
            sources = sum(isinstance(f, forms.SourceField) for f in self.inputs.values())
            position = sources if name in kind.inputs else None  # the n-th image input: the n-th layer
            field = forms.option_field(option, self.viewer, position)
            (self.inputs if name in kind.inputs else self.options)[name] = field
            (inputs if name in kind.inputs else options).addRow(forms.label(name), field)
        sources = [f for f in self.inputs.values() if isinstance(f, forms.SourceField)]
        if sources:
            sources[0].layer_changed.connect(self.follow_layer)
            self.follow_layer(sources[0].layers.layer())
        replace_layout(self.inputs_box, inputs)
        self.options_holder.deleteLater()
        self.options_holder = QWidget()
        self.options_holder.setLayout(options)
        self.options_box.addWidget(self.options_holder)
        self.options_box.setVisible(bool(self.options))

    def follow_layer(self, layer) -> None:
        """A new first input: its axes, and for modes with a z factor the layer's z over x scale."""
        if layer is None:
            return
        if "axes" in self.inputs:
            self.inputs["axes"].follow(layer)
        factor = self.inputs.get("factor")
        axes = self.inputs["axes"].value() if "axes" in self.inputs else None
        if factor is not None and axes and "Z" in axes and "X" in axes and len(axes) == len(layer.scale):
            ratio = float(layer.scale[axes.index("Z")]) / float(layer.scale[axes.index("X")])
            if ratio > 1 and not factor.text():
                factor.setText(f"{ratio:.4g}")

    def pick_folder(self, parent) -> str:
        return QFileDialog.getExistingDirectory(parent, "model folder")

    def keywords(self) -> dict:
        """Everything :func:`carekit.app.train` takes from the form (raises on a field it cannot read)."""
        folder = self.folder.text().strip()
        if not folder:
            raise CarekitError("model folder: choose the folder to write the model into")
        settings = {**forms.values(self.inputs), **forms.values(self.options), **forms.values(self.common),
                    **forms.values(self.more)}  # fmt: skip
        members = self.members.value()
        return {"mode": self.kind.name, "model_dir": folder, "ensemble": members if members > 1 else None,
                "time_budget": self.budget.value() * 60 or None, "overwrite": self.overwrite.isChecked(),
                "device": self.device.value() or "auto", "progress": False, **settings}  # fmt: skip

    # -- running ---------------------------------------------------------------------------------
    def start(self) -> None:
        keywords = guarded(self.keywords)
        if keywords is None or self.job is not None:
            return
        feed = TrainingFeed(self.relay.sent.emit, keywords["ensemble"] or 1, keywords["time_budget"])
        mode, folder = keywords.pop("mode"), keywords.pop("model_dir")
        self.plot.clear()
        self.member = ""
        self.progress.setValue(0)
        self.status.setText("preparing the training data…")
        self.started = time.monotonic()
        self.set_running(True)

        def work(stop):
            return app.train(mode, folder, callbacks=[feed], stop=stop, **keywords)

        self.job = Job("training", work, lambda model: self.trained(model, folder), self.ended)

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.status.setText("stopping after this step; the best weights are kept…")

    def trained(self, model, folder: str) -> None:
        remember(folder)
        self.progress.setValue(self.progress.maximum())
        ended = "stopped" if self.job.stop.is_set() else "done"
        self.status.setText(f"{ended} after {time.monotonic() - self.started:.0f} s; model written to {folder}\n"
                            f"{model.summary()}")  # fmt: skip
        show_info(f"model written to {folder}")

    def ended(self) -> None:
        self.job = None
        self.set_running(False)

    def set_running(self, running: bool) -> None:
        self.train_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    def report(self, event: dict) -> None:
        """Progress from the training thread: the bar, the line under it and the plot."""
        self.progress.setValue(int(event["fraction"] * self.progress.maximum()))
        if event["event"] == "start" and event["members"] > 1:
            self.member = f"member {event['member']}/{event['members']} · "
        elif event["event"] == "step":
            self.plot.add_step(event["step"], event["loss"])
            self.status.setText(f"{self.member}epoch {event['epoch']} · step {event['step']:,} · "
                                f"loss {event['loss']:.4f}{self.remaining(event['fraction'])}")  # fmt: skip
        elif event["event"] == "epoch":
            row = event["row"]
            self.plot.add_epoch(event["step"], row["val_loss"])
            self.status.setText(f"{self.member}epoch {row['epoch']} done · loss {row['loss']:.4f} · "
                                f"validation {row['val_loss']:.4f}{self.remaining(event['fraction'])}")  # fmt: skip

    def remaining(self, fraction: float) -> str:
        spent = time.monotonic() - self.started
        if fraction <= 0.01 or spent < 1:
            return ""
        left = spent * (1 - fraction) / fraction
        return f" · {int(left // 60)}:{int(left % 60):02d} left"


def replace_layout(box: QGroupBox, layout) -> None:
    """Give ``box`` a new layout, discarding the old one and its widgets."""
    old = box.layout()
    if old is not None:
        while old.count():
            widget = old.takeAt(0).widget()
            if widget is not None:
                widget.deleteLater()
        QWidget().setLayout(old)  # reparent the old layout so that it is deleted
    box.setLayout(layout)
    box.setVisible(layout.count() > 0)
