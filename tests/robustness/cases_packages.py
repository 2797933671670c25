"""Robustness cases of bioimage.io packages given to 'carekit predict --model PKG.zip': damaged and
hostile zips and descriptions, weights that are code, and valid packages that use the spec's defaults."""

from __future__ import annotations

import copy as copying
import struct
import zipfile
from functools import partial

import yaml
from harness import Case
from helpers import predict, text
from world import Affine, package_rdf, sha256, torchscript_bytes, write_package

P = partial(Case, command="predict", kind="hostile")


def onnx_of(world) -> bytes:
    with zipfile.ZipFile(world.package) as z:
        return z.read("weights.onnx")


def pkg(change=None, members=None, *extra, rdf_text: bytes | None = None):
    """A case's package: the world's, its description edited by ``change(rdf)`` and its members by
    ``members(dict)``; ``rdf_text`` replaces the description outright."""

    def make(w, f):
        weights = onnx_of(w)
        rdf = package_rdf({"onnx": weights})
        files = {"weights.onnx": weights}
        if change is not None:
            rdf = change(rdf) or rdf
        if members is not None:
            new = members(files)
            files = files if new is None else new
        path = f / "pkg.zip"
        if rdf_text is not None:
            with zipfile.ZipFile(path, "w") as z:
                z.writestr("rdf.yaml", rdf_text)
                for name, data in files.items():
                    z.writestr(name, data)
        else:
            write_package(path, rdf, files)
        return predict(w, f, *extra, model=path)

    return make


def edit(path: str, value):
    """Set a field of the description (``inputs.0.axes.2.id``); ``...`` deletes it."""

    def change(rdf):
        *parents, last = path.split(".")
        node = rdf
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        key = int(last) if isinstance(node, list) else last
        if value is ...:
            del node[key]
        else:
            node[key] = copying.deepcopy(value)

    return change


def with_torchscript(only: bool):
    code = []

    def weights() -> bytes:
        if not code:
            code.append(torchscript_bytes(Affine()))
        return code[0]

    def change(rdf):
        rdf["weights"]["torchscript"] = {"source": "weights.pt", "sha256": sha256(weights())}
        if only:
            del rdf["weights"]["onnx"]

    def members(files):
        files["weights.pt"] = weights()

    return change, members


def garbage_torchscript(rdf):
    TS_CHANGE(rdf)
    rdf["weights"]["torchscript"].pop("sha256")


def declared_size(w, f):
    """A zip whose central directory declares 2 GiB for its weights (their real size is small)."""
    argv = pkg()(w, f)
    data = bytearray((f / "pkg.zip").read_bytes())
    at = data.find(b"PK\x01\x02")
    while at >= 0:
        length = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46 : at + 46 + length] == b"weights.onnx":
            struct.pack_into("<I", data, at + 24, 2**31)  # the uncompressed size it declares
        at = data.find(b"PK\x01\x02", at + 4)
    (f / "pkg.zip").write_bytes(bytes(data))
    return argv


def no_rdf(w, f):
    with zipfile.ZipFile(f / "pkg.zip", "w") as z:
        z.writestr("weights.onnx", onnx_of(w))
    return predict(w, f, model=f / "pkg.zip")


