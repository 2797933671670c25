"""Run a bioimage.io model package without carekit's training code.

``carekit predict --model MODEL.zip`` reads the package's ``rdf.yaml`` (spec 0.4 or 0.5, see
:mod:`carekit.rdf`), runs its ONNX weights through ONNX Runtime, applies the pre- and
post-processing steps the description lists, and gives the result back in the input's axes order.
Packages written by ``carekit export`` need no processing steps; common ones from other tools
(``scale_range``, ``scale_linear``, ``zero_mean_unit_variance``, ``clip``, ``sigmoid``, ``binarize``,
``ensure_dtype``, ...) are applied too.

A package may come from anyone, so it is read as data: members are streamed from the zip and
only those needed are read (never one whose declared size is unreasonable), every file the
description lists with a sha256 must match it, and TorchScript weights (which are code) run only
when the caller allows them (``allow_torchscript``; ``--allow-torchscript``).
"""

from __future__ import annotations

import hashlib
import io
import math
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from carekit.axes import from_net, rearrange, to_net
from carekit.errors import CarekitError
from carekit.io import check_finite, check_result
from carekit.rdf import SPACE, Where, apply, get, tensors

DESCRIPTIONS = ("rdf.yaml", "bioimageio.yaml")  # also NAME.rdf.yaml and NAME.bioimageio.yaml
MAX_DESCRIPTION = 16 * 2**20  # bytes of rdf.yaml
MAX_MEMBER = 2**30  # bytes of any file read or hashed: weights larger than this are no restoration network
MAX_PADDING = 16  # a package's minimum size may pad an image to at most this many times its pixels
CHUNK = 2**20
LETTERS = {"batch": "N", "channel": "C", **{a: a.upper() for a in SPACE}}  # the package's axis ids as carekit letters
ONNX_TYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(uint8)": "uint8",
              "tensor(uint16)": "uint16", "tensor(int8)": "int8", "tensor(int16)": "int16",
              "tensor(int32)": "int32", "tensor(int64)": "int64"}  # fmt: skip


def is_package(path: str | Path) -> bool:
    return Path(path).is_file() and zipfile.is_zipfile(path)


def member_name(source: str) -> str:
    """A file named in a description, as a member of the zip (``./weights.onnx`` -> ``weights.onnx``)."""
    name = source.replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name


def listed_files(node, out: list | None = None) -> list[tuple[str, str | None]]:
    """Every ``(source, sha256)`` the description names (files inside the package, and URLs)."""
    out = [] if out is None else out
    if isinstance(node, dict):
        if isinstance(node.get("source"), str):
            sha = node.get("sha256")
            out.append((node["source"], sha if isinstance(sha, str) else None))
        for value in node.values():
            listed_files(value, out)
    elif isinstance(node, list):
        for value in node:
            listed_files(value, out)
    return out


