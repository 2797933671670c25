"""What a bioimage.io model description (``rdf.yaml``, spec 0.4 or 0.5) says about running its network.

Both versions are read into one form: per tensor its id, its axes (``batch``, ``channel``, ``z``,
``y``, ``x``), its channel count, the valid sizes of its spatial axes and its processing steps with
their keyword arguments settled (the spec's defaults filled in, 0.4's names mapped to 0.5's).
Everything else a description may hold (authors, covers, test tensors) is not needed here. Every
field read is checked, so a damaged or hostile description fails with one line naming the field.
Processing runs in carekit's order ``(1, C, [Z,] Y, X)``, so statistics broadcast between tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from carekit.errors import CarekitError

SPACE = ("z", "y", "x")
LETTERS_04 = {"b": "batch", "c": "channel", "z": "z", "y": "y", "x": "x"}
STEPS = ("binarize", "clip", "ensure_dtype", "fixed_zero_mean_unit_variance", "scale_linear", "scale_mean_variance",
         "scale_range", "sigmoid", "softmax", "zero_mean_unit_variance")  # fmt: skip
DTYPES = ("float32", "float64", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "bool")
MAX_EDGE = 2**20  # a larger minimum or step along an axis is not an image size


@dataclass
class Tensor:
    """One tensor of a package: id, axes in the package's order, channels, sizes, processing steps.

    ``sizes`` maps each spatial axis to ``(minimum, step)`` (step 0: that size only); ``steps`` are
    ``(name, kwargs)`` with every keyword the step uses present.
    """

    id: str
    axes: list[str]
    channels: int
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    steps: list[tuple[str, dict]] = field(default_factory=list)
    dtype: str = "float32"

    @property
    def spatial(self) -> str:
        return "".join(a.upper() for a in SPACE if a in self.axes)


class Where:
    """A field's location in the description, for error messages: ``rdf.yaml: inputs[0].axes[2].id``."""

    def __init__(self, source: str, path: str = "") -> None:
        self.source, self.path = source, path

    def __truediv__(self, key: object) -> Where:
        part = f"[{key}]" if isinstance(key, int) else (f".{key}" if self.path else str(key))
        return Where(self.source, self.path + part)

    def error(self, message: str) -> CarekitError:
        return CarekitError(f"{self.source}: {self.path or 'rdf.yaml'} {message}; the package is damaged or not "
                            "a bioimage.io model")  # fmt: skip