def big_description(w, f):
    with zipfile.ZipFile(f / "pkg.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("rdf.yaml", "#" * (17 * 2**20))
    return predict(w, f, model=f / "pkg.zip")


def fixed_size(n):
    return edit("inputs.0.axes.2.size", n)


def no_ids(rdf):
    for t in ("inputs", "outputs"):
        for axis in rdf[t][0]["axes"]:
            if axis["type"] == "space" and axis["id"] == "x":
                del axis["id"]  # a space axis without id is x
        del rdf[t][0]["id"]  # tensor ids default to input / output
    for axis in rdf["outputs"][0]["axes"]:
        if isinstance(axis.get("size"), dict) and "tensor_id" in axis["size"]:
            axis["size"]["tensor_id"] = "input"


TS_CHANGE, TS_MEMBERS = with_torchscript(only=True)
BOTH_CHANGE, BOTH_MEMBERS = with_torchscript(only=False)

CASES = [
    P(name="package not a zip", make=lambda w, f: predict(w, f, model=text(f, "pkg.zip", "PK but not really")),
      match="model folder|package"),
    P(name="package truncated zip", make=lambda w, f: predict(w, f, model=text(f, "pkg.zip", w.package.read_bytes()[
        : len(w.package.read_bytes()) // 2])), match="pkg.zip"),
    P(name="package without rdf.yaml", make=no_rdf, match="no rdf.yaml"),
    P(name="rdf.yaml not YAML", make=pkg(rdf_text=b"inputs: [\n  - {"), match="not valid YAML"),
    P(name="rdf.yaml a list", make=pkg(rdf_text=b"- 1\n- 2\n"), match="does not describe"),
    P(name="rdf.yaml empty", make=pkg(rdf_text=b""), match="does not describe"),
    P(name="rdf.yaml YAML bomb", make=pkg(rdf_text=b'a: &a ["x","x"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n'
                                           b'c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n'
                                           b'e: [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n'), match="inputs"),
    P(name="rdf.yaml of 17 MB", make=big_description, match="declares|bytes"),
    P(name="rdf.yaml python tag", make=pkg(rdf_text=b"x: !!python/object/apply:os.system ['echo hacked']\n"),
      match="not valid YAML"),
    P(name="weights declare 2 GiB", make=declared_size, match="GiB"),
    P(name="weights sha256 mismatch", make=pkg(members=lambda m: {"weights.onnx": m["weights.onnx"] + b"\0"}),
      match="sha256"),
    P(name="listed file sha256 mismatch", make=pkg(lambda r: r.update(covers=[{"source": "c.png", "sha256": "0" * 64}]),
                                                   lambda m: {**m, "c.png": b"png"}), match="c.png.*sha256"),
    P(name="listed file missing", make=pkg(lambda r: r.update(documentation={"source": "README.md",
                                                                             "sha256": "0" * 64})), match="lacks"),
    P(name="package weights missing", make=pkg(members=lambda m: {}), match="lacks"),
    P(name="weights a URL", make=pkg(edit("weights.onnx", {"source": "https://example.com/w.onnx"})),
      match="downloads nothing"),
    P(name="weights path traversal", make=pkg(edit("weights.onnx", {"source": "../../etc/passwd"})),
      match="lacks"),
    P(name="weights garbage ONNX", make=pkg(edit("weights.onnx.sha256", ...),
                                            lambda m: {"weights.onnx": b"not a graph"}), match="ONNX weights"),
    P(name="TorchScript weights only", make=pkg(TS_CHANGE, TS_MEMBERS), match="--allow-torchscript"),
    P(name="TorchScript weights, allowed", make=pkg(TS_CHANGE, TS_MEMBERS, "--allow-torchscript"), expect="ok"),
    P(name="TorchScript weights garbage, allowed", make=pkg(garbage_torchscript, lambda m: {"weights.pt": b"zip?"},
                                                            "--allow-torchscript"), match="TorchScript weights"),
    P(name="ONNX and TorchScript weights: ONNX runs", make=pkg(BOTH_CHANGE, BOTH_MEMBERS), expect="ok"),
    P(name="state-dict weights only", make=pkg(edit("weights", {"pytorch_state_dict": {"source": "w.pt"}})),
      match="no ONNX or TorchScript"),
    P(name="weights field a list", make=pkg(edit("weights", ["onnx"])), match="weights"),
    P(name="inputs missing", make=pkg(edit("inputs", ...)), match="inputs is missing"),
    P(name="inputs a string", make=pkg(edit("inputs", "raw")), match="inputs has the wrong type"),
    P(name="two inputs", make=pkg(lambda r: r["inputs"].append(copying.deepcopy(r["inputs"][0]))),
      match="one input"),
    P(name="axes missing", make=pkg(edit("inputs.0.axes", ...)), match="axes is missing"),
    P(name="axis type missing", make=pkg(edit("inputs.0.axes.2.type", ...)), match="type is missing"),
    P(name="time axis", make=pkg(edit("inputs.0.axes.0", {"type": "time"})), match="time axis"),
    P(name="channel names missing", make=pkg(edit("inputs.0.axes.1.channel_names", ...)), match="channel_names"),
    P(name="channel names a number", make=pkg(edit("inputs.0.axes.1.channel_names", 3)), match="channel_names"),
    P(name="three channels for a one-channel image", make=pkg(edit("inputs.0.axes.1.channel_names", ["a", "b", "c"])),
      match="channel"),
    P(name="space axis twice", make=pkg(edit("inputs.0.axes.3.id", "y")), match="each axis once"),
    P(name="format_version 0.3", make=pkg(edit("format_version", "0.3.6")), match="0.4 and 0.5"),
    P(name="processing step custom", make=pkg(edit("inputs.0.preprocessing", [{"id": "custom"}])),
      match="does not implement"),
    P(name="processing gain a string", make=pkg(edit("outputs.0.postprocessing.0.kwargs.gain", "two")),
      match="gain"),
    P(name="processing gain NaN", make=pkg(edit("outputs.0.postprocessing.0.kwargs.gain", float("nan"))),
      match="gain"),
    P(name="scale_range min above max", make=pkg(edit("inputs.0.preprocessing", [
        {"id": "scale_range", "kwargs": {"min_percentile": 90, "max_percentile": 10}}])), match="below"),
    P(name="processing kwargs a list", make=pkg(edit("outputs.0.postprocessing.0.kwargs", [1])), match="kwargs"),
    P(name="output with a z axis", make=pkg(lambda r: r["outputs"][0]["axes"].insert(2, {"type": "space", "id": "z"})),
      match="spatial axes"),
    P(name="network returns two tensors, rdf one more", make=pkg(
        lambda r: r["outputs"].append(copying.deepcopy(r["outputs"][0]) | {"id": "extra"})), match="returned 1"),
    P(name="fixed input size smaller than the image", make=pkg(fixed_size(16)), match="takes exactly 16"),
    P(name="fixed input size larger than the image", make=pkg(fixed_size(200)), expect="ok"),
    P(name="minimum size larger than the image", make=pkg(edit("inputs.0.axes.2.size", {"min": 100, "step": 16})),
      expect="ok"),
    P(name="minimum size absurd", make=pkg(edit("inputs.0.axes.2.size", {"min": 2**20, "step": 1})),
      match="smaller than the package"),
    P(name="size a string", make=pkg(edit("inputs.0.axes.2.size", "big")), match="size"),
    P(name="spec defaults: no ids", make=pkg(no_ids), expect="ok"),
    P(name="processing producing NaN", make=pkg(edit("outputs.0.postprocessing", [
        {"id": "scale_linear", "kwargs": {"gain": 3e38, "offset": 0}}, {"id": "scale_linear",
                                                                          "kwargs": {"gain": 3e38}}])),
      match="NaN or infinite"),
    P(name="package with --uncertainty", make=pkg(None, None, "--uncertainty", "maps"), match="carekit model folder"),
    P(name="output onto the package", make=lambda w, f: predict(w, f, model=w.package, output=w.package),
      match="overwrite the input"),
    P(name="valid package", make=pkg(), expect="ok"),
    P(name="valid package, 0.4 description", make=pkg(lambda r: yaml.safe_load(V04)), expect="ok"),
]  # fmt: skip

V04 = """
format_version: 0.4.10
type: model
name: tiny 0.4
inputs:
  - name: raw
    axes: bcyx
    data_type: float32
    shape: {min: [1, 1, 8, 8], step: [0, 0, 1, 1]}
    preprocessing:
      - name: zero_mean_unit_variance
        kwargs: {mode: per_sample, axes: xy}
outputs:
  - name: out
    axes: bcyx
    data_type: float32
    shape: {reference_tensor: raw, scale: [1, 1, 1, 1], offset: [0, 0, 0, 0]}
    postprocessing:
      - name: scale_linear
        kwargs: {gain: 2.0, offset: 1.0, axes: xy}
weights:
  onnx: {source: weights.onnx}
"""
