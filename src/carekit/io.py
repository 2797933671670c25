"""Reading and writing images and files, never leaving a half-written file behind."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import psutil
import tifffile

from carekit.axes import axes_from_tiff, check_axes
from carekit.errors import CarekitError

TIFF_SUFFIXES = (".tif", ".tiff")
# a folder holding one of these (with config.json) or an ensemble index is a model folder: never written into
MODEL_FILES = ("weights.safetensors", "last.safetensors")
ENSEMBLE_INDEX = "ensemble.json"
JSON_LIMIT = 64 * 2**20  # bytes: no configuration or index is anywhere near this
# the temporary files and folders of unfinished writes: .NAME.PID.partial[SUFFIX]
PARTIAL = re.compile(r"^\.(?P<base>.+)\.(?P<pid>\d+)\.partial(?P<suffix>.*)$")


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
    if p.is_dir():
        raise CarekitError(f"{p}: is a folder; give a TIFF file")
    try:
        with tifffile.TiffFile(p) as tif:
            series = tif.series[0]
            check_fits_memory(p, series.shape, series.dtype)
            data = series.asarray()
            axes = axes_from_tiff(series.axes, data.ndim)
    except FileNotFoundError:
        raise CarekitError(f"{p}: no such file; check the path") from None
    except CarekitError:
        raise
    except Exception as e:  # tifffile raises many types for damaged files
        first = str(e).splitlines()[0] if str(e) else ""
        raise CarekitError(f"{p}: cannot read as TIFF ({type(e).__name__}: {first}); re-export it as TIFF") from None
    if data.size == 0:
        raise CarekitError(f"{p}: the image is empty (shape {data.shape}); re-export the file")
    if data.dtype.kind not in "uif":
        raise CarekitError(f"{p}: pixel type {data.dtype} is not supported; save as integer or float TIFF")
    return data, axes


def check_fits_memory(path: Path, shape: tuple[int, ...], dtype) -> None:
    """Refuse to load an image larger than the memory available (a damaged or hostile header may
    declare any size), instead of running the machine out of memory."""
    need = int(np.prod(shape, dtype=np.float64)) * np.dtype(dtype).itemsize
    free = psutil.virtual_memory().available
    if need > free:
        raise CarekitError(f"{path}: the image needs {need / 2**30:.1f} GiB, more than the {free / 2**30:.1f} GiB "
                           "of memory available; convert it to OME-Zarr and predict it out of core")  # fmt: skip


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


def count_nonfinite(x: np.ndarray) -> int:
    """The number of NaN or infinite values in ``x`` (0 for integer arrays)."""
    if np.asarray(x).dtype.kind not in "fc":
        return 0
    return int(np.size(x) - np.count_nonzero(np.isfinite(x)))


def check_finite(x: np.ndarray, what: str) -> None:
    """Refuse arrays with NaN or infinite values."""
    bad = count_nonfinite(x)
    if bad:
        raise CarekitError(f"{what}: {bad} NaN or infinite value(s); replace them (e.g. with 0) before using carekit")


def check_result(x: np.ndarray, what: str) -> None:
    """Refuse a computed result with NaN or infinite values, so that none is ever written or returned."""
    bad = count_nonfinite(x)
    if bad:
        raise CarekitError(
            f"{what}: {bad} of {np.size(x)} restored value(s) are NaN or infinite, so nothing is written; "
            "intensities near the float32 limit overflow (rescale the image), else the model is damaged (retrain it)"
        )


def model_folder_of(path: Path) -> Path | None:
    """The model (or ensemble) folder ``path`` lies in or is, if any."""
    for d in (path, *path.parents):
        weights = any((d / f).is_file() for f in MODEL_FILES)
        if (d / ENSEMBLE_INDEX).is_file() or (weights and (d / "config.json").is_file()):
            return d
    return None


def same_path(a: Path, b: Path) -> bool:
    """True where ``a`` and ``b`` name the same file or folder (links and relative paths resolved)."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def inside(path: Path, folder: Path) -> bool:
    """True where ``path`` is ``folder`` or lies below it."""
    return same_path(path, folder) or path.resolve().is_relative_to(folder.resolve())