class Package:
    """A bioimage.io model package opened for prediction.

    Examples
    --------
    >>> package = Package("model.zip")  # doctest: +SKIP
    >>> restored = package.predict(image, axes="YX")  # doctest: +SKIP
    """

    def __init__(self, path: str | Path, *, runtime: str = "auto", allow_torchscript: bool = False) -> None:
        import yaml

        self.path = Path(path)
        where = Where(str(self.path))
        try:
            with zipfile.ZipFile(self.path) as z:
                self.members = {i.filename: i for i in z.infolist()}
                name = self.description_name()
                try:
                    self.rdf = yaml.safe_load(self.read(z, name, MAX_DESCRIPTION))
                except yaml.YAMLError as e:
                    raise CarekitError(f"{self.path}: {name} is not valid YAML ({str(e).splitlines()[0]})") from None
                if not isinstance(self.rdf, dict) or self.rdf.get("type", "model") != "model":
                    raise CarekitError(f"{self.path}: {name} does not describe a bioimage.io model")
                self.check_hashes(z)
                inputs = tensors(self.rdf, "inputs", where)
                if len(inputs) != 1:
                    raise CarekitError(
                        f"{self.path}: carekit runs packages with one input tensor, this has {len(inputs)}"
                    )
                self.input, self.outputs = inputs[0], tensors(self.rdf, "outputs", where)
                self.run = self.open_runtime(z, runtime, allow_torchscript)
        except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
            raise CarekitError(f"{self.path}: cannot open as a bioimage.io package ({e})") from None
        self.spatial = self.input.spatial
        for out in self.outputs:
            if out.spatial != self.spatial:
                raise CarekitError(f"{self.path}: output {out.id} has axes {out.spatial}, the input {self.spatial}; "
                                   "carekit runs packages whose outputs have their input's spatial axes")  # fmt: skip

    @property
    def name(self) -> str:
        return str(self.rdf.get("name", self.path.stem))

    # -- reading the zip -----------------------------------------------------------------------
    def description_name(self) -> str:
        names = [n for n in self.members if "/" not in n]
        for wanted in DESCRIPTIONS:
            found = sorted(n for n in names if n == wanted or n.endswith("." + wanted))
            if found:
                return found[0]
        raise CarekitError(f"{self.path}: no rdf.yaml inside; this is not a bioimage.io model package")

    def info(self, source: str, what: str) -> zipfile.ZipInfo:
        """The member a description names, refused where missing, a URL or unreasonably large."""
        if "://" in source:
            raise CarekitError(f"{self.path}: {what} {source} lies outside the package; carekit downloads nothing, "
                               "use a package that holds its files")  # fmt: skip
        info = self.members.get(member_name(source))
        if info is None:
            raise CarekitError(f"{self.path}: rdf.yaml lists {what} {source}, which the package lacks; it is damaged")
        if info.file_size > MAX_MEMBER:
            raise CarekitError(f"{self.path}: {source} declares {info.file_size / 2**30:.1f} GiB, more than carekit "
                               f"reads ({MAX_MEMBER / 2**30:.0f} GiB); the package is damaged or hostile")  # fmt: skip
        return info

    def stream(self, z: zipfile.ZipFile, info: zipfile.ZipInfo):
        """The member's bytes, a chunk at a time (never more than its declared size)."""
        try:
            with z.open(info) as f:
                while chunk := f.read(CHUNK):
                    yield chunk
        except (zipfile.BadZipFile, zlib.error, RuntimeError, NotImplementedError, EOFError) as e:
            raise CarekitError(f"{self.path}: cannot read {info.filename} ({e}); the package is damaged") from None

    def read(self, z: zipfile.ZipFile, source: str, limit: int = MAX_MEMBER, what: str = "file") -> bytes:
        info = self.info(source, what)
        if info.file_size > limit:
            raise CarekitError(f"{self.path}: {source} declares {info.file_size:,} bytes, more than such a file "
                               "can hold; the package is damaged or hostile")  # fmt: skip
        return b"".join(self.stream(z, info))

    def check_hashes(self, z: zipfile.ZipFile) -> None:
        """Every file the description lists with a sha256 must be inside and match it."""
        for source, sha in listed_files(self.rdf):
            if sha is None or "://" in source:
                continue
            digest = hashlib.sha256()
            for chunk in self.stream(z, self.info(source, "file")):
                digest.update(chunk)
            if digest.hexdigest() != sha.lower():
                raise CarekitError(f"{self.path}: {source} does not match the sha256 rdf.yaml gives for it; the "
                                   "package was altered or damaged, so carekit refuses it")  # fmt: skip

    # -- the network ---------------------------------------------------------------------------
    def open_runtime(self, z: zipfile.ZipFile, runtime: str, allow_torchscript: bool):
        weights = get(self.rdf, "weights", Where(str(self.path)), dict)
        if runtime in ("auto", "onnx") and isinstance(weights.get("onnx"), dict):
            return self.onnx(self.read(z, get(weights["onnx"], "source", Where("weights.onnx"), str), what="weights"))
        if runtime in ("auto", "torchscript") and isinstance(weights.get("torchscript"), dict):
            if not allow_torchscript:
                raise CarekitError(f"{self.path}: has TorchScript weights only, which are code that would run on this "
                                   "machine; pass --allow-torchscript if you trust the package's authors")  # fmt: skip
            return self.torchscript(self.read(z, get(weights["torchscript"], "source", Where("weights"), str),
                                              what="weights"))  # fmt: skip
        have = ", ".join(sorted(weights)) or "none"
        raise CarekitError(f"{self.path}: has no ONNX or TorchScript weights (it has {have}); carekit runs those two")

    def onnx(self, model: bytes):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # ONNX Runtime raises its own types for damaged or unsupported graphs
            raise CarekitError(f"{self.path}: cannot load its ONNX weights ({str(e).splitlines()[0][:200]})") from None
        names = [o.name for o in session.get_outputs()]
        first = session.get_inputs()[0]
        dtype = ONNX_TYPES.get(first.type, "float32")
        return lambda x: session.run(names, {first.name: np.ascontiguousarray(x, dtype)})

    def torchscript(self, code: bytes):
        import torch

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(io.BytesIO(code), map_location="cpu")
        except Exception as e:  # torch raises several types for damaged archives
            raise CarekitError(
                f"{self.path}: cannot load its TorchScript weights ({str(e).splitlines()[0][:200]})"
            ) from None

        def run(x: np.ndarray) -> list[np.ndarray]:
            with torch.inference_mode():
                out = module(torch.from_numpy(np.ascontiguousarray(x, self.input.dtype)))
            return [t.float().numpy() for t in (out if isinstance(out, (tuple, list)) else (out,))]

        return run

    # -- prediction ----------------------------------------------------------------------------
    def predict(self, image: np.ndarray, axes: str) -> tuple[list[np.ndarray], str]:
        """Every output tensor for ``image`` (axes over S, T, C, Z, Y, X) and their axes (the input's order)."""
        x, layout = to_net(np.asarray(image), axes, self.spatial, what="image")
        if x.shape[1] != self.input.channels:
            raise CarekitError(
                f"image has {x.shape[1]} channel(s); the package {self.name} expects {self.input.channels}"
            )
        check_finite(x, "image")
        order = "NC" + self.spatial
        results: list[list[np.ndarray]] = [[] for _ in self.outputs]
        for sample in x.astype(np.float32):  # one at a time: consumers' tensors carry one image per batch entry
            raw = sample[None]
            with np.errstate(all="ignore"):
                tensor = apply(raw, self.input.steps, order, None)
            padded = self.pad(tensor)
            outs = self.call(to_package(padded, self.input.axes))
            for k, (spec, out) in enumerate(zip(self.outputs, outs, strict=True)):
                y = crop(from_package(np.asarray(out), spec.axes), padded.shape, raw.shape)
                with np.errstate(all="ignore"):
                    done = apply(y, spec.steps, order, raw)
                check_result(done, f"{self.path.name} output {spec.id}")
                results[k].append(done)
        unfolded = [from_net(np.concatenate(r).astype(np.float32, copy=False), layout) for r in results]
        return [u[0] for u in unfolded], unfolded[0][1]

    def call(self, tensor: np.ndarray) -> list[np.ndarray]:
        try:
            outs = self.run(tensor)
        except Exception as e:  # the runtimes raise their own types when a graph cannot take an input
            first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise CarekitError(f"{self.path}: its network failed on an input of shape {tensor.shape} ({first}); "
                               "check the image's axes and size") from None  # fmt: skip
        if len(outs) != len(self.outputs):
            raise CarekitError(f"{self.path}: the network returned {len(outs)} tensor(s) but rdf.yaml describes "
                               f"{len(self.outputs)}; the package is damaged")  # fmt: skip
        return outs

    def pad(self, x: np.ndarray) -> np.ndarray:
        """``x`` (``(1, C, *S)``) padded at the end of each spatial axis to a size the package takes."""
        widths = [(0, 0), (0, 0)]
        for a, n in zip(self.spatial.lower(), x.shape[2:], strict=True):
            low, step = self.input.sizes.get(a, (1, 1))
            if step == 0 and n > low:
                raise CarekitError(f"image is {n} px along {a.upper()} but the package {self.name} takes exactly "
                                   f"{low}; crop the image into pieces of that size")  # fmt: skip
            target = low if n <= low else low + math.ceil((n - low) / step) * step if step else low
            widths.append((0, target - n))
        padded_size = math.prod(x.shape[2:][i] + w[1] for i, w in enumerate(widths[2:]))
        if padded_size > max(MAX_PADDING * math.prod(x.shape[2:]), 2**22):
            raise CarekitError(f"image of {x.shape[2:]} px is far smaller than the package {self.name} takes "
                               f"({dict(self.input.sizes)}); give a larger image")  # fmt: skip
        if all(w == (0, 0) for w in widths):
            return x
        return np.pad(x, widths, mode="reflect" if min(x.shape[2:]) > 1 else "edge")