def get(d: Any, key: str, where: Where, kind: type | tuple, default: Any = ...) -> Any:
    """``d[key]`` checked to be of ``kind`` (``default`` where it is missing, if given)."""
    if not isinstance(d, dict):
        raise where.error("must be a mapping")
    if key not in d or d[key] is None:
        if default is ...:
            raise (where / key).error("is missing")
        return default
    value = d[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise (where / key).error(f"has the wrong type ({type(value).__name__})")
    return value


def number(value: Any, where: Where, *, low: float = -math.inf, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise where.error(f"must be a number in [{low:g}, {high:g}], got {value!r:.40}")
    return float(value)


def numbers(value: Any, where: Where) -> float | list[float]:
    """A finite number, or a non-empty list of them (values along an axis)."""
    if isinstance(value, list):
        if not value or len(value) > 4096:
            raise where.error("must list 1..4096 numbers")
        return [number(v, where / i, low=-3.4e38, high=3.4e38) for i, v in enumerate(value)]
    return number(value, where, low=-3.4e38, high=3.4e38)


def size(value: Any, where: Where) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_EDGE:
        raise where.error(f"must be a whole number of pixels from 0 to {MAX_EDGE}")
    return value


def format_version(rdf: dict, where: Where) -> str:
    version = str(get(rdf, "format_version", where, (str, int, float), "0.4"))
    if version.startswith("0.4"):
        return "0.4"
    if version.startswith("0.5"):
        return "0.5"
    raise (where / "format_version").error(f"is {version}; carekit runs bioimage.io models of format 0.4 and 0.5")


def tensors(rdf: dict, kind: str, where: Where) -> list[Tensor]:
    """The ``inputs`` or ``outputs`` of a description."""
    version = format_version(rdf, where)
    entries = get(rdf, kind, where, list)
    if not entries or len(entries) > 64:
        raise (where / kind).error("must list 1..64 tensors")
    parse = tensor_05 if version == "0.5" else tensor_04
    return [parse(t, kind, where / kind / i) for i, t in enumerate(entries)]


def tensor_05(t: Any, kind: str, where: Where) -> Tensor:
    tid = get(t, "id", where, str, "input" if kind == "inputs" else "output")
    axes, channels, sizes = [], 1, {}
    for i, axis in enumerate(get(t, "axes", where, list)):
        at = where / "axes" / i
        typ = get(axis, "type", at, str)
        default = {"batch": "batch", "channel": "channel", "space": "x"}.get(typ, typ)
        aid = get(axis, "id", at, str, default).lower()
        if typ == "batch":
            axes.append("batch")
        elif typ == "channel":
            names = get(axis, "channel_names", at, list)
            channels = len(names)
            if not 1 <= channels <= 4096:
                raise (at / "channel_names").error("must name 1..4096 channels")
            axes.append("channel")
        elif typ == "space" and aid in SPACE:
            axes.append(aid)
            sizes[aid] = size_05(axis.get("size"), at / "size")
        else:
            raise (at / "id").error(f"is a {typ} axis {aid!r}; carekit runs tensors with axes batch, channel, z, y, x")
    steps = get(t, "preprocessing" if kind == "inputs" else "postprocessing", where, list, [])
    data = t.get("data") if isinstance(t, dict) else None
    dtype = data.get("type", "float32") if isinstance(data, dict) else "float32"
    processing = [step(s, where / "steps" / i, "id") for i, s in enumerate(steps)]
    return Tensor(tid, check_axes(axes, where), channels, sizes, processing, str(dtype))


def size_05(value: Any, where: Where) -> tuple[int, int]:
    """``(minimum, step)`` of an input axis: a fixed size, a parameterized size, or any (a reference)."""
    if value is None or (isinstance(value, dict) and "min" not in value):
        return 1, 1  # a reference to another tensor's axis or a size left open: any size
    if isinstance(value, dict):
        return max(1, size(value.get("min"), where / "min")), size(value.get("step", 1), where / "step")
    return max(1, size(value, where)), 0


def tensor_04(t: Any, kind: str, where: Where) -> Tensor:
    tid = get(t, "name", where, str)
    letters = get(t, "axes", where, str).lower()
    if any(a not in LETTERS_04 for a in letters):
        raise (where / "axes").error(f"is {letters!r}; carekit runs tensors with axes b, c, z, y, x")
    axes = [LETTERS_04[a] for a in letters]
    shape = get(t, "shape", where, (list, dict))
    minimum, steps_ = (shape, [0] * len(shape)) if isinstance(shape, list) else (shape.get("min"), shape.get("step"))
    if kind == "outputs" and isinstance(shape, dict):  # a shape relative to an input: any size
        minimum = steps_ = [1] * len(axes)
    if not isinstance(minimum, list) or not isinstance(steps_, list) or not len(minimum) == len(steps_) == len(axes):
        raise (where / "shape").error(f"must give one size per axis of {letters!r}")
    sizes = {a: (max(1, size(m, where / "shape")), size(s, where / "shape"))
             for a, m, s in zip(axes, minimum, steps_, strict=True) if a in SPACE}  # fmt: skip
    channels = size(minimum[axes.index("channel")], where / "shape") if "channel" in axes else 1
    if not 1 <= channels <= 4096:
        raise (where / "shape").error("must give 1..4096 channels")
    steps = get(t, "preprocessing" if kind == "inputs" else "postprocessing", where, list, [])
    dtype = get(t, "data_type", where, str, "float32")
    processing = [step(s, where / "steps" / i, "name") for i, s in enumerate(steps)]
    return Tensor(tid, check_axes(axes, where), channels, sizes, processing, dtype)


def check_axes(axes: list[str], where: Where) -> list[str]:
    if len(set(axes)) != len(axes) or not {"y", "x"} <= set(axes):
        raise (where / "axes").error(f"are {axes}; a tensor needs y and x, each axis once")
    return axes


def step(s: Any, where: Where, key: str) -> tuple[str, dict]:
    """A processing step with the keywords it uses settled (spec defaults, 0.4 names as 0.5's)."""
    name = get(s, key, where, str)
    kw = get(s, "kwargs", where, dict, {})
    if name not in STEPS:
        raise (where / key).error(f"is {name!r}, a step carekit does not implement; run the package in "
                                  "bioimageio.core")  # fmt: skip
    axes = kw.get("axes")
    if isinstance(axes, str):  # 0.4: letters
        axes = [LETTERS_04.get(a, a) for a in axes.lower()]
    if axes is not None and (not isinstance(axes, list) or not all(isinstance(a, str) for a in axes)):
        raise (where / "kwargs" / "axes").error("must list axis ids")
    out: dict = {"axes": None if axes is None else [a.lower() for a in axes]}
    along = kw.get("axis")
    out["axis"] = along.lower() if isinstance(along, str) else "channel"
    eps = number(kw.get("eps", 1e-6), where / "kwargs" / "eps", low=0, high=1)
    if name == "scale_linear":
        at = where / "kwargs"
        out |= {
            "gain": numbers(kw.get("gain", 1.0), at / "gain"),
            "offset": numbers(kw.get("offset", 0.0), at / "offset"),
        }
    elif name == "binarize":
        out["threshold"] = numbers(kw.get("threshold"), where / "kwargs" / "threshold")
    elif name == "clip":
        for k in ("min", "max", "min_percentile", "max_percentile"):
            out[k] = None if kw.get(k) is None else number(kw[k], where / "kwargs" / k)
    elif name == "ensure_dtype":
        out["dtype"] = get(kw, "dtype", where / "kwargs", str, "float32")
        if out["dtype"] not in DTYPES:
            raise (where / "kwargs" / "dtype").error(f"is {out['dtype']!r}, not a tensor type")
    elif name in ("zero_mean_unit_variance", "fixed_zero_mean_unit_variance"):
        mode = kw.get("mode", "fixed" if "mean" in kw else "per_sample")
        out |= {"eps": eps, "mode": mode}
        if mode == "fixed":
            at = where / "kwargs"
            out |= {"mean": numbers(kw.get("mean"), at / "mean"), "std": numbers(kw.get("std"), at / "std")}
    elif name in ("scale_range", "scale_mean_variance"):
        low = number(kw.get("min_percentile", 0.0), where / "kwargs" / "min_percentile", low=0, high=100)
        high = number(kw.get("max_percentile", 100.0), where / "kwargs" / "max_percentile", low=0, high=100)
        if low >= high:
            raise (where / "kwargs").error(f"min_percentile {low:g} must be below max_percentile {high:g}")
        ref = kw.get("reference_tensor")
        out |= {"eps": eps, "min_percentile": low, "max_percentile": high, "reference": ref}
    return name, out


def reduced(axes: list[str] | None, order: str) -> tuple[int, ...]:
    """Indices in carekit's order ``order`` (e.g. ``"NCYX"``) of the axis ids a step reduces over
    (None: all)."""
    ids = {"batch": "N", "channel": "C", "z": "Z", "y": "Y", "x": "X"}
    if axes is None:
        return tuple(range(len(order)))
    return tuple(order.index(ids[a]) for a in axes if a in ids and ids[a] in order)


def along(values, axis: str, order: str, ndim: int) -> np.ndarray:
    """Scalar or per-entry ``values`` shaped to broadcast along ``axis`` of a tensor in ``order``."""
    v = np.asarray(values, np.float32)
    if v.ndim == 0:
        return v
    ids = {"channel": "C", "z": "Z", "y": "Y", "x": "X"}
    shape = [1] * ndim
    shape[order.index(ids.get(axis, "C"))] = v.size
    return v.reshape(shape)


def apply(t: np.ndarray, steps: list[tuple[str, dict]], order: str, reference: np.ndarray | None) -> np.ndarray:
    """Apply processing ``steps`` to ``t`` (carekit's ``order``); ``reference`` is the raw input, for
    steps that take their statistics from it."""
    t = t.astype(np.float32)
    for name, kw in steps:
        axes = reduced(kw["axes"], order)
        if name == "ensure_dtype":
            t = t.astype(kw["dtype"])
        elif name == "scale_linear":
            t = t * along(kw["gain"], kw["axis"], order, t.ndim) + along(kw["offset"], kw["axis"], order, t.ndim)
        elif name == "binarize":
            t = (t > along(kw["threshold"], kw["axis"], order, t.ndim)).astype(np.float32)
        elif name == "clip":
            low = (
                kw["min"]
                if kw["min_percentile"] is None
                else np.percentile(t, kw["min_percentile"], axes, keepdims=True)
            )
            high = kw["max"] if kw["max_percentile"] is None else np.percentile(t, kw["max_percentile"], axes,
                                                                                 keepdims=True)  # fmt: skip
            t = np.clip(t, low, high)
        elif name == "sigmoid":
            t = 1 / (1 + np.exp(-np.clip(t, -80, 80)))
        elif name == "softmax":
            e = np.exp(t - t.max(axis=order.index("C"), keepdims=True))
            t = e / e.sum(axis=order.index("C"), keepdims=True)
        elif name in ("zero_mean_unit_variance", "fixed_zero_mean_unit_variance"):
            if kw["mode"] == "fixed":
                mean, std = (along(kw[k], kw["axis"], order, t.ndim) for k in ("mean", "std"))
            else:
                mean, std = t.mean(axes, keepdims=True), t.std(axes, keepdims=True)
            t = (t - mean) / (std + kw["eps"])
        elif name == "scale_range":
            ref = t if kw["reference"] is None or reference is None else reference
            lo = np.percentile(ref, kw["min_percentile"], axes, keepdims=True)
            hi = np.percentile(ref, kw["max_percentile"], axes, keepdims=True)
            t = (t - lo) / (hi - lo + kw["eps"])
        elif name == "scale_mean_variance":
            ref = t if reference is None else reference
            t = (t - t.mean(axes, keepdims=True)) / (t.std(axes, keepdims=True) + kw["eps"])
            t = t * (ref.std(axes, keepdims=True) + kw["eps"]) + ref.mean(axes, keepdims=True)
    return t
