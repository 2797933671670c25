"""Robustness cases of 'carekit evaluate', 'export', 'synth' and 'calibrate'."""

from __future__ import annotations

import json
import os
from functools import partial

import numpy as np
from cases_predict import dead_pid
from harness import Case
from helpers import copy, image, text, tif
from world import RECIPE

E = partial(Case, command="evaluate", kind="bad input")
X = partial(Case, command="export", kind="bad input")
S = partial(Case, command="synth", kind="bad input")
C = partial(Case, command="calibrate", kind="bad input")


def evaluate(prediction, truth, match="", expect="error", name=""):
    def make(w, f):
        return ["evaluate", "--prediction", tif(f, "p.tif", prediction()), "--truth", tif(f, "t.tif", truth())]

    return E(name=name, make=make, match=match, expect=expect)


def noisy(seed=0, shape=(32, 32)):
    return lambda: image(seed, shape)


EVALUATE = [
    evaluate(noisy(), lambda: np.full((32, 32), 5.0, np.float32), "constant", name="constant truth"),
    evaluate(noisy(), lambda: np.zeros((32, 32), np.uint16), "constant", name="all-zero truth"),
    evaluate(lambda: np.ones((1, 1), np.float32), lambda: np.ones((1, 1), np.float32), "too small", name="1 pixel"),
    evaluate(noisy(0, (1, 50)), noisy(1, (1, 50)), "too small", name="one row"),
    evaluate(noisy(0, (2, 2)), noisy(1, (2, 2)), "too small", name="2x2 pixels"),
    evaluate(noisy(0, (2, 30, 30)), noisy(1, (2, 30, 30)), "too small", name="two planes"),
    evaluate(noisy(0, (3, 30, 30)), noisy(1, (3, 30, 30)), "", expect="ok", name="three planes"),
    evaluate(noisy(0, (3, 3)), noisy(1, (3, 3)), "", expect="ok", name="3x3 pixels"),
    evaluate(noisy(0, (32, 32)), noisy(1, (30, 32)), "shape", name="shapes differ"),
    evaluate(lambda: np.where(image(0, (32, 32)) > 200, np.nan, 1.0), noisy(1), "NaN", name="NaN in the prediction"),
    evaluate(noisy(0), lambda: np.where(image(1, (32, 32)) > 200, np.inf, image(1, (32, 32))), "infinite",
             name="Inf in the truth"),
    evaluate(noisy(0), noisy(0), "", expect="ok", name="prediction equals the truth"),
    evaluate(lambda: np.full((32, 32), 3.0, np.float32), noisy(0), "", expect="ok", name="constant prediction"),
    evaluate(lambda: image().astype(np.complex64), noisy(0), "pixel type", name="complex prediction"),
    evaluate(lambda: np.iinfo(np.int64).max - image().astype(np.int64), lambda: image().astype(np.int64), "",
             expect="ok", name="int64 extremes"),
    E(name="prediction missing", make=lambda w, f: ["evaluate", "--prediction", f / "p.tif", "--truth", w.image],
      match="no such file"),
    E(name="truth a text file", make=lambda w, f: ["evaluate", "--prediction", w.image, "--truth",
                                                   text(f, "t.tif", "x")], match="cannot read"),
]  # fmt: skip


def export(*extra, out="m.zip", model=None):
    return lambda w, f: ["export", "--model", model or w.model, "--out", f / out, *extra]


EXPORT = [
    X(name="--out exists", make=lambda w, f: (text(f, "m.zip", "old"), export()(w, f))[1], match="already exists"),
    X(name="--out inside the model folder", make=lambda w, f: export(model=copy(w.model, f / "m"), out="m/p.zip")(w, f),
      match="model folder"),
    X(name="--out is the sample", make=lambda w, f: export("--sample", copy(w.image, f / "s.zip"), out="s.zip")(w, f),
      match="overwrite the input"),
    X(name="--out not .zip", make=export(out="m.tar"), match=".zip"),
    X(name="probabilistic ensemble", make=lambda w, f: (copy(w.prob, f / "e" / "member-0"),
                                                       copy(w.prob, f / "e" / "member-1"),
                                                       text(f, "e/ensemble.json", json.dumps(
                                                           {"format_version": 1, "members": ["member-0", "member-1"]})),
                                                       export(model=f / "e")(w, f))[3], match="ensemble"),
    X(name="--sample too small", make=lambda w, f: export("--sample", tif(f, "s.tif", image(0, (4, 4)), "YX"))(w, f),
      match="at least"),
    X(name="--sample with NaN", make=lambda w, f: export("--sample", tif(f, "s.tif", np.full((64, 64), np.nan,
                                                                                           np.float32), "YX"))(w, f),
      match="NaN"),
    X(name="--sample with 3 channels", make=lambda w, f: export("--sample", tif(f, "s.tif", image(0, (3, 64, 64))),
                                                                "--axes", "CYX")(w, f), match="channel"),
    X(name="model missing", make=lambda w, f: export(model=f / "none")(w, f), match="no such model"),
    X(name="--license not SPDX", make=export("--license", "do whatever"), match="rejects|license"),
    X(name="a package", make=export(), expect="ok"),
    X(name="stale .partial of a killed export is removed", kind="fault", expect="ok", changes=(".m.*.partial.zip",),
      make=lambda w, f: (text(f, f".m.{dead_pid()}.partial.zip", b"PK half"), export()(w, f))[1]),
]  # fmt: skip


