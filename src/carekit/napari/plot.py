"""The live loss plot of the Train widget: training loss as it comes, validation loss per epoch."""

from __future__ import annotations

import math

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure

BACKGROUND, FOREGROUND = "#262930", "#d1d2d4"  # napari's dark theme


class LossPlot(FigureCanvasQTAgg):
    """Loss against training steps; :meth:`add_step` and :meth:`add_epoch` redraw when Qt next paints."""

    def __init__(self, height: float = 2.2) -> None:
        figure = Figure(figsize=(4, height), dpi=80, facecolor=BACKGROUND, layout="constrained")
        super().__init__(figure)
        self.axes = figure.add_subplot(facecolor=BACKGROUND)
        self.axes.tick_params(colors=FOREGROUND, labelsize=8)
        for spine in self.axes.spines.values():
            spine.set_color(FOREGROUND)
        self.axes.set_xlabel("step", color=FOREGROUND, fontsize=8)
        self.axes.set_ylabel("loss", color=FOREGROUND, fontsize=8)
        (self.train,) = self.axes.plot([], [], color="#4ea5ff", lw=1, label="loss")
        (self.val,) = self.axes.plot([], [], "o-", color="#ffb000", ms=3, lw=1, label="validation")
        legend = self.axes.legend(loc="upper right", fontsize=7, facecolor=BACKGROUND, edgecolor=FOREGROUND)
        for text in legend.get_texts():
            text.set_color(FOREGROUND)
        self.clear()

    def clear(self) -> None:
        self.steps: list[float] = []
        self.losses: list[float] = []
        self.epochs: list[float] = []
        self.val_losses: list[float] = []
        self.redraw()

    def add_step(self, step: int, loss: float) -> None:
        self.steps.append(step)
        self.losses.append(loss)
        self.redraw()

    def add_epoch(self, step: int, val_loss: float) -> None:
        if not math.isnan(val_loss):
            self.epochs.append(step)
            self.val_losses.append(val_loss)
            self.redraw()

    def redraw(self) -> None:
        self.train.set_data(self.steps, self.losses)
        self.val.set_data(self.epochs, self.val_losses)
        if self.steps:
            self.axes.relim()
            self.axes.autoscale_view()
        else:  # an empty plot: steps and losses to come
            self.axes.set_xlim(0, 100)
            self.axes.set_ylim(0, 1)
        self.draw_idle()
