"""Robustness cases of damaged or hostile model folders: config.json of every wrong shape, weights,
ensemble indexes (through 'carekit info' and 'carekit predict')."""

from __future__ import annotations

import json
import os
from functools import partial

import numpy as np
import torch
from harness import Case
from helpers import copy, model_with, predict, setting, text
from safetensors.torch import load_file, save_file

INFO = partial(Case, command="info", kind="hostile")
P = partial(Case, command="predict", kind="hostile")


def info_of(change, source: str = "model"):
    return lambda w, f: ["info", "--model", model_with(w, f, change, source)]


def predict_with(change, *extra):
    return lambda w, f: predict(w, f, *extra, model=model_with(w, f, change))


def pop(key: str):
    return lambda c: c.pop(key) and None


def huge_file(w, f):
    m = copy(w.model, f / "model")
    with open(m / "config.json", "r+b") as fh:
        fh.truncate(100 * 2**20)  # sparse: costs nothing
    return ["info", "--model", m]


CONFIGS = [
    ("config.json null", lambda c: b"null", "holds a JSON NoneType"),
    ("config.json a list", lambda c: [c], "list"),
    ("config.json a string", lambda c: "model", "str"),
    ("config.json a number", lambda c: 3, "int"),
    ("config.json empty", lambda c: b"", "not valid JSON"),
    ("config.json not UTF-8", lambda c: b"\xff\xfe\x00{", "not valid JSON"),
    ("config.json truncated", lambda c: json.dumps(c)[:40].encode(), "not valid JSON"),
    ("config.json nested 100000 deep", lambda c: b"[" * 100000 + b"]" * 100000, "not valid JSON|list"),
    ("format_version missing", pop("format_version"), "format"),
    ("format_version from the future", setting("format_version", 99), "newer"),
    ("format_version a string", setting("format_version", "1"), "format"),
    ("format_version true", setting("format_version", True), "format"),
    ("unknown top-level key", setting("colour", "red"), "unknown settings colour"),
    ("mode unknown", setting("mode", "sharpen"), "mode 'sharpen'"),
    ("mode a list", setting("mode", ["denoise"]), "mode"),
    ("mode null", setting("mode", None), "mode"),
    ("axes a number", setting("axes", 5), "axes"),
    ("axes unknown letters", setting("axes", "QRS"), "axes"),
    ("axes without the network's", setting("axes", "ZX"), "axes"),
    ("spatial 4D", setting("spatial", "TZYX"), "spatial"),
    ("n_channel_in 0", setting("n_channel_in", 0), "channels"),
    ("n_channel_in a million", setting("n_channel_in", 10**6), "channels"),
    ("n_channel_out -1", setting("n_channel_out", -1), "channels"),
    ("n_channel_in 1.5", setting("n_channel_in", 1.5), "n_channel_in must be an integer"),
    ("n_channel_in true", setting("n_channel_in", True), "n_channel_in must be an integer"),
    ("net a string", setting("net", "unet"), "net must be"),
    ("net a list", setting("net", [1, 2]), "net must be"),
    ("net unknown key", setting("net.width", 3), "width"),
    ("net.depth a string", setting("net.depth", "two"), "depth must be an integer"),
    ("net.depth 0", setting("net.depth", 0), "depth"),
    ("net.depth 50", setting("net.depth", 50), "depth"),
    ("net.n_first 10^9", setting("net.n_first", 10**9), "n_first"),
    ("net.n_first 0", setting("net.n_first", 0), "n_first"),
    ("net terabytes of parameters", lambda c: c["net"].update(depth=6, n_first=1024, kernel_size=31), "parameters"),
    ("net.kernel_size 10001", setting("net.kernel_size", 10001), "kernel size"),
    ("net.kernel_size even", setting("net.kernel_size", 4), "kernel size"),
    ("net.kernel_size negative", setting("net.kernel_size", -3), "kernel size"),
    ("net.n_conv 1000", setting("net.n_conv", 1000), "n_conv"),
    ("net.residual a string", setting("net.residual", "yes"), "residual"),
    ("net.probabilistic null", setting("net.probabilistic", None), "probabilistic"),
    ("train a string", setting("train", "fast"), "train must be"),
    ("train.patch_size a string", setting("train.patch_size", "64x64"), "patch_size"),
    ("train.patch_size 10^9", setting("train.patch_size", [10**9, 10**9]), "patch size"),
    ("train.patch_size 4 axes", setting("train.patch_size", [8, 8, 8, 8]), "patch size"),
    ("train.batch_size 10^12", setting("train.batch_size", 10**12), "batch size"),
    ("train.learning_rate NaN", setting("train.learning_rate", float("nan")), "learning_rate must be a finite"),
    ("train.learning_rate Infinity", setting("train.learning_rate", float("inf")), "learning_rate must be a finite"),
    ("train.seed -1", setting("train.seed", -1), "seed"),
    ("train.loss unknown", setting("train.loss", "ssim"), "loss"),
    ("train.precision unknown", setting("train.precision", "float8"), "precision"),
    ("train.epochs 10^12", setting("train.epochs", 10**12), "epochs"),
    ("intensity_map gain NaN", setting("intensity_map", {"gain": [float("nan")], "offset": [0]}), "intensity_map"),
    ("intensity_map gain Infinity", setting("intensity_map", {"gain": [float("inf")], "offset": [0]}), "intensity"),
    ("intensity_map two channels for one", setting("intensity_map", {"gain": [1, 1], "offset": [0, 0]}), "intensity"),
    ("intensity_map a list", setting("intensity_map", [1, 0]), "intensity_map must be"),
    ("intensity_map gain missing", setting("intensity_map", {"offset": [0]}), "intensity_map.gain"),
    ("calibration garbage", setting("calibration", {"pit": "uniform"}), "calibration"),
    ("calibration decreasing", setting("calibration", {"pit": list(np.linspace(1, 0, 201))}), "calibration"),
    ("synthetic part a number", setting("synthetic", 7), "synthetic"),
]