def recipe(change=None, name="r.json", raw: bytes | None = None):
    def make(w, f, *extra):
        if raw is not None:
            path = text(f, name, raw)
        else:
            r = json.loads(json.dumps(RECIPE))
            if change is not None:
                r = change(r) or r
            path = text(f, name, json.dumps(r))
        return ["synth", "--recipe", path, "--n", "2", "--out", f / "pairs", *extra]

    return make


def put(path: str, value):
    def change(r):
        *parents, last = path.split(".")
        node = r
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[int(last) if isinstance(node, list) else last] = value

    return change


def psf_beside(w, f):
    tif(f, "psf.tif", np.ones((5, 5), np.float32))
    return recipe(put("imaging.psf", "psf.tif"))(w, f)


SYNTH = [
    S(name="recipe missing", make=lambda w, f: ["synth", "--recipe", f / "r.json", "--out", f / "o"],
      match="no such recipe"),
    S(name="recipe invalid JSON", make=recipe(raw=b"{shape: 3"), match="not valid JSON"),
    S(name="recipe not UTF-8", make=recipe(raw=b"\xff\xfe{}"), match="not valid JSON"),
    S(name="recipe a list", make=recipe(raw=b"[1, 2]"), match="list"),
    S(name="recipe NaN photons", make=recipe(raw=json.dumps({**RECIPE, "imaging": {"photons": float("nan")}}).encode()),
      match="photons"),
    S(name="shape too large", make=recipe(put("shape", [100000, 100000])), match="too large"),
    S(name="shape floats", make=recipe(put("shape", [32.5, 32])), match="shape"),
    S(name="shape true", make=recipe(put("shape", [True, 32])), match="shape"),
    S(name="pairs 0", make=recipe(put("pairs", 0)), match="pairs"),
    S(name="pairs 10^9", make=recipe(put("pairs", 10**9)), match="pairs"),
    S(name="seed negative", make=recipe(put("seed", -1)), match="seed"),
    S(name="seed a string", make=recipe(put("seed", "zero")), match="seed"),
    S(name="density 10^9", make=recipe(put("channels.0.0.density", 1e9)), match="density"),
    S(name="density negative", make=recipe(put("channels.0.0.density", -1)), match="density"),
    S(name="radius 10^6", make=recipe(put("channels.0", [{"type": "granules", "radius": 1e6}])), match="radius"),
    S(name="intensity reversed", make=recipe(put("channels.0.0.intensity", [1, 0])), match="intensity"),
    S(name="unknown structure parameter", make=recipe(put("channels.0.0.thickness", 2)), match="unknown parameter"),
    S(name="structure type a list", make=recipe(put("channels.0.0.type", ["tubules"])), match="unknown"),
    S(name="channels empty", make=recipe(put("channels", [])), match="channels"),
    S(name="100 channels", make=recipe(put("channels", [[{"type": "tubules"}]] * 100)), match="channels"),
    S(name="imaging unknown key", make=recipe(put("imaging", {"colour": 1})), match="unknown key"),
    S(name="imaging NA above the index", make=recipe(put("imaging", {"na": 1.9})), match="NA"),
    S(name="imaging wavelength 0", make=recipe(put("imaging", {"wavelength": 0})), match="wavelength"),
    S(name="imaging photons negative", make=recipe(put("imaging", {"photons": -5})), match="photons"),
    S(name="imaging frames 1.5", make=recipe(put("imaging", {"frames": 1.5})), match="frames"),
    S(name="imaging pixel size 10^-3 nm", make=recipe(put("imaging", {"pixel_size": 0.001})), match="pixel_size"),
    S(name="PSF escapes the recipe's folder", kind="hostile", make=recipe(put("imaging.psf", "../psf.tif")),
      match="outside the recipe"),
    S(name="PSF an absolute path", kind="hostile", make=recipe(put("imaging.psf", "/etc/passwd")),
      match="outside the recipe"),
    S(name="PSF a number", kind="hostile", make=recipe(put("imaging.psf", 5)), match="psf"),
    S(name="PSF not a TIFF", make=lambda w, f: (text(f, "psf.tif", "x"),
                                                recipe(put("imaging.psf", "psf.tif"))(w, f))[1], match="cannot read"),
    S(name="PSF all zeros", make=lambda w, f: (tif(f, "psf.tif", np.zeros((5, 5), np.float32)),
                                               recipe(put("imaging.psf", "psf.tif"))(w, f))[1], match="no positive"),
    S(name="PSF 3D for 2D", make=lambda w, f: (tif(f, "psf.tif", np.ones((3, 5, 5), np.float32)),
                                               recipe(put("imaging.psf", "psf.tif"))(w, f))[1], match="3D PSF"),
    S(name="PSF beside the recipe", make=psf_beside, expect="ok"),
    S(name="--n 0", make=lambda w, f: [*recipe()(w, f)[:-4], "--n", "0", "--out", f / "o"], match="--n"),
    S(name="--n -1", make=lambda w, f: [*recipe()(w, f)[:-4], "--n", "-1", "--out", f / "o"], match="--n"),
    S(name="--n 10^9", make=lambda w, f: [*recipe()(w, f)[:-4], "--n", "1000000000", "--out", f / "o"], match="--n"),
    S(name="--seed -1", make=lambda w, f: recipe()(w, f, "--seed", "-1"), match="seed"),
    S(name="pairs already there", make=lambda w, f: (tif(f, "pairs/low/0000.tif", image()), recipe()(w, f))[1],
      match="already exists"),
    S(name="pairs already there, --overwrite", make=lambda w, f: (tif(f, "pairs/low/0000.tif", image()),
                                                                  recipe()(w, f, "--overwrite"))[1], expect="ok",
      changes=("pairs/low/0000.tif",)),
    S(name="--out inside a model folder", make=lambda w, f: [*recipe()(w, f)[:-1], copy(w.model, f / "m") / "p"],
      match="model folder"),
    S(name="--out a file", make=lambda w, f: [*recipe()(w, f)[:-1], text(f, "o", "x")], match="o"),
    S(name="pairs for inspection", make=recipe(), expect="ok"),
]  # fmt: skip


