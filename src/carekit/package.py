"""Run a bioimage.io model package without carekit's training code.

``carekit predict --model MODEL.zip`` reads the package's ``rdf.yaml``, runs its ONNX
weights through ONNX Runtime (or, without ONNX weights, its TorchScript weights),
applies the pre- and post-processing steps the description lists, and gives the
result back in the input's axes order. Packages written by ``carekit export`` need no
processing steps; common ones from other tools (``scale_range``, ``scale_linear``,
``zero_mean_unit_variance``, ``clip``, ``sigmoid``, ``ensure_dtype``) are applied too.
"""

from __future__ import annotations

import io
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from carekit.axes import from_net, rearrange, to_net
from carekit.errors import CarekitError
from carekit.io import check_finite

SPACE = {"z": "Z", "y": "Y", "x": "X"}


def is_package(path: str | Path) -> bool:
    return Path(path).is_file() and zipfile.is_zipfile(path)


@dataclass
class Tensor:
    """One input or output tensor: its id, axis ids in order, and processing steps."""

    id: str
    axes: list[str]
    channels: int
    steps: list[dict]
    minimum: dict[str, int]


def parse_tensor(descr: dict, where: str) -> Tensor:
    axes, channels, minimum = [], 1, {}
    for axis in descr["axes"]:
        kind = axis["type"]
        if kind == "batch":
            axes.append("batch")
        elif kind == "channel":
            axes.append("channel")
            channels = len(axis["channel_names"])
        elif kind == "space" and axis["id"] in SPACE:
            axes.append(axis["id"])
            size = axis.get("size")
            minimum[axis["id"]] = size["min"] if isinstance(size, dict) and "min" in size else 1
        else:
            raise CarekitError(f"{where}: axis {axis.get('id', kind)!r} is not supported; carekit runs b, c, z, y, x")
    steps = descr.get("preprocessing") or descr.get("postprocessing") or []
    return Tensor(descr["id"], axes, channels, steps, minimum)


class Package:
    """A bioimage.io model package opened for prediction.

    Examples
    --------
    >>> package = Package("model.zip")  # doctest: +SKIP
    >>> restored = package.predict(image, axes="YX")  # doctest: +SKIP
    """

    def __init__(self, path: str | Path, *, runtime: str = "auto") -> None:
        import yaml

        self.path = Path(path)
        try:
            with zipfile.ZipFile(self.path) as z:
                self.files = {n: z.read(n) for n in z.namelist()}
        except (OSError, zipfile.BadZipFile) as e:
            raise CarekitError(f"{self.path}: cannot open as a bioimage.io package ({e})") from None
        rdf = next((n for n in ("rdf.yaml", "bioimageio.yaml") if n in self.files), None)
        if rdf is None:
            raise CarekitError(f"{self.path}: no rdf.yaml inside; export the model with 'carekit export'")
        self.rdf = yaml.safe_load(self.files[rdf])
        if len(self.rdf.get("inputs", [])) != 1:
            raise CarekitError(f"{self.path}: carekit runs packages with one input tensor")
        self.input = parse_tensor(self.rdf["inputs"][0], str(self.path))
        self.outputs = [parse_tensor(t, str(self.path)) for t in self.rdf["outputs"]]
        self.spatial = "".join(SPACE[a] for a in self.input.axes if a in SPACE)
        self.run = self.open_runtime(runtime)

    @property
    def name(self) -> str:
        return str(self.rdf.get("name", self.path.stem))

    def open_runtime(self, runtime: str):
        weights = self.rdf.get("weights", {})
        if runtime in ("auto", "onnx") and "onnx" in weights:
            import onnxruntime as ort

            session = ort.InferenceSession(self.files[weights["onnx"]["source"]], providers=["CPUExecutionProvider"])
            names = [o.name for o in session.get_outputs()]
            first = session.get_inputs()[0].name
            return lambda x: session.run(names, {first: x})
        if runtime in ("auto", "torchscript") and "torchscript" in weights:
            import torch

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(io.BytesIO(self.files[weights["torchscript"]["source"]]), map_location="cpu")

            def run(x: np.ndarray) -> list[np.ndarray]:
                with torch.inference_mode():
                    out = module(torch.from_numpy(x))
                return [t.numpy() for t in (out if isinstance(out, (tuple, list)) else (out,))]

            return run
        raise CarekitError(f"{self.path}: has no {runtime if runtime != 'auto' else 'ONNX or TorchScript'} weights")

    def predict(self, image: np.ndarray, axes: str) -> tuple[list[np.ndarray], str]:
        """Every output tensor for ``image`` (axes over S, T, C, Z, Y, X) and their axes (the input's order)."""
        x, layout = to_net(np.asarray(image), axes, self.spatial, what="image")
        if x.shape[1] != self.input.channels:
            raise CarekitError(
                f"image has {x.shape[1]} channel(s); the package {self.name} expects {self.input.channels}"
            )
        check_finite(x, "image")
        for axis, size in zip(self.spatial.lower(), x.shape[2:], strict=True):
            if size < self.input.minimum[axis]:
                raise CarekitError(f"image is {size} px along {axis.upper()}; {self.name} needs at least "
                                   f"{self.input.minimum[axis]}")  # fmt: skip
        raw = x.astype(np.float32)
        results: list[list[np.ndarray]] = [[] for _ in self.outputs]
        for sample in raw:  # one at a time: consumers' tensors carry one image per batch entry
            unprocessed = to_package(sample[None], self.input.axes)
            tensor = process(unprocessed, self.input, raw_input=None)
            outs = self.run(np.ascontiguousarray(tensor, np.float32))
            for k, (spec, out) in enumerate(zip(self.outputs, outs, strict=True)):
                done = process(np.asarray(out), spec, raw_input=(unprocessed, self.input))
                results[k].append(from_package(done, spec.axes))
        unfolded = [from_net(np.concatenate(r).astype(np.float32, copy=False), layout) for r in results]
        return [u[0] for u in unfolded], unfolded[0][1]


