"""Form fields made from what carekit declares: a mode's options (its :class:`~carekit.registry.Option`
entries) and the configuration's fields, so a mode registered later gets its form unchanged.

Every field's :meth:`value` is what :func:`carekit.app.train` takes for its keyword, or None where
left at the default. A field that cannot parse its text raises :class:`CarekitError` naming it.
"""

from __future__ import annotations

import argparse
import typing
from collections.abc import Callable
from dataclasses import MISSING, Field, fields
from pathlib import Path

from napari.layers import Image
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QCheckBox, QComboBox, QFileDialog, QHBoxLayout, QLineEdit, QPushButton, QWidget

from carekit.config import FIELD_CHOICES, FIELD_HELP, NetConfig, TrainConfig
from carekit.errors import CarekitError
from carekit.napari.layers import infer_axes, layer_array
from carekit.registry import Option

FROM_FILES = "file(s) or folder…"  # the last entry of a source's layer list
NONE = "(none)"  # the first entry of an optional source's list


def destination(option: Option) -> str:
    """The keyword an option sets: ``--psf-sigma`` -> ``psf_sigma`` unless it names another."""
    return option.kwargs.get("dest") or option.flag.lstrip("-").replace("-", "_")


def label(name: str) -> str:
    return name.replace("_", " ")


class ImageLayers(QComboBox):
    """The viewer's image layers by name between ``leading`` and ``trailing`` entries, refreshed when
    layers come and go and when opened; at first the layer at ``default`` (None: the first entry)."""

    def __init__(self, viewer, leading: tuple[str, ...] = (), trailing: tuple[str, ...] = (),
                 default: int | None = 0) -> None:  # fmt: skip
        super().__init__()
        self.viewer, self.leading, self.trailing, self.default = viewer, leading, trailing, default
        self.refresh()
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed):
            event.connect(self.refresh)

    def refresh(self, *_) -> None:
        """List the layers again, keeping the choice (a change of choice is announced once)."""
        current = self.currentText()
        layers = [layer.name for layer in self.viewer.layers if isinstance(layer, Image)]
        names = [*self.leading, *layers, *self.trailing]
        first = len(self.leading) + self.default if self.default is not None and self.default < len(layers) else 0
        self.blockSignals(True)
        self.clear()
        self.addItems(names)
        self.setCurrentIndex(names.index(current) if current in names else first)
        self.blockSignals(False)
        if self.currentText() != current:
            self.currentTextChanged.emit(self.currentText())

    def showPopup(self) -> None:
        self.refresh()
        super().showPopup()

    def layer(self):
        name = self.currentText()
        return next((layer for layer in self.viewer.layers if layer.name == name), None)


class SourceField(QWidget):
    """An image a mode reads: a layer of the viewer, or TIFF file(s) or a folder (paths separated by ``;``)."""

    layer_changed = Signal(object)

    def __init__(self, viewer, name: str, many: bool = False, default: int | None = 0) -> None:
        super().__init__()
        self.name, self.many = name, many
        self.layers = ImageLayers(viewer, () if default is not None else (NONE,), (FROM_FILES,), default)
        self.path = QLineEdit(placeholderText="path(s) to TIFF file(s) or a folder")
        browse = QPushButton("…", maximumWidth=30, toolTip="choose a file")
        browse.clicked.connect(self.browse)
        self.files = QWidget()
        row = QHBoxLayout(self.files)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.path)
        row.addWidget(browse)
        column = QHBoxLayout(self)
        column.setContentsMargins(0, 0, 0, 0)
        column.addWidget(self.layers, 1)
        column.addWidget(self.files, 2)
        self.layers.currentTextChanged.connect(self.changed)
        self.changed()

    def changed(self, *_) -> None:
        self.files.setVisible(self.layers.currentText() == FROM_FILES)
        self.layer_changed.emit(self.layers.layer())

    def browse(self) -> None:
        chosen, _ = QFileDialog.getOpenFileName(self, f"{label(self.name)}: choose a file")
        if chosen:
            self.path.setText(chosen)

    def value(self):
        layer = self.layers.layer()
        if layer is not None:
            return layer_array(layer)
        if self.layers.currentText() == NONE:
            return None
        paths = [p.strip() for p in self.path.text().split(";") if p.strip()]
        if not paths:
            return None
        return paths if self.many and len(paths) > 1 else paths[0]


