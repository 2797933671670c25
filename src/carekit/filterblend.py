"""Better with a simple filter: the network's output mixed with a Gaussian filter of its input.

A network trained for minutes on a few images keeps errors of its own (noise it has not learnt to
remove, structure it invents), and a Gaussian filter of the input errs differently (it blurs). A mix
of the two can score better than either: per output channel, in normalised units,
``weight * output + gain * gaussian(input, sigma) + offset``. Training ends (before the margin over
simple filters is measured) by fitting the three numbers per channel by least squares on the
validation patches' held-out pixels, for each Gaussian width of :data:`SIGMAS` (in 3D also the
z width, a share :data:`Z_SHARES` of the in-plane one), and keeps the mix of the width that scores
best on those patches (the paper's PSNR, per plane, as the margin measures it) where it scores at
least :data:`MIN_GAIN_DB` above the network alone.

The kept mix is part of the network (:class:`carekit.nets.unet.FilterBlend`): prediction, tiling,
the int8 copy and bioimage.io packages all apply it. Where the network is far ahead of the filter,
the fit gives the filter no weight and nothing is kept. Modes declare whether their input is their
target plus noise (the ``filter_blend`` feature: denoising); ``train.filter_blend = False``
(``--no-filter-blend``) turns it off.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from carekit.baselines import mean_psnr
from carekit.io import write_json
from carekit.margin import network_output, planes, scored_planes
from carekit.model import CONFIG
from carekit.nets.unet import gaussian
from carekit.trainer import Callback, Trainer

SIGMAS = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
Z_SHARES = (0.0, 0.5, 1.0)
MIN_GAIN_DB = 0.02


def why_not(trainer: Trainer) -> str | None:
    """Why no mix is fitted for this training (None: it is)."""
    config = trainer.config
    if not config.train.filter_blend:
        return "turned off"
    refused = config.why_no_blend()
    if refused is not None:
        return refused
    if not hasattr(trainer.care.net, "set_filter_blend"):
        return "its network is not a U-Net"
    val = trainer.val
    if val is None or len(val) < 2 or val[1] is None or val[0].shape != val[1].shape:
        return "no validation patches shaped like its inputs"
    return None


def widths(ndim: int) -> list[tuple[float, ...]]:
    """The Gaussian widths tried, per spatial axis."""
    if ndim == 2:
        return [(s, s) for s in SIGMAS]
    return [(s * share, s, s) for s, share in itertools.product(SIGMAS, Z_SHARES)]


def fit(trainer: Trainer) -> dict | None:
    """The best mix on the validation patches, with its PSNR and the network's alone (None where no
    patch holds structure to score)."""
    x, truth, scored, boxes = scored_planes(trainer.val)
    if not scored.any():
        return None
    c = trainer.config.n_channel_out
    net = network_output(trainer, x).astype(np.float64)
    per_sample = int(np.prod(net.shape[2:-2], dtype=int))  # 2D planes per channel (1 in 2D)
    channel = np.repeat(np.tile(np.arange(c), len(x)), per_sample)[scored]

    def score(a: np.ndarray) -> float:
        """The paper's PSNR of ``a`` on the scored planes, as the margin measures it."""
        return mean_psnr(planes(a)[scored], truth[scored], boxes)

    def pixels(a: np.ndarray) -> list[np.ndarray]:
        """Per channel, the held-out pixels of the scored planes of ``a``."""
        flat = [p[b].ravel() for p, b in zip(planes(a)[scored], boxes, strict=True)]
        return [np.concatenate([f for f, k in zip(flat, channel, strict=True) if k == ch]) for ch in range(c)]

    target, output = pixels(truth), pixels(net)
    alone, best, inputs = score(net), None, torch.from_numpy(np.asarray(x, np.float32))
    for sigma in widths(trainer.config.ndim):
        smoothed = gaussian(inputs, sigma).numpy().astype(np.float64)
        coefficients = []
        for t, y, g in zip(target, output, pixels(smoothed), strict=True):
            design = np.stack([y, g, np.ones_like(y)], axis=1)
            coefficients.append(np.linalg.lstsq(design, t, rcond=None)[0])
        k = np.array(coefficients).reshape(c, 3, *([1] * (net.ndim - 2)))
        mixed = score(k[:, 0] * net + k[:, 1] * smoothed + k[:, 2])
        if best is None or mixed > best[0]:
            best = (mixed, sigma, k)
    mixed, sigma, k = best
    return {
        "sigma": [float(s) for s in sigma],
        "weight": [float(v) for v in k[:, 0].ravel()],
        "gain": [float(v) for v in k[:, 1].ravel()],
        "offset": [float(v) for v in k[:, 2].ravel()],
        "network_psnr": alone,
        "blended_psnr": mixed,
        "gain_db": mixed - alone,
        "patches": len(x),
    }


class FilterBlendFit(Callback):
    """Fits the mix once the best weights are back in the model, keeps it where it scores better, and
    stores it with the model (before the margin and the int8 copy, which then include it)."""

    def on_finish(self, trainer: Trainer) -> None:
        care = trainer.care
        care.config.blend = None
        found = fit(trainer) if why_not(trainer) is None else None
        if found is None or found["gain_db"] < MIN_GAIN_DB:
            return
        care.net.set_filter_blend(found)
        care.config.blend = found
        care.weights_changed()
        write_json(trainer.dir / CONFIG, care.config.to_dict())