def crop(y: np.ndarray, padded: tuple[int, ...], raw: tuple[int, ...]) -> np.ndarray:
    """An output for a padded input cut back to the raw input's extent (scaled where the output is)."""
    keep = [slice(None), slice(None)]
    for out, pad, n in zip(y.shape[2:], padded[2:], raw[2:], strict=True):
        keep.append(slice(0, round(n * out / pad)))
    return y[tuple(keep)]


def to_package(x: np.ndarray, axes: list[str]) -> np.ndarray:
    """``(1, C, *S)`` -> the package's axis order (axes it lacks must have size 1)."""
    ours = "NC" + "".join(a for a in "ZYX" if a.lower() in axes)
    theirs = "".join(LETTERS[a] for a in axes)
    for a, n in zip(ours, x.shape, strict=True):
        if a not in theirs and n != 1:
            name = next(k for k, v in LETTERS.items() if v == a)
            raise CarekitError(f"the package has no {name} axis but the image has {n} along it")
    return rearrange(x, ours, theirs)


def from_package(y: np.ndarray, axes: list[str]) -> np.ndarray:
    """The package's axis order -> ``(1, C, *S)``."""
    theirs = "".join(LETTERS[a] for a in axes)
    if y.ndim != len(theirs):
        raise CarekitError(f"the network returned {y.ndim} dimensions where the package describes {len(theirs)} "
                           f"({', '.join(axes)}); the package is damaged")  # fmt: skip
    return rearrange(y, theirs, "NC" + "".join(a for a in "ZYX" if a in theirs))
