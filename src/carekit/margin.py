"""Better than a simple filter? Every training ends by measuring it on its own validation patches.

The network's restoration of the validation patches is scored against the best classical
restoration of the same patches: a Gaussian filter and non-local means, each with the parameters
that score best against the validation targets (for a projection model, applied to the stack's
maximum and mean projections). The margin, in dB of the paper's PSNR, goes into the model's
``config.json`` (``baseline``), its summary and ``carekit info``; a model that does not beat the
filter is flagged with advice. Where the output is mixed with a Gaussian filter of the input
(:mod:`carekit.filterblend`), the margin is the mix's, and the network alone must beat the filter
too, or the model is flagged all the same (a mix that leans on the filter is little more than it).
Training without clean targets (Noise2Noise's other acquisition, Noise2Void's input itself) has no
truth to score against: the report says so instead of a margin.
"""

from __future__ import annotations

import numpy as np
import torch

from carekit.baselines import best_filter, mean_psnr
from carekit.io import write_json
from carekit.model import CONFIG
from carekit.registry import mode_of
from carekit.trainer import Callback, Trainer

MAX_PATCHES = 16  # validation patches scored (spread over the set); NLM makes more slow
# why modes without clean targets have no margin: scored against noise, the best "filter" is the one
# that keeps the noise (for Noise2Void's targets, the very noise of the input)
NO_TRUTH = {
    "noisy": "trained without clean targets (its validation targets are noisy acquisitions)",
    "input": "trained without clean targets (its validation targets are the noisy inputs themselves)",
}


def network_output(trainer: Trainer, x: np.ndarray) -> np.ndarray:
    net, size, outs = trainer.net, trainer.config.train.batch_size, []
    net.eval()
    with torch.inference_mode():
        for i in range(0, len(x), size):
            with trainer.engine.autocast():
                outs.append(net(trainer.engine.tensor(x[i : i + size])).float().cpu().numpy())
    return np.concatenate(outs)[:, : trainer.config.n_channel_out]


def planes(a: np.ndarray) -> np.ndarray:
    """``(N, C, *spatial)`` as a stack of 2D planes, the way PSNR is averaged."""
    return a.reshape(-1, *a.shape[-2:])


def scored_planes(val: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """Up to :data:`MAX_PATCHES` validation patches, spread over the set: their inputs, targets as 2D
    planes, which planes hold structure to score, and each scored plane's box: the held-out part its
    mask marks (the whole plane without a mask; a thin validation slab's windows take their first
    rows or columns from training context)."""
    pick = np.unique(np.linspace(0, len(val[0]) - 1, min(MAX_PATCHES, len(val[0]))).round().astype(int))
    x, truth = val[0][pick], planes(val[1][pick])
    mask = val[2] if len(val) > 2 else None
    if mask is None:
        boxes = [(slice(None), slice(None))] * len(truth)
    else:
        boxes = []
        for plane in planes(mask[pick]):
            rows, cols = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
            empty = rows.size == 0
            boxes.append((slice(0, 0), slice(0, 0)) if empty else
                         (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)))  # fmt: skip
    scored = np.array([t[b].size > 0 and np.ptp(t[b]) > 0 for t, b in zip(truth, boxes, strict=True)], bool)
    return x, truth, scored, [b for b, k in zip(boxes, scored, strict=True) if k]


def measure(trainer: Trainer) -> dict | None:
    """The network's and the best simple filter's PSNR on the validation patches, and the margin
    (or, for a mode without clean targets, why there is none)."""
    targets = mode_of(trainer.config.mode).targets
    if targets in NO_TRUTH:
        return {"skipped": NO_TRUTH[targets]}
    val = trainer.val
    if val is None or len(val) < 2 or val[1] is None:
        return None
    x, truth, scored, boxes = scored_planes(val)  # a plane without structure has no PSNR
    if not scored.any():
        return {"skipped": "its validation targets hold no structure to score against"}
    truth = truth[scored]
    network = mean_psnr(planes(network_output(trainer, x))[scored], truth, boxes)
    y = val[1]
    if x.ndim == y.ndim + 1:  # a stack against its 2D projection: filter the stack's projections
        options = [("maximum projection, ", x.max(axis=2)), ("mean projection, ", x.mean(axis=2))]
    elif x.shape[1] == y.shape[1]:
        options = [("", x)]
    else:
        return None
    best = None
    for label, source in options:
        found = best_filter(planes(source)[scored], truth, boxes=boxes)
        found["method"] = label + found["method"]
        best = found if best is None or found["psnr"] > best["psnr"] else best
    report = {"network_psnr": network, "best_classical": best, "margin_db": network - best["psnr"], "patches": len(x)}
    blend = trainer.config.blend
    if blend:  # fitted on the same patches: what the network alone scores there
        report["network_alone_margin_db"] = blend["network_psnr"] - best["psnr"]
    return report


class Margin(Callback):
    """Measures the margin once the best weights are back in the model, and stores it with the model."""

    def on_finish(self, trainer: Trainer) -> None:
        report = measure(trainer)
        if report is None:
            return
        trainer.care.config.baseline = report
        write_json(trainer.dir / CONFIG, trainer.care.config.to_dict())
