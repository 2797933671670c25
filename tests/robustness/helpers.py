"""Small builders the robustness cases share: files, damaged copies of models, faults."""

from __future__ import annotations

import contextlib
import errno
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import tifffile


def tif(folder: Path, name: str, data, axes: str | None = None) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.asarray(data), metadata={"axes": axes} if axes else {})
    return path


def text(folder: Path, name: str, content: str | bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def image(seed: int = 0, shape=(48, 48), scale: float = 100.0) -> np.ndarray:
    return (np.random.default_rng(seed).gamma(2.0, 1.0, shape) * scale).astype(np.float32)


def copy(src: Path, dst: Path) -> Path:
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    return dst


def model_with(world, folder: Path, change: Callable[[dict], object], source: str = "model") -> Path:
    """A copy of a world model whose config.json went through ``change`` (which edits the dict in place,
    or returns a replacement: any JSON value, or bytes written as they are)."""
    dst = copy(getattr(world, source), folder / "model")
    config = json.loads((dst / "config.json").read_text())
    new = change(config)
    new = config if new is None else new
    data = new if isinstance(new, bytes) else json.dumps(new).encode()
    (dst / "config.json").write_bytes(data)
    return dst


def setting(path: str, value) -> Callable[[dict], None]:
    """A config change: the dotted ``path`` set to ``value``."""

    def change(config: dict) -> None:
        *parents, last = path.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[last] = value

    return change


def predict(world, folder: Path, *extra, model: Path | None = None, source: Path | None = None,
            output: Path | str = "out.tif") -> list:  # fmt: skip
    out = folder / output if isinstance(output, str) else output
    return ["predict", "--model", model or world.model, "--input", source or world.image, "--output", out,
            "--quiet", "--precision", "float32", *extra]  # fmt: skip


def train(world, folder: Path, *extra, low=None, high=None, model: str = "m", axes: str = "YX") -> list:
    return ["train", "--low", *(low or [world.low]), "--high", high or world.high, "--axes", axes, "--model",
            folder / model, "--quiet", "--precision", "float32", "--epochs", "1", "--steps-per-epoch", "2",
            "--n-first", "4", "--batch-size", "2", "--patch-size", "32,32", "--validation-patches", "2",
            *extra]  # fmt: skip


# -- faults -----------------------------------------------------------------------------------------
def disk_full(target: str, partial: int = 100) -> Callable[[], contextlib.AbstractContextManager]:
    """A writer ``target`` (``module.function(path_or_tmp, ...)``) that writes ``partial`` bytes and then
    fails as a full disk does."""

    @contextlib.contextmanager
    def fault() -> Iterator[None]:
        def full(*args, **kwargs):
            path = next((a for a in args if isinstance(a, (str, Path))), None)
            if path is not None:
                Path(path).write_bytes(b"\0" * partial)
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

        with mock.patch(target, full):
            yield

    return fault


def raising(target: str, error: BaseException) -> Callable[[], contextlib.AbstractContextManager]:
    @contextlib.contextmanager
    def fault() -> Iterator[None]:
        def fail(*args, **kwargs):
            raise error

        with mock.patch(target, fail):
            yield

    return fault


def returning(target: str, make: Callable) -> Callable[[], contextlib.AbstractContextManager]:
    """``target`` replaced by a function whose result is ``make(*args, **kwargs)``."""

    @contextlib.contextmanager
    def fault() -> Iterator[None]:
        with mock.patch(target, make):
            yield

    return fault