def check_output(path: str | Path, *, role: str = "--output", inputs: Iterable[str | Path] = (),
                 overwrite: bool = False) -> Path:  # fmt: skip
    """Make sure writing ``path`` destroys nothing, then prepare its folder (see :func:`prepare_output`).

    Refused whatever ``overwrite`` says: ``path`` is one of ``inputs`` (or lies inside an input
    given as a folder, such as an OME-Zarr image), or lies inside a model folder. Refused without
    ``overwrite``: ``path`` exists already.
    """
    p = Path(path)
    model = model_folder_of(p.parent if p.parent != Path("") else Path("."))
    if model is None and p.is_dir():
        model = model_folder_of(p)
    if model is not None:
        raise CarekitError(f"{p}: lies inside the model folder {model}, and writing there could damage the model; "
                           f"choose another {role}")  # fmt: skip
    for source in inputs:
        source = Path(source)
        if same_path(p, source) or (source.is_dir() and inside(p, source)):
            raise CarekitError(f"{p}: this {role} would overwrite the input {source}; carekit never replaces its "
                               f"input, choose another {role}")  # fmt: skip
    if p.exists() and not overwrite:
        raise CarekitError(f"{p}: already exists; pass --overwrite to replace it, or choose another {role}")
    return p


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


def process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_stale_partials(path: str | Path) -> list[Path]:
    """Delete what killed runs left while writing ``path`` (``.NAME.PID.partial*`` of dead processes)."""
    p = Path(path)
    removed = []
    with contextlib.suppress(OSError):
        for f in p.parent.iterdir():
            m = PARTIAL.match(f.name)
            if not m or (m["base"] + m["suffix"] != p.name and m["base"] != p.name and m["base"] != p.stem):
                continue
            if m["base"] == p.stem and m["suffix"] != p.suffix:
                continue
            if not process_alive(int(m["pid"])):
                shutil.rmtree(f, ignore_errors=True) if f.is_dir() else f.unlink(missing_ok=True)
                removed.append(f)
    return removed


OS_ERROR = re.compile(r"\(os error (\d+)\)")  # how Rust libraries quote the errno of an I/O failure


def write_failed(path: Path, e: OSError) -> CarekitError:
    """A one-line error for a failed write (a full disk, a lost permission) that names ``path``."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return CarekitError(f"{path}: the disk is full ({e.strerror}), nothing was written there; free space or "
                            "write elsewhere")  # fmt: skip
    return CarekitError(f"{path}: cannot write ({e.strerror or e}); check the disk and the permissions")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    Temporary files that killed runs left for the same ``path`` are removed first. A failed write
    (a full disk) becomes a :class:`CarekitError` naming ``path``; ``path`` itself is untouched.
    """
    p = prepare_output(path)
    remove_stale_partials(p)
    tmp = p.with_name(f".{p.stem}.{os.getpid()}.partial{p.suffix}")  # keeps the suffix writers look at
    try:
        yield tmp
        os.replace(tmp, p)
    except BaseException as e:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
        if isinstance(e, OSError):
            raise write_failed(p, e) from None
        lost = OS_ERROR.search(str(e)) if isinstance(e, Exception) else None
        if lost:  # a library's own wrapping of an I/O failure (safetensors: "... (os error 28)")
            code = int(lost.group(1))
            raise write_failed(p, OSError(code, os.strerror(code))) from None
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
    """A JSON object from ``path``; anything else (missing, damaged, not an object) is a one-line error."""
    p = Path(path)
    try:
        if p.stat().st_size > JSON_LIMIT:
            raise CarekitError(f"{p}: {p.stat().st_size:,} bytes is far too large for this file; it is damaged")
        d = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CarekitError(f"{p}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise CarekitError(f"{p}: not valid JSON ({str(e).splitlines()[0][:200]}); the file is damaged") from None
    except IsADirectoryError:
        raise CarekitError(f"{p}: is a folder, not a JSON file; the folder is damaged") from None
    except OSError as e:
        raise CarekitError(f"{p}: cannot read ({e.strerror})") from None
    if not isinstance(d, dict):
        raise CarekitError(f"{p}: holds a JSON {type(d).__name__}, not an object; the file is damaged")
    return d