def calibrate(model_attr="prob", low=None, high=None):
    return lambda w, f: ["calibrate", "--model", getattr(w, model_attr), "--low", low(w, f) if low else w.low,
                         "--high", high(w, f) if high else w.high, "--axes", "YX"]  # fmt: skip


CALIBRATE = [
    C(name="point model", make=calibrate("model"), match="probabilistic"),
    C(name="truth of another shape", make=calibrate(low=lambda w, f: tif(f, "l/img0.tif", image(0, (80, 80))),
                                                    high=lambda w, f: tif(f, "h/img0.tif", image(1, (60, 80)))),
      match="shape"),
    C(name="NaN in the truth", make=calibrate(high=lambda w, f: tif(f, "h/img0.tif", np.full((80, 80), np.nan,
                                                                                            np.float32))),
      match="NaN"),
    C(name="--low missing folder", make=calibrate(low=lambda w, f: f / "none"), match="no such"),
    C(name="calibrates its own model copy", make=lambda w, f: ["calibrate", "--model", copy(w.prob, f / "p"),
                                                             "--low", w.low, "--high", w.high, "--axes", "YX"],
      expect="ok", changes=("p/config.json", "p/reliability.png")),
]  # fmt: skip

INFO = [
    Case(name="info on an empty folder", command="info", kind="bad input",
         make=lambda w, f: (os.makedirs(f / "e"), ["info", "--model", f / "e"])[1], match="config.json"),
    Case(name="info on a TIFF", command="info", kind="bad input", make=lambda w, f: ["info", "--model", w.image],
         match="model folder"),
    Case(name="info", command="info", kind="bad input", make=lambda w, f: ["info", "--model", w.model], expect="ok"),
    Case(name="no command", command="info", kind="bad input", make=lambda w, f: [], match="required"),
    Case(name="unknown command", command="info", kind="bad input", make=lambda w, f: ["sharpen"],
         match="invalid choice"),
]  # fmt: skip

CASES = EVALUATE + EXPORT + SYNTH + CALIBRATE + INFO
