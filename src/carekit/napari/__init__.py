"""carekit in napari: widgets to train, restore, calibrate and export, and the shipped sample.

Install with ``pip install "carekit[napari]"``; napari finds the plugin through ``napari.yaml``.
The widgets are built on :mod:`carekit.app` and the mode registry only: every registered mode,
with its inputs and options, appears in the Train widget. Nothing here is imported by carekit
itself, so carekit runs without napari or Qt.
"""
