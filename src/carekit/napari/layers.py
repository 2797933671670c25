"""Between napari layers and carekit: a layer's array, axes and voxel size, and the layers of a restoration.

No Qt here: the functions read layers' attributes and return napari's layer-data tuples
``(data, keywords, "image")``, which the widgets add to the viewer.
"""

from __future__ import annotations

import numpy as np

from carekit.app import Restored
from carekit.axes import check_axes
from carekit.errors import CarekitError

GUESSED = {2: "YX", 3: "ZYX", 4: "TZYX", 5: "TCZYX"}  # a layer's axes when nothing names them
TRUST_COLORMAP = "inferno"  # black where the restoration is certain, bright where it is not
SAMPLES = 8  # draws from a probabilistic prediction, on a slider of their own


def layer_array(layer) -> np.ndarray:
    """The layer's pixels as a numpy array (the full-resolution level of a multiscale layer)."""
    return np.asarray(layer.data[0] if getattr(layer, "multiscale", False) else layer.data)


def infer_axes(layer) -> str:
    """The axes of a layer's data: recorded in its metadata (carekit's layers and samples), named by
    its axis labels (single letters such as ``z``, ``y``, ``x``), else guessed from its dimensions
    (2D ``YX``, 3D ``ZYX``, 4D ``TZYX``, 5D ``TCZYX``; an RGB layer ends in ``C``). The widgets show
    them for the user to correct."""
    ndim = len(layer.data.shape)
    recorded = str(layer.metadata.get("axes", ""))
    if len(recorded) == ndim:
        return recorded
    labels = "".join(str(a).upper() for a in getattr(layer, "axis_labels", ()) if len(str(a)) == 1)
    if getattr(layer, "rgb", False):
        labels = labels + "C" if len(labels) == ndim - 1 else GUESSED.get(ndim - 1, "") + "C"
    if len(labels) == ndim:
        try:
            return check_axes(labels, ndim)
        except CarekitError:
            pass
    if ndim not in GUESSED:
        raise CarekitError(f"layer '{layer.name}' has {ndim} dimensions; type its axes, e.g. TCZYX")
    return GUESSED[ndim]


def per_axis(layer, axes: str, attribute: str) -> dict[str, float]:
    """A layer's ``scale`` or ``translate`` by axis letter (an RGB layer's colour axis has neither)."""
    values = [float(v) for v in getattr(layer, attribute)]
    return dict(zip(axes.replace("C", "") if getattr(layer, "rgb", False) else axes, values, strict=False))


def along(axes: str, values: dict[str, float], default: float) -> list[float]:
    return [values.get(a, default) for a in axes]


def restoration_layers(restored: Restored, name: str, translate: dict[str, float], level: float = 0.9,
                       samples: int = SAMPLES) -> list[tuple]:  # fmt: skip
    """The layers of a restoration of the layer ``name``: the mean (with the result's voxel size, so raw and
    restored overlay: an isotropic result's z scale is the input's divided by the factor, a projection
    has no z), the mode's extra maps, and for probabilistic models the width of the central ``level``
    interval and ``samples`` draws (on a slider), for ensembles the disagreement map D. The uncertainty
    maps use :data:`TRUST_COLORMAP` and add onto the restoration, so untrusted regions glow."""
    axes, spacing = restored.axes, restored.spacing or {}

    def image(data: np.ndarray, label: str, data_axes: str, **style) -> tuple:
        where = {"scale": along(data_axes, spacing, 1.0), "translate": along(data_axes, translate, 0.0)}
        meta = {"axes": data_axes, "source": name}
        return data, {"name": f"{name} {label}", **where, "metadata": meta, "rgb": False, **style}, "image"

    layers = [image(restored.mean, "restored", axes)]
    for key, value in restored.extra.items():
        layers.append(image(value, key, axes if value.ndim == len(axes) else axes.replace("C", "")))
    dist = restored.distribution
    if dist is None:
        return layers
    lower, upper = dist.interval(level)
    ensemble = hasattr(dist, "disagreement")
    layers.append(image(upper - lower, f"{level:.0%} interval width", axes, **trust_style(upper - lower, not ensemble)))
    if ensemble:
        d = np.asarray(dist.disagreement(), np.float32)
        layers.append(image(d, "disagreement D", axes, **trust_style(d, True)))
    if samples:
        drawn = dist.sample(samples, np.random.default_rng(0))
        mean = layers[0][1]
        where = {"scale": [1.0, *mean["scale"]], "translate": [0.0, *mean["translate"]]}
        meta = {"axes": "", "source": name}
        layers.append((drawn, {"name": f"{name} samples", **where, "metadata": meta, "rgb": False, "visible": False},
                       "image"))  # fmt: skip
    return layers


def trust_style(values: np.ndarray, visible: bool) -> dict:
    """Colour-map an uncertainty map over its 1st to 99.5th percentile (the least trusted pixels of the
    image brightest, whatever the map's overall level), added onto the layers below."""
    low, high = (float(v) for v in np.percentile(values, (1, 99.5))) if values.size else (0.0, 1.0)
    return {"colormap": TRUST_COLORMAP, "blending": "additive", "contrast_limits": (low, max(high, low + 1e-6)),
            "opacity": 0.8, "visible": visible}  # fmt: skip
