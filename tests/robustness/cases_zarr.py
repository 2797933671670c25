"""Robustness cases of out-of-core prediction: OME-Zarr inputs with faults, outputs that would destroy
inputs, resumed runs on changed inputs."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from functools import partial

import numpy as np
import zarr
from harness import Case
from helpers import copy, disk_full, image, predict, tif

Z = partial(Case, command="predict (zarr)")


def zin(w, f):
    return copy(w.zarr, f / "in.zarr")


def chunk_files(path):
    return sorted(p for p in (path / "0").rglob("*") if p.is_file() and not p.name.startswith("."))


def missing_chunk(*extra, expect="error"):
    def make(w, f):
        src = zin(w, f)
        chunk_files(src)[3].unlink()
        return predict(w, f, *extra, source=src, output="out.zarr")

    return make


def corrupt_chunk(w, f):
    src = zin(w, f)
    chunk_files(src)[5].write_bytes(b"garbage" * 20)
    return predict(w, f, source=src, output="out.zarr")


def truncated_chunk(w, f):
    src = zin(w, f)
    c = chunk_files(src)[2]
    c.write_bytes(c.read_bytes()[:10])
    return predict(w, f, source=src, output="out.zarr")


def attrs(change):
    def make(w, f):
        src = zin(w, f)
        meta = json.loads((src / ".zattrs").read_text())
        change(meta)
        (src / ".zattrs").write_text(json.dumps(meta))
        return predict(w, f, source=src, output="out.zarr")

    return make


def changed_input(w, f):
    """A run interrupted after its first block, then rerun on other data of the same shape."""
    from carekit.chunked import restore_chunked

    src = zin(w, f)
    calls = []

    def stop(block):
        calls.append(block)
        raise KeyboardInterrupt

    with contextlib.suppress(KeyboardInterrupt):
        restore_chunked(w.model, src, f / "out.zarr", memory=2**24, precision="float32", progress=False, on_block=stop)
    array = zarr.open_array(str(src / "0"), mode="r+")
    array[...] = np.asarray(array[...])[::-1] * 3
    return predict(w, f, "--memory", str(2**24 / 2**30), source=src, output="out.zarr")


def damaged_partial(*extra):
    def make(w, f):
        os.makedirs(f / "out.zarr.partial" / "blocks")
        (f / "out.zarr.partial" / "chunked.json").write_text('{"model": ')
        return predict(w, f, *extra, source=w.zarr, output="out.zarr")

    return make


def plain_array(w, f):
    a = zarr.create_array(str(f / "plain.zarr"), shape=(40, 40), chunks=(20, 20), dtype="float32")
    a[:] = image(shape=(40, 40))
    return predict(w, f, "--axes", "YX", source=f / "plain.zarr", output="out.zarr")


CASES = [
    Z(name="missing chunk", kind="fault", make=missing_chunk(), match="chunks are missing"),
    Z(name="missing chunk, allowed", kind="fault", make=missing_chunk("--allow-missing-chunks"), expect="ok"),
    Z(name="corrupt chunk", kind="fault", make=corrupt_chunk, match="damaged"),
    Z(name="truncated chunk", kind="fault", make=truncated_chunk, match="damaged"),
    Z(name="level 0 deleted", kind="fault", make=lambda w, f: (shutil.rmtree(zin(w, f) / "0"),
                                                               predict(w, f, source=f / "in.zarr", output="o.zarr"))[1],
      match="missing"),
    Z(name="no OME metadata", kind="hostile", make=attrs(lambda m: m.clear()), match="multiscales"),
    Z(name="multiscales a string", kind="hostile", make=attrs(lambda m: m.update(multiscales="x")),
      match="multiscales"),
    Z(name="datasets empty", kind="hostile", make=attrs(lambda m: m["multiscales"][0].update(datasets=[])),
      match="multiscales"),
    Z(name="dataset path a number", kind="hostile",
      make=attrs(lambda m: m["multiscales"][0]["datasets"][0].update(path=0)), match="multiscales"),
    Z(name="dataset path escapes", kind="hostile",
      make=attrs(lambda m: m["multiscales"][0]["datasets"][0].update(path="../../x")), match="missing|damaged"),
    Z(name="axes fewer than dimensions", kind="hostile",
      make=attrs(lambda m: m["multiscales"][0]["axes"].pop()), match="names 1 axes"),
    Z(name="axes a string", kind="hostile", make=attrs(lambda m: m["multiscales"][0].update(axes="yx")),
      match="axes"),
    Z(name="axis unknown", kind="hostile",
      make=attrs(lambda m: m["multiscales"][0]["axes"][0].update(name="angle")), match="angle"),
    Z(name="scale negative", kind="hostile", make=attrs(lambda m: m["multiscales"][0]["datasets"][0].update(
        coordinateTransformations=[{"type": "scale", "scale": [-1, 1]}])), match="scale"),
    Z(name="scale of the wrong length", kind="hostile", make=attrs(lambda m: m["multiscales"][0]["datasets"][0].update(
        coordinateTransformations=[{"type": "scale", "scale": [1, 1, 1]}])), match="scale"),
    Z(name="input with NaN", kind="bad input", make=lambda w, f: (
        zarr.open_array(str(zin(w, f) / "0"), mode="r+").__setitem__((1, 1), np.nan),
        predict(w, f, source=f / "in.zarr", output="out.zarr"))[1], match="NaN"),
    Z(name="plain zarr array", kind="bad input", make=plain_array, expect="ok"),
    Z(name="output is the input", kind="bad input", make=lambda w, f: predict(w, f, source=zin(w, f),
                                                                            output=f / "in.zarr"), match="input"),
    Z(name="output is the input, --overwrite", kind="bad input",
      make=lambda w, f: predict(w, f, "--overwrite", source=zin(w, f), output=f / "in.zarr"), match="input"),
    Z(name="output inside the input", kind="bad input",
      make=lambda w, f: predict(w, f, "--overwrite", source=zin(w, f), output=f / "in.zarr" / "r.zarr"),
      match="input"),
    Z(name="input inside the output, --overwrite", kind="bad input",
      make=lambda w, f: (copy(w.zarr, f / "big.zarr" / "in.zarr"),
                         predict(w, f, "--overwrite", source=f / "big.zarr" / "in.zarr", output=f / "big.zarr"))[1],
      match="delete the input|input"),
    Z(name="output exists", kind="bad input", make=lambda w, f: predict(w, f, source=w.zarr, output=zin(w, f)),
      match="already exists"),
    Z(name="output exists, --overwrite", kind="bad input",
      make=lambda w, f: (copy(w.zarr, f / "old.zarr"), predict(w, f, "--overwrite", source=w.zarr,
                                                               output=f / "old.zarr"))[1], expect="ok",
      changes=("old.zarr/*",)),
    Z(name="output inside a model folder", kind="bad input",
      make=lambda w, f: predict(w, f, model=copy(w.model, f / "m"), source=w.zarr, output=f / "m" / "r.zarr"),
      match="model folder"),
    Z(name="output not .zarr", kind="bad input", make=lambda w, f: predict(w, f, source=w.zarr, output="o.tif"),
      match="ending in .zarr"),
    Z(name="folder of TIFFs to one zarr", kind="bad input",
      make=lambda w, f: predict(w, f, source=w.low, output="o.zarr"), match="one by one"),
    Z(name="TIFF to zarr", kind="bad input", make=lambda w, f: predict(w, f, output="o.zarr"), expect="ok"),
    Z(name="TIFF with NaN to zarr", kind="bad input",
      make=lambda w, f: predict(w, f, source=tif(f, "n.tif", np.full((40, 40), np.nan, np.float32), "YX"),
                                output="o.zarr"), match="NaN"),
    Z(name="zarr with --tta", kind="bad input", make=lambda w, f: predict(w, f, "--tta", source=w.zarr,
                                                                       output="o.zarr"), match="--tta"),
    Z(name="zarr with --uncertainty", kind="bad input",
      make=lambda w, f: predict(w, f, "--uncertainty", "u", model=w.prob, source=w.zarr, output="o.zarr"),
      match="uncertainty"),
    Z(name="resume after the input changed", kind="fault", make=changed_input, match="input content",
      keep_partial=True),
    Z(name="unfinished run's record damaged", kind="fault", make=damaged_partial(), match="damaged.*--overwrite",
      keep_partial=True),
    Z(name="unfinished run's record damaged, --overwrite", kind="fault", make=damaged_partial("--overwrite"),
      expect="ok", changes=("out.zarr.partial/*",)),
    Z(name="disk full while restoring", kind="fault", make=lambda w, f: predict(w, f, source=w.zarr, output="o.zarr"),
      fault=disk_full("carekit.chunked.os.replace"), match="disk is full", keep_partial=True),
]  # fmt: skip