def weights_with(tensors_change):
    def make(w, f):
        m = copy(w.model, f / "model")
        tensors = {k: v.clone() for k, v in load_file(str(w.model / "weights.safetensors")).items()}
        save_file(tensors_change(tensors), str(m / "weights.safetensors"))
        return predict(w, f, model=m)

    return make


def damaged(damage):
    """A copy of the world's model, ``damage(folder)`` done to it."""

    def make(w, f):
        m = copy(w.model, f / "m")
        damage(m)
        return predict(w, f, model=m)

    return make


def truncate(path, size):
    path.write_bytes(path.read_bytes()[:size])


def first_float(tensors, value):
    key = next(k for k, t in tensors.items() if t.is_floating_point())
    tensors[key] = torch.full_like(tensors[key], value)
    return tensors


def ensemble(members, *, extra=None):
    def make(w, f):
        d = f / "ens"
        d.mkdir()
        copy(w.model, d / "member-0")
        copy(w.model, d / "member-1")
        names = members(d) if callable(members) else members
        text(d, "ensemble.json", json.dumps({"format_version": 1, "members": names, **(extra or {})}))
        return predict(w, f, model=d)

    return make


def link_outside(d):
    os.symlink(d.parent / "elsewhere", d / "linked")
    copy(d / "member-0", d.parent / "elsewhere")
    return ["member-0", "linked"]


WEIGHTS = [
    P(name="weights missing", make=damaged(lambda m: (m / "weights.safetensors").unlink()), match="weights missing"),
    P(name="weights truncated", make=damaged(lambda m: truncate(m / "weights.safetensors", 500)), match="damaged"),
    P(name="weights garbage", make=damaged(lambda m: text(m, "weights.safetensors", os.urandom(4000))),
      match="damaged"),
    P(name="weights a pickle", make=damaged(lambda m: torch.save({"conv": torch.zeros(3)}, m / "weights.safetensors")),
      match="damaged"),
    P(name="weights hold NaN", make=weights_with(lambda t: first_float(t, float("nan"))), match="NaN"),
    P(name="weights hold Inf", make=weights_with(lambda t: first_float(t, float("inf"))), match="infinite"),
    P(name="weights of another shape", make=weights_with(
        lambda t: {k: torch.zeros(*(s + 1 for s in v.shape)) for k, v in t.items()}), match="do not fit"),
    P(name="weights with a missing tensor", make=weights_with(lambda t: dict(list(t.items())[1:])),
      match="do not fit"),
    P(name="weights huge values", make=weights_with(lambda t: {k: torch.full_like(v, 1e30) if v.is_floating_point()
                                                               else v for k, v in t.items()}), match="NaN or infinite"),
    P(name="model folder missing", make=lambda w, f: predict(w, f, model=f / "nope"), match="no such model folder"),
    P(name="model is a plain file", make=lambda w, f: predict(w, f, model=text(f, "m.bin", "x")),
      match="model folder"),
    P(name="model folder without config.json", make=damaged(lambda m: (m / "config.json").unlink()),
      match="config.json: missing"),
    P(name="config.json is a folder", make=damaged(lambda m: ((m / "config.json").unlink(),
                                                               (m / "config.json").mkdir())), match="config.json"),
    P(name="ensemble member ../ escapes", make=ensemble(["member-0", "../elsewhere"]), match="not a folder name"),
    P(name="ensemble member absolute path", make=ensemble(["member-0", "/etc"]), match="not a folder name"),
    P(name="ensemble member a link outside", make=ensemble(link_outside), match="outside"),
    P(name="ensemble members not a list", make=ensemble("member-0"), match="members"),
    P(name="ensemble members empty", make=ensemble([]), match="members"),
    P(name="ensemble member a number", make=ensemble([0, 1]), match="not a folder name"),
    P(name="ensemble member missing", make=ensemble(["member-0", "member-7"]), match="member-7"),
    P(name="ensemble calibration garbage", make=ensemble(["member-0", "member-1"], extra={"calibration": [1]}),
      match="calibration"),
    P(name="ensemble format from the future", make=ensemble(["member-0"], extra={"format_version": 5}),
      match="newer"),
    P(name="ensemble of two members", make=ensemble(["member-0", "member-1"]), expect="ok"),
]  # fmt: skip

CASES = (
    [INFO(name=name, make=info_of(change), match=match) for name, change, match in CONFIGS]
    + [P(name="predict: " + name, make=predict_with(change), match=match) for name, change, match in CONFIGS[::4]]
    + [INFO(name="config.json 100 MB", make=huge_file, match="too large")]
    + WEIGHTS
)