class TextField(QLineEdit):
    """A value typed as text and parsed by ``parse`` (blank: the default, shown greyed)."""

    def __init__(self, name: str, parse: Callable[[str], object], placeholder: str = "") -> None:
        super().__init__(placeholderText=placeholder)
        self.name, self.parse = name, parse

    def value(self):
        text = self.text().strip()
        if not text:
            return None
        try:
            return self.parse(text)
        except (ValueError, TypeError, argparse.ArgumentTypeError):
            expected = self.placeholderText() or "a value"
            raise CarekitError(f"{label(self.name)}: '{text}' is not valid; expected {expected}") from None


class ChoiceField(QComboBox):
    """One of ``choices``, or the default (the first, empty entry)."""

    def __init__(self, name: str, choices, default_text: str = "default") -> None:
        super().__init__()
        self.name = name
        self.addItem(default_text, None)
        for choice in choices:
            self.addItem(str(choice), choice)

    def value(self):
        return self.currentData()


class FlagField(QCheckBox):
    """On or off; unticked is the default (None), so only a ticked box becomes a setting: True, or
    False for a switch that turns something off (``--no-...``, shown as "leave out")."""

    def __init__(self, name: str, ticked: bool = True) -> None:
        super().__init__("" if ticked else "leave out")
        self.name, self.ticked = name, ticked

    def value(self):
        return self.ticked if self.isChecked() else None


class AxesField(QLineEdit):
    """The axes of the inputs, filled in from the first input layer and open to correction."""

    def __init__(self) -> None:
        super().__init__(placeholderText="e.g. YX, ZYX, TCZYX")
        self.name = "axes"

    def follow(self, layer) -> None:
        if layer is not None:
            try:
                self.setText(infer_axes(layer))
            except CarekitError:
                self.clear()

    def value(self):
        return self.text().strip().upper() or None


def ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())


def option_field(option: Option, viewer, position: int | None = None):
    """The field for a mode's option: its choices, its type, a checkbox for a switch, the axes, else an image:
    the image layer at ``position`` for an input (the first input the first layer, ...), none for a setting."""
    name, kw = destination(option), option.kwargs
    if name == "axes":
        field = AxesField()
    elif "choices" in kw:
        field = ChoiceField(name, kw["choices"])
    elif kw.get("action") in ("store_true", "store_false", argparse.BooleanOptionalAction):
        field = FlagField(name, ticked=kw["action"] != "store_false")
    elif "type" in kw:
        field = TextField(name, kw["type"], kw.get("metavar", kw["type"].__name__))
    else:
        field = SourceField(viewer, name, many=kw.get("nargs") in ("+", "*"), default=position)
    field.setToolTip(option.help)
    return field


def setting_field(f: Field, hint):
    """The field for a configuration setting, by its type; its placeholder shows the default."""
    kind = next(t for t in (*typing.get_args(hint), hint) if t is not type(None))
    default = "" if f.default in (None, MISSING) else str(f.default)
    if f.name in FIELD_CHOICES:
        field = ChoiceField(f.name, FIELD_CHOICES[f.name], f"default ({default})" if default else "default")
    elif kind is bool and f.default is False:
        field = FlagField(f.name)
    elif kind is bool:
        field = ChoiceField(f.name, (True, False))
        for i, text in ((1, "on"), (2, "off")):
            field.setItemText(i, text)
    elif typing.get_origin(kind) is tuple:
        field = TextField(f.name, ints, "e.g. 64,64 or 16,64,64")
    else:
        field = TextField(f.name, kind, default or kind.__name__)
    field.setToolTip(FIELD_HELP.get(f.name, label(f.name) + (f" (default {default})" if default else "")))
    return field


def settings_fields(names: tuple[str, ...] | None = None, skip: tuple[str, ...] = ()) -> dict:
    """Fields for the NetConfig and TrainConfig settings ``names`` (all but ``skip`` where None)."""
    made = {}
    for cls in (NetConfig, TrainConfig):
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if (names is None and f.name not in skip) or (names is not None and f.name in names):
                made[f.name] = setting_field(f, hints[f.name])
    return made


def values(form: dict) -> dict:
    """The settings a form holds (fields left at their default are left out)."""
    return {name: v for name, field in form.items() if (v := field.value()) is not None}


def folder_field(placeholder: str, pick: Callable[[QWidget], str]) -> tuple[QWidget, QLineEdit]:
    """A path line with a button that opens ``pick``; returns the row and its line."""
    row, line = QWidget(), QLineEdit(placeholderText=placeholder)
    button = QPushButton("…", maximumWidth=30)
    button.clicked.connect(lambda: (chosen := pick(row)) and line.setText(str(Path(chosen))))
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    layout.addWidget(line)
    layout.addWidget(button)
    return row, line
