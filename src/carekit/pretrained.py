"""The generic networks carekit ships, and the warm start that fine-tunes from them.

``carekit/pretrained/denoise-2d*.safetensors`` and ``denoise-3d*.safetensors`` hold U-Nets trained by
``scripts/pretrain.py`` on a broad synthetic corpus (``carekit.data.corpus``) across noise levels;
the JSON beside each records its network, corpus and training. A new model of a mode that declares
``warm_start`` starts from the one whose network matches its own (dimensions, depth, features,
kernel, convolutions, batch normalisation, residual, pooling and top skip: a network trained to
output the clean image would start badly as one that adds a correction to its input).
``n2v-2d*`` networks have Noise2Void's architecture (N2V2: blur pooling, no top skip) and were
pre-trained on the same corpus with clean targets; blind-spot training fine-tunes them.
``denoise-3d-residual-nobn`` (denoising's 3D default network) was pre-trained on 3D stacks of the
corpus, starting from the 2D network inflated along z. A 3D network with no shipped 3D match starts
from the 2D one of its family and signature, each kernel inflated along z (:func:`inflated`), so
that it starts as the 2D restoration of each plane.
``synthetic-2d*`` networks undo a widefield microscope: they were pre-trained on images of random
recipes (tubules and granules through PSFs 0.8-4 px wide, 10-1000 photons) to their structures,
and the synthetic mode fine-tunes them on its own recipe. Other
channel counts are adapted: the first layer reads the mean of the input channels, the last one
writes the same restoration to every output channel, and fine-tuning separates them. A Laplace
scale head starts from random weights. Where nothing matches, training starts from scratch, as
``init="scratch"`` asks.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import load_file

from carekit.config import PLAIN_POOLING
from carekit.model import CARE
from carekit.nets.unet import UNet
from carekit.registry import mode_of

SIGNATURE = ("depth", "n_first", "kernel_size", "n_conv", "batch_norm", "residual", "blur_pool", "top_skip")


def folder() -> Path:
    return Path(str(resources.files("carekit") / "pretrained"))


@lru_cache
def catalogue() -> list[dict]:
    """The shipped networks: each JSON description with the path of its weights."""
    found = []
    for description in sorted(folder().glob("*.json")):
        meta = json.loads(description.read_text())
        weights = description.with_suffix(".safetensors")
        if weights.exists():
            found.append({**meta, "weights": str(weights), "name": description.stem})
    return found


def restoration_net(care: CARE) -> UNet | None:
    """The U-Net of ``care`` that restores images (a projection model's second part)."""
    net = getattr(care.net, "restore", care.net)
    return net if isinstance(net, UNet) else None


def matching(care: CARE, family: str) -> dict | None:
    """The shipped network of ``family`` whose network matches ``care``'s: of its dimensions, else,
    for a 3D network, the 2D one (inflated, see :func:`inflated`)."""
    net, n = restoration_net(care), care.config.net
    if net is None:
        return None
    wanted = {k: getattr(n, k) for k in SIGNATURE}
    for ndim in (net.ndim, 2) if net.ndim == 3 else (net.ndim,):
        for entry in catalogue():
            named = entry["name"].split(".")[0].startswith(f"{family}-{ndim}d")
            # a description that does not record the pooling fields was written for plain pooling
            if named and {k: entry["network"].get(k, PLAIN_POOLING.get(k)) for k in SIGNATURE} == wanted:
                return entry
    return None


def inflated(kernel: torch.Tensor, depth: int) -> torch.Tensor:
    """A 2D convolution kernel ``(out, in, h, w)`` as a 3D one ``(out, in, depth, h, w)`` that filters
    each plane alone: the kernel on the middle z tap, zeros on the others. A 2D network inflated so
    restores a stack whose planes are all alike exactly as the 2D network restores one plane (its
    pooling and upsampling along z then change nothing); fine-tuning learns what z adds."""
    out = kernel.new_zeros((*kernel.shape[:2], depth, *kernel.shape[2:]))
    out[:, :, depth // 2] = kernel
    return out


def adapted(tensors: dict[str, torch.Tensor], net: UNet) -> dict[str, torch.Tensor]:
    """Pretrained single-channel tensors shaped for ``net``'s channel counts, in its dtype."""
    own = net.state_dict()
    first = next(k for k in own if k.endswith("weight") and own[k].ndim == net.ndim + 2)
    out = {}
    for key, value in tensors.items():
        if key not in own:
            continue
        value = value.to(own[key].dtype)
        if value.ndim == 4 and own[key].ndim == 5:  # a 2D network's kernel for a 3D network
            value = inflated(value, own[key].shape[2])
        if key == first and value.shape[1] != own[key].shape[1]:  # read the mean of the input channels
            value = value.repeat(1, own[key].shape[1], *(1,) * net.ndim) / own[key].shape[1]
        elif key.startswith("head.") and value.shape[0] != own[key].shape[0]:  # the same output everywhere
            value = value.repeat(own[key].shape[0], *(1,) * (value.ndim - 1))
        if value.shape == own[key].shape:
            out[key] = value
    return out


def warm_start(care: CARE) -> None:
    """Load the matching shipped network into a new model, where its mode and ``train.init`` ask for it.

    Records what it loaded in ``care.config.train`` (``init`` becomes ``"scratch"`` where nothing matched).
    """
    t = care.config.train
    family = mode_of(care.config.mode).warm_start
    entry = matching(care, family) if t.init == "pretrained" and family else None
    if entry is None:
        t.init = "scratch"
        return
    net = restoration_net(care)
    tensors = adapted(load_file(entry["weights"]), net)
    missing = set(net.state_dict()) - set(tensors)
    if any(not k.startswith("scale_head.") for k in missing):  # a damaged or foreign file: start afresh
        t.init = "scratch"
        return
    net.load_state_dict(tensors, strict=False)
