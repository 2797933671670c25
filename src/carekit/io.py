"""Reading and writing images and files, never leaving a half-written file behind."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import tifffile

from carekit.axes import axes_from_tiff, check_axes
from carekit.errors import CarekitError

TIFF_SUFFIXES = (".tif", ".tiff")


def list_images(path: str | Path, *, role: str = "input") -> list[Path]:
    """The TIFF files at ``path``: the file itself, or a folder's TIFFs sorted by name."""
    p = Path(path)
    if not p.exists():
        raise CarekitError(f"{p}: no such file or folder; check the {role} path")
    if p.is_file():
        return [p]
    files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in TIFF_SUFFIXES)
    if not files:
        raise CarekitError(f"{p}: folder holds no .tif/.tiff files; point the {role} path at your images")
    return files


def read_image(path: str | Path) -> tuple[np.ndarray, str | None]:
    """Read a TIFF, returning the array and its axes if the file records them unambiguously."""
    p = Path(path)
    try:
        with tifffile.TiffFile(p) as tif:
            series = tif.series[0]
            data = series.asarray()
            axes = axes_from_tiff(series.axes, data.ndim)
    except FileNotFoundError:
        raise CarekitError(f"{p}: no such file; check the path") from None
    except Exception as e:  # tifffile raises many types for damaged files
        raise CarekitError(f"{p}: cannot read as TIFF ({type(e).__name__}: {e}); re-export the file as TIFF") from None
    if data.dtype.kind not in "uif":
        raise CarekitError(f"{p}: pixel type {data.dtype} is not supported; save as integer or float TIFF")
    return data, axes


def read_spacing(path: str | Path) -> dict[str, float] | None:
    """Voxel size per axis letter recorded in a TIFF (carekit's own metadata, or ImageJ's), if any."""
    try:
        with tifffile.TiffFile(path) as tif:
            for meta in tif.shaped_metadata or ():
                if isinstance(meta.get("spacing"), dict):
                    return {str(k): float(v) for k, v in meta["spacing"].items()}
            spacing: dict[str, float] = {}
            ij = tif.imagej_metadata or {}
            if "spacing" in ij:
                spacing["Z"] = float(ij["spacing"])
            tags = tif.pages.first.tags
            for axis, tag in (("X", "XResolution"), ("Y", "YResolution")):
                if tag in tags:
                    num, den = tags[tag].value
                    if num > 0 and den > 0 and (num, den) != (1, 1):
                        spacing[axis] = den / num
            return spacing or None
    except Exception:
        return None


def read_with_axes(path: str | Path, axes: str | None, *, fallback: str | None = None) -> tuple[np.ndarray, str]:
    """Read a TIFF and settle its axes: the given ones, else the file's, else ``fallback``."""
    data, file_axes = read_image(path)
    chosen = axes or file_axes
    if chosen is None and fallback is not None and len(fallback) == data.ndim:
        chosen = fallback
    if chosen is None:
        raise CarekitError(f"{path}: axes unknown for shape {data.shape}; pass --axes, e.g. --axes ZYX")
    chosen = check_axes(chosen, data.ndim, what=str(path))
    check_finite(data, str(path))
    return data, chosen


def check_finite(x: np.ndarray, what: str) -> None:
    """Refuse arrays with NaN or infinite values."""
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        raise CarekitError(f"{what}: {bad} NaN or infinite value(s); replace them (e.g. with 0) before using carekit")


def prepare_output(path: str | Path, *, role: str = "output") -> Path:
    """Make sure ``path``'s folder exists and is writable before long work starts."""
    p = Path(path)
    parent = p.parent if p.parent != Path("") else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CarekitError(f"{parent}: cannot create folder ({e.strerror}); choose another {role} path") from None
    if not os.access(parent, os.W_OK):
        raise CarekitError(f"{parent}: folder is not writable; choose another {role} path")
    if p.is_dir():
        raise CarekitError(f"{p}: is a folder; give a file name for the {role}")
    return p


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds."""
    p = prepare_output(path)
    tmp = p.with_name(f".{p.stem}.{os.getpid()}.partial{p.suffix}")  # keeps the suffix writers look at
    try:
        yield tmp
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_atomic(path: str | Path, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` then rename into ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_tiff(path: str | Path, data: np.ndarray, axes: str, *, spacing: dict[str, float] | None = None) -> Path:
    """Write ``data`` as a TIFF that records its axes (and voxel spacing, if given)."""
    axes = check_axes(axes, data.ndim, what=str(path))
    metadata: dict = {"axes": axes}
    if spacing:
        metadata["spacing"] = {k: float(v) for k, v in spacing.items()}
    kwargs: dict = {}
    if spacing and "X" in spacing and "Y" in spacing:
        kwargs["resolution"] = (1.0 / spacing["X"], 1.0 / spacing["Y"])
    return write_atomic(
        path, lambda tmp: tifffile.imwrite(tmp, data, metadata=metadata, photometric="minisblack", **kwargs)
    )


def write_json(path: str | Path, obj: dict) -> Path:
    text = json.dumps(obj, indent=2) + "\n"
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def read_json(path: str | Path) -> dict:
    p = Path(path)
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise CarekitError(f"{p}: missing") from None
    except json.JSONDecodeError as e:
        raise CarekitError(f"{p}: not valid JSON ({e}); the file is damaged") from None
