"""PNG figures (and sample movies) a person can look at."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from carekit.errors import CarekitError
from carekit.io import write_atomic


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Save and close ``fig`` atomically (the format follows the file name)."""
    suffix = Path(path).suffix.lstrip(".") or "png"
    try:
        return write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=suffix))
    finally:
        plt.close(fig)


def training_curve(history: list[dict], path: str | Path) -> Path:
    """Training and validation loss per epoch, with the learning rate."""
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["loss"] for h in history], label="training loss")
    val = [h["val_loss"] for h in history]
    if not all(math.isnan(v) for v in val):
        ax.plot(epochs, val, label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend(loc="upper left")
    lr = ax.twinx()
    lr.plot(epochs, [h["lr"] for h in history], color="gray", linestyle=":", label="learning rate")
    lr.set_ylabel("learning rate", color="gray")
    lr.set_yscale("log")
    return save_figure(fig, path)


def display_range(image: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(image, (0.5, 99.8))
    return float(lo), float(hi if hi > lo else lo + 1)


def comparison(panels: dict[str, np.ndarray], path: str | Path, *, scores: dict[str, str] | None = None) -> Path:
    """Images side by side, each scaled to its own display range, titled with its score."""
    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.6))
    for ax, (name, img) in zip(np.atleast_1d(axes), panels.items(), strict=True):
        lo, hi = display_range(img)
        ax.imshow(img, cmap="magma", vmin=lo, vmax=hi, interpolation="nearest")
        title = name if not scores or name not in scores else f"{name}\n{scores[name]}"
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    return save_figure(fig, path)


def xz_power_spectrum(volume: np.ndarray, max_planes: int = 64) -> np.ndarray:
    """Log power spectrum of a ZYX volume's XZ planes, averaged over (up to ``max_planes``) Y."""
    v = np.asarray(volume, np.float32)
    ys = np.linspace(0, v.shape[1] - 1, min(max_planes, v.shape[1])).astype(int)
    planes = v[:, ys, :].transpose(1, 0, 2)  # Y Z X
    planes = planes - planes.mean(axis=(1, 2), keepdims=True)
    power = (np.abs(np.fft.fft2(planes)) ** 2).mean(axis=0)
    return np.log10(np.fft.fftshift(power) + 1e-12)


def axial_spectrum(panels: dict[str, np.ndarray], path: str | Path, *, voxel_ratio: float = 1.0) -> Path:
    """XZ Fourier spectra (kx across, kz up) and XZ sections of ZYX volumes that share one grid.

    Axial frequencies lost to the PSF and coarse sampling show as an empty band along kz;
    a restoration that recovers them fills it.
    """
    n = len(panels)
    fig, axes = plt.subplots(2, n, figsize=(3.4 * n, 6.4), squeeze=False)
    spectra = {name: xz_power_spectrum(v) for name, v in panels.items()}
    lo = min(float(np.percentile(s, 5)) for s in spectra.values())
    hi = max(float(s.max()) for s in spectra.values())
    for i, (name, volume) in enumerate(panels.items()):
        section = np.asarray(volume)[:, volume.shape[1] // 2, :]
        a, b = display_range(section)
        axes[0, i].imshow(section, cmap="magma", vmin=a, vmax=b, aspect=voxel_ratio, interpolation="nearest")
        axes[0, i].set_title(f"{name}: XZ section", fontsize=10)
        axes[1, i].imshow(spectra[name], cmap="viridis", vmin=lo, vmax=hi, aspect="auto")
        axes[1, i].set_title(f"{name}: XZ spectrum (log)", fontsize=10)
        for ax in axes[:, i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("z")
    axes[1, 0].set_ylabel("kz")
    return save_figure(fig, path)


def reliability_diagram(report: dict, path: str | Path) -> Path:
    """Left: empirical against nominal coverage of central intervals, before and after calibration
    (and on held-out calibration data). Right: the 90 % interval's coverage per decile of predicted
    intensity, where a calibration that holds only on average shows its gaps."""
    levels = [float(p) for p in report["levels"]]
    held = report.get("held_out")
    curves = [("before", report["coverage_before"], report.get("deciles_before")),
              ("after", report["coverage_after"], report.get("deciles_after"))]  # fmt: skip
    if held:
        curves.append((f"held out ({held['split']})", held["coverage"], held["deciles"]))
    fig, (ax, by) = plt.subplots(1, 2, figsize=(9.6, 4.4))
    ax.plot([0, 1], [0, 1], color="gray", linestyle=":", label="ideal")
    for label, cover, _ in curves:
        values = [level_value(cover, p) for p in levels]
        ece = float(np.mean([abs(c - p) for c, p in zip(values, levels, strict=True)]))
        ax.plot(levels, values, marker="o", label=f"{label} (ECE {ece:.3f})")
    ax.set_xlabel("nominal coverage of the central interval")
    ax.set_ylabel("fraction of ground-truth pixels inside")
    ax.set_title(f"reliability of central intervals ({report['pixels']:,} pixels)", fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    by.axhspan(0.8, 1.0, color="gray", alpha=0.12, label="90 % ± 10 points")
    by.axhline(0.9, color="gray", linestyle=":")
    for label, _, deciles in curves:
        if deciles:
            by.plot(range(1, 11), level_value(deciles, 0.9), marker="o", label=label)
    by.set_xticks(range(1, 11))
    by.set_xlabel("decile of predicted intensity within its image (1: darkest)")
    by.set_ylabel("coverage of the 90 % interval")
    by.set_title("90 % intervals by intensity", fontsize=10)
    by.set_ylim(0, 1.02)
    by.legend(loc="lower left", fontsize=8)
    return save_figure(fig, path)


def level_value(table: dict, level: float):
    """``table[level]`` whether the keys are numbers or (read back from JSON) strings."""
    return table[level] if level in table else table[str(level)]


def sample_movie(frames: np.ndarray, path: str | Path, *, fps: float = 8.0) -> Path:
    """Write 2D ``frames`` (T, Y, X) as an animated GIF (or MP4 where ffmpeg is installed).

    All frames share one display range, so regions the model is unsure of flicker.
    """
    from matplotlib import animation

    lo, hi = display_range(frames)
    suffix = Path(path).suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise CarekitError(f"{path}: movies are written as .gif or .mp4")
    if suffix == ".mp4" and not animation.writers.is_available("ffmpeg"):
        raise CarekitError(f"{path}: writing MP4 needs ffmpeg on the PATH; write a .gif instead")
    height, width = frames.shape[1:]
    fig = plt.figure(figsize=(width / 100, height / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.axis("off")
    shown = ax.imshow(frames[0], cmap="magma", vmin=lo, vmax=hi, interpolation="nearest")

    def update(i: int):
        shown.set_data(frames[i])
        return (shown,)

    movie = animation.FuncAnimation(fig, update, frames=len(frames), interval=1000 / fps, blit=True)
    writer = animation.PillowWriter(fps=fps) if suffix == ".gif" else animation.FFMpegWriter(fps=fps)
    try:
        return write_atomic(path, lambda tmp: movie.save(str(tmp), writer=writer, dpi=100))
    finally:
        plt.close(fig)
