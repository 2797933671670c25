"""Robustness cases of 'carekit predict' on TIFF files and folders: where outputs go, bad images,
bad flags, and faults while it runs."""

from __future__ import annotations

import errno
import os
import subprocess
from functools import partial

import numpy as np
from harness import Case
from helpers import copy, disk_full, image, predict, raising, returning, text, tif

P = partial(Case, command="predict")


def same_output(world, folder, *extra):
    a = copy(world.image, folder / "a.tif")
    return predict(world, folder, *extra, source=a, output=a)


def folder_input(world, folder, out="restored"):
    copy(world.low, folder / "in")
    return predict(world, folder, source=folder / "in", output=folder / out)


def existing(world, folder, *extra):
    text(folder, "out.tif", b"an earlier result")
    return predict(world, folder, *extra)


def nan_network(self, x, lo, hi, run, **kw):
    return np.full((x.shape[0], 1, *x.shape[2:]), np.nan, np.float32)


def dead_pid() -> int:
    """The id of a process that has ended (as one killed with kill -9 has)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def stale_partial(w, f):
    text(f, f".out.{dead_pid()}.partial.tif", b"half a TIFF")
    return predict(w, f)


def interrupted_write(tmp, *args, **kwargs):
    tmp.write_bytes(b"\0" * 64)
    raise KeyboardInterrupt


OUTPUTS = [
    P(name="output is the input", kind="bad input", make=same_output, match="overwrite the input"),
    P(name="output is the input, --overwrite", kind="bad input", make=lambda w, f: same_output(w, f, "--overwrite"),
      match="never replaces its input"),
    P(name="output is the input by another spelling", kind="bad input",
      make=lambda w, f: predict(w, f, source=copy(w.image, f / "a.tif"), output=f / "sub" / ".." / "a.tif"),
      match="overwrite the input"),
    P(name="output is a link to the input", kind="bad input",
      make=lambda w, f: (copy(w.image, f / "a.tif"), os.symlink(f / "a.tif", f / "b.tif"),
                         predict(w, f, "--overwrite", source=f / "a.tif", output=f / "b.tif"))[-1],
      match="overwrite the input"),
    P(name="output inside the model folder", kind="bad input",
      make=lambda w, f: predict(w, f, model=copy(w.model, f / "m"), output=f / "m" / "x.tif"), match="model folder"),
    P(name="output replaces the model's weights", kind="bad input",
      make=lambda w, f: predict(w, f, "--overwrite", model=copy(w.model, f / "m"),
                                output=f / "m" / "weights.safetensors"), match="model folder"),
    P(name="output is the model folder", kind="bad input",
      make=lambda w, f: predict(w, f, model=copy(w.model, f / "m"), output=f / "m"), match="model folder"),
    P(name="output inside another model folder", kind="bad input",
      make=lambda w, f: predict(w, f, output=copy(w.prob, f / "p") / "x.tif"), match="model folder"),
    P(name="output exists", kind="bad input", make=existing, match="already exists.*--overwrite"),
    P(name="output exists, --overwrite", kind="bad input", make=lambda w, f: existing(w, f, "--overwrite"),
      expect="ok", changes=("out.tif",)),
    P(name="folder input, output the same folder", kind="bad input",
      make=lambda w, f: folder_input(w, f, out="in"), match="overwrite the input"),
    P(name="folder input, output a .tif", kind="bad input", make=lambda w, f: folder_input(w, f, out="x.tif"),
      match="must be a folder"),
    P(name="folder input, one output exists", kind="bad input",
      make=lambda w, f: (text(f, "restored/img1.tif", b"old"), folder_input(w, f))[1], match="already exists"),
    P(name="folder input into a new folder", kind="bad input", make=folder_input, expect="ok"),
    P(name="folder input into a folder inside it", kind="bad input", make=lambda w, f: folder_input(w, f, "in/r"),
      expect="ok"),
    P(name="output not a TIFF name", kind="bad input", make=lambda w, f: predict(w, f, output="out.png"),
      match="ending in .tif"),
    P(name="output into a new nested folder", kind="bad input",
      make=lambda w, f: predict(w, f, output="a/b/c/out.tif"), expect="ok"),
    P(name="output where a file blocks the folder", kind="bad input",
      make=lambda w, f: (text(f, "blocker", "x"), predict(w, f, output="blocker/out.tif"))[1], match="blocker"),
    P(name="output name too long", kind="bad input", make=lambda w, f: predict(w, f, output="x" * 300 + ".tif"),
      match="name too long"),
    P(name="output under /proc", kind="bad input", make=lambda w, f: predict(w, f, output=f / "/proc/out.tif"),
      match="/proc"),
    P(name="--height-map onto the output", kind="bad input",
      make=lambda w, f: predict(w, f, "--height-map", f / "out.tif"), match="height-map"),
    P(name="--uncertainty maps over an earlier map", kind="bad input",
      make=lambda w, f: (text(f, "a_spread.tif", "old"),
                         predict(w, f, "--uncertainty", f, model=w.prob, source=copy(w.image, f / "a.tif")))[1],
      match="a_spread.tif: already exists"),
    P(name="--movie onto the input", kind="bad input",
      make=lambda w, f: predict(w, f, "--movie", copy(w.image, f / "a.gif"), model=w.prob, source=f / "a.gif"),
      match="overwrite the input"),
    P(name="--movie for a folder of images", kind="bad input",
      make=lambda w, f: predict(w, f, "--movie", f / "m.gif", model=w.prob, source=w.low, output=f / "r"),
      match="one movie"),
    P(name="uncertainty maps and movie", kind="bad input",
      make=lambda w, f: predict(w, f, "--uncertainty", f / "maps", "--movie", f / "m.gif", "--samples", "3",
                                model=w.prob), expect="ok"),
]  # fmt: skip


def bad_image(name: str, make_data, match: str, expect: str = "error", axes: str | None = None, extra=()) -> Case:
    return P(name=name, kind="bad input", expect=expect, match=match,
             make=lambda w, f: predict(w, f, *extra, source=tif(f, "in.tif", make_data(), axes)))  # fmt: skip


def nan_image():
    x = image()
    x[3, 4] = np.nan
    return x


def inf_image():
    x = image()
    x[0, 0] = -np.inf
    return x


IMAGES = [
    P(name="input missing", kind="bad input", make=lambda w, f: predict(w, f, source=f / "nope.tif"),
      match="no such file"),
    P(name="input an empty folder", kind="bad input",
      make=lambda w, f: (os.makedirs(f / "empty"), predict(w, f, source=f / "empty", output=f / "r"))[1],
      match="holds no .tif"),
    P(name="input a text file", kind="bad input",
      make=lambda w, f: predict(w, f, source=text(f, "a.tif", "hello")), match="cannot read as TIFF"),
    P(name="input truncated TIFF", kind="bad input",
      make=lambda w, f: predict(w, f, source=text(f, "a.tif", w.image.read_bytes()[:300])), match="a.tif"),
    P(name="input empty file", kind="bad input", make=lambda w, f: predict(w, f, source=text(f, "a.tif", b"")),
      match="a.tif"),
    P(name="input a folder named .tif", kind="bad input",
      make=lambda w, f: (os.makedirs(f / "d.tif"), predict(w, f, source=f / "d.tif"))[1], match="d.tif"),
    bad_image("input with NaN", nan_image, "NaN"),
    bad_image("input with -inf", inf_image, "infinite"),
    bad_image("input complex", lambda: image().astype(np.complex64), "pixel type"),
    bad_image("input bool", lambda: image() > 100, "pixel type"),
    bad_image("input near the float32 maximum", lambda: image() / 400 * 3.3e38, "NaN or infinite|float32", axes="YX"),
    bad_image("input one pixel", lambda: np.ones((1, 1), np.float32), "", expect="ok", axes="YX"),
    bad_image("input one row", lambda: image(shape=(1, 40)), "", expect="ok", axes="YX"),
    bad_image("input constant", lambda: np.full((40, 40), 7, np.uint16), "", expect="ok", axes="YX"),
    bad_image("input 3 channels for a 1-channel model", lambda: image(shape=(3, 40, 40)), "channel",
              extra=("--axes", "CYX")),
    bad_image("input 3D for 2D axes", lambda: image(shape=(3, 40, 40)), "axes 'YX' name 2", extra=("--axes", "YX")),
    bad_image("input without axes", lambda: image(shape=(3, 40, 40)), "axes unknown"),
    bad_image("--axes unknown letter", image, "unknown letter", extra=("--axes", "QX")),
    bad_image("--axes repeated letter", image, "repeat", extra=("--axes", "XX")),
    bad_image("--axes without Y", image, "must contain Y", extra=("--axes", "ZX")),
    bad_image("--axes empty: the file's", image, "", expect="ok", axes="YX", extra=("--axes", "")),
    bad_image("--axes lower case", image, "", expect="ok", extra=("--axes", "yx")),
    bad_image("input with a time axis", lambda: image(shape=(2, 40, 40)), "", expect="ok", extra=("--axes", "TYX")),
]  # fmt: skip


def flag(name: str, *extra, match: str, expect: str = "error", model: str = "model") -> Case:
    return P(name=name, kind="bad input", match=match, expect=expect,
             make=lambda w, f: predict(w, f, *extra, model=getattr(w, model)))  # fmt: skip


FLAGS = [
    flag("--n-tiles 0", "--n-tiles", "0", match="n-tiles"),
    flag("--n-tiles 0,0", "--n-tiles", "0,0", match="n-tiles"),
    flag("--n-tiles -2,2", "--n-tiles", "-2,2", match="n-tiles"),
    flag("--n-tiles 2,2,2", "--n-tiles", "2,2,2", match="n-tiles"),
    flag("--n-tiles 1000,1000", "--n-tiles", "1000,1000", match="n-tiles"),
    flag("--n-tiles abc", "--n-tiles", "abc", match="n-tiles"),
    flag("--n-tiles 3,2", "--n-tiles", "3,2", match="", expect="ok"),
    flag("--memory 0", "--memory", "0", match="--memory"),
    flag("--memory -1", "--memory", "-1", match="--memory"),
    flag("--memory nan", "--memory", "nan", match="--memory"),
    flag("--memory inf", "--memory", "inf", match="--memory"),
    flag("--memory 1e30", "--memory", "1e30", match="--memory"),
    flag("--memory 0.05", "--memory", "0.05", match="", expect="ok"),
    flag("--level 0", "--level", "0", match="--level", model="prob"),
    flag("--level 1", "--level", "1", match="--level", model="prob"),
    flag("--level nan", "--level", "nan", match="--level", model="prob"),
    flag("--samples 1 with a movie", "--movie", "m.gif", "--samples", "1", match="--samples", model="prob"),
    flag("--samples -5 with a movie", "--movie", "m.gif", "--samples", "-5", match="--samples", model="prob"),
    flag("--samples 10^9 with a movie", "--movie", "m.gif", "--samples", "1000000000", match="--samples",
         model="prob"),
    flag("--movie .avi", "--movie", "m.avi", "--samples", "3", match="m.avi|gif", model="prob"),
    flag("--movie from a point model", "--movie", "m.gif", match="probabilistic"),
    flag("--uncertainty from a point model", "--uncertainty", "maps", match="probabilistic"),
    flag("--height-map for a denoising model", "--height-map", "h.tif", match="height-map"),
    flag("--factor for a denoising model", "--factor", "2", match="--factor"),
    flag("--factor nan", "--factor", "nan", match="--factor"),
    flag("--factor -1", "--factor", "-1", match="--factor"),
    flag("--device gpu9", "--device", "gpu9", match="device"),
    flag("--device cuda without a GPU", "--device", "cuda", match="cuda"),
    flag("--precision float16 on CPU", "--precision", "float16", "--device", "cpu", match="float16"),
    flag("--precision int4", "--precision", "int4", match="precision"),
    flag("--precision int8 (the model's int8 copy)", "--precision", "int8", "--device", "cpu", match="", expect="ok"),
    flag("--dask with a TIFF output", "--dask", match="zarr"),
    flag("unknown flag", "--fast", match="unrecognized"),
    flag("--tta", "--tta", match="", expect="ok"),
]  # fmt: skip

FAULTS = [
    P(name="disk full writing the result", kind="fault", make=lambda w, f: predict(w, f),
      fault=disk_full("carekit.io.tifffile.imwrite"), match="disk is full"),
    P(name="disk full, existing output kept", kind="fault", make=lambda w, f: existing(w, f, "--overwrite"),
      fault=disk_full("carekit.io.tifffile.imwrite"), match="disk is full"),
    P(name="disk full on a folder of images", kind="fault", make=folder_input,
      fault=disk_full("carekit.io.tifffile.imwrite"), match="disk is full"),
    P(name="permission lost while writing", kind="fault", make=lambda w, f: predict(w, f),
      fault=raising("carekit.io.tifffile.imwrite", PermissionError(errno.EACCES, "Permission denied")),
      match="cannot write"),
    P(name="input vanishes while reading", kind="fault", make=lambda w, f: predict(w, f),
      fault=raising("carekit.io.tifffile.TiffFile", FileNotFoundError(errno.ENOENT, "gone", "image.tif")),
      match="no such file"),
    P(name="I/O error while reading", kind="fault", make=lambda w, f: predict(w, f),
      fault=raising("carekit.io.tifffile.TiffFile", OSError(errno.EIO, "Input/output error")), match="Input/output"),
    P(name="out of memory in the network", kind="fault", make=lambda w, f: predict(w, f),
      fault=raising("carekit.model.predict_tiled", MemoryError()), match="out of memory"),
    P(name="network returns NaN", kind="fault", make=lambda w, f: predict(w, f),
      fault=returning("carekit.model.CARE.network_pass", nan_network), match="NaN or infinite"),
    P(name="stale .partial of a killed run is removed", kind="fault", make=stale_partial, expect="ok",
      changes=(".out.*.partial.tif",)),
    P(name="Ctrl-C while writing", kind="fault", make=lambda w, f: predict(w, f), expect="interrupted",
      fault=returning("carekit.io.tifffile.imwrite", interrupted_write)),
    P(name="Ctrl-C before writing", kind="fault", make=lambda w, f: predict(w, f), expect="interrupted",
      fault=raising("carekit.model.predict_tiled", KeyboardInterrupt())),
]  # fmt: skip

CASES = OUTPUTS + IMAGES + FLAGS + FAULTS