LETTERS = {"batch": "N", "channel": "C", **SPACE}  # the package's axis ids as carekit letters


def to_package(x: np.ndarray, axes: list[str]) -> np.ndarray:
    """``(1, C, *S)`` -> the package's axis order (axes it lacks must have size 1)."""
    ours = "NC" + "".join(SPACE[a] for a in "zyx" if a in axes)
    theirs = "".join(LETTERS[a] for a in axes)
    for a, size in zip(ours, x.shape, strict=True):
        if a not in theirs and size != 1:
            name = next(k for k, v in LETTERS.items() if v == a)
            raise CarekitError(f"the package has no {name} axis but the image has {size} along it")
    return rearrange(x, ours, theirs)


def from_package(y: np.ndarray, axes: list[str]) -> np.ndarray:
    """The package's axis order -> ``(1, C, *S)``."""
    theirs = "".join(LETTERS[a] for a in axes)
    return rearrange(y, theirs, "NC" + "".join(a for a in "ZYX" if a in theirs))


def process(t: np.ndarray, spec: Tensor, raw_input: tuple[np.ndarray, Tensor] | None) -> np.ndarray:
    """Apply a tensor's pre- or post-processing steps (per sample, over the axes each step names)."""
    t = t.astype(np.float32)
    for step in spec.steps:
        op, kw = step["id"], step.get("kwargs") or {}
        reduce = tuple(spec.axes.index(a) for a in kw.get("axes") or spec.axes if a in spec.axes)
        if op == "ensure_dtype":
            t = t.astype(kw.get("dtype", "float32"))
        elif op == "scale_linear":
            t = t * np.float32(kw.get("gain", 1.0)) + np.float32(kw.get("offset", 0.0))
        elif op == "clip":
            t = np.clip(t, kw.get("min"), kw.get("max"))
        elif op == "sigmoid":
            t = 1 / (1 + np.exp(-t))
        elif op == "zero_mean_unit_variance":
            t = (t - t.mean(reduce, keepdims=True)) / (t.std(reduce, keepdims=True) + kw.get("eps", 1e-6))
        elif op == "scale_range":
            ref = t if kw.get("reference_tensor") in (None, spec.id) or raw_input is None else raw_input[0]
            lo = np.percentile(ref, kw.get("min_percentile", 0.0), axis=reduce, keepdims=True)
            hi = np.percentile(ref, kw.get("max_percentile", 100.0), axis=reduce, keepdims=True)
            t = (t - lo) / (hi - lo + kw.get("eps", 1e-6))
        else:
            raise CarekitError(f"processing step {op!r} is not implemented here; run the package in bioimageio.core")
    return t.astype(np.float32, copy=False)
