"""Fitting a probabilistic network's scale to the errors it makes where it did not train.

The scale head is a 1x1 convolution of the last feature maps, which it reads without steering
them. Trained by Adam beside the rest of the network it moves at the network's learning rate:
from its first value (``softplus(0)``, about 0.7 in normalised units) down to errors of 0.01-0.05
takes thousands of steps, so after minutes of training the predicted scale was 10-30x too wide
and did not follow the errors (on the calibration benchmark's nine datasets the log scale and the
log error were *anti*-correlated, -0.02 to -0.51), leaving every interval's shape to the
calibration.

The head is linear in features the network has already computed, so it can be fitted directly:
once training ends, the best weights' features and errors on the validation patches (regions the
network never trained on) are computed once, and the head's few weights minimise the Laplace
negative log-likelihood of those errors (L-BFGS on standardised features with a small ridge
penalty; the rest of the network is frozen). A feature that barely varies on those pixels is
standardised by a tenth of the median feature's spread rather than its own, so that it cannot take a
weight that explodes on an image where it does vary; the head runs in float32 for the same reason.
The fit is kept only where it scores better than the trained head on the same pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from carekit.engine import Engine
from carekit.nets.unet import SCALE_FLOOR as FLOOR  # the head's smallest scale

MAX_PIXELS = 300_000  # pixels the fit uses at most (drawn at random from the validation patches)
ITERATIONS = 100
SPREAD_FLOOR = 0.1  # features are standardised by at least this share of the median feature's spread
RIDGE = 1e-3  # penalty on the standardised weights' squares


def head_inputs(net: torch.nn.Module, batches: Sequence[tuple], engine: Engine, seed: int = 0
                ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Features ``(P, F)`` and absolute errors of the mean ``(P, C)`` of pixels of ``batches``.

    ``batches`` are ``(inputs, targets[, mask])`` arrays; only pixels the mask marks count. Each
    batch gives at most its share of :data:`MAX_PIXELS`, drawn at random, so 3D patches stay small.
    """
    captured: list[torch.Tensor] = []
    hook = net.scale_head.register_forward_hook(lambda _m, args, _out: captured.append(args[0]))
    rng = np.random.default_rng(seed)
    share = -(-MAX_PIXELS // max(len(batches), 1))
    feats, errors = [], []
    was_training = net.training
    net.eval()
    try:
        with torch.inference_mode():
            for x, y, *rest in batches:
                captured.clear()
                with engine.autocast():
                    pred = net(engine.tensor(x))
                c = y.shape[1]
                f = captured[0].float().movedim(1, -1).reshape(-1, captured[0].shape[1])
                e = (pred[:, :c].float() - engine.tensor(y)).abs().movedim(1, -1).reshape(-1, c)
                if rest and rest[0] is not None:
                    keep = engine.tensor(rest[0]).movedim(1, -1).reshape(-1, rest[0].shape[1]).amax(1) > 0
                    f, e = f[keep], e[keep]
                if len(f) > share:
                    pick = torch.from_numpy(rng.choice(len(f), share, replace=False)).to(f.device)
                    f, e = f[pick], e[pick]
                feats.append(f.cpu())
                errors.append(e.cpu())
    finally:
        hook.remove()
        net.train(was_training)
    return torch.cat(feats).double(), torch.cat(errors).double()


def laplace_nll(z: torch.Tensor, errors: torch.Tensor) -> torch.Tensor:
    """Mean Laplace negative log-likelihood (less ln 2) of ``errors`` under scales ``softplus(z) + FLOOR``."""
    scale = F.softplus(z) + FLOOR
    return torch.mean(errors / scale + torch.log(scale))


def fit_head(features: torch.Tensor, errors: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, float, float]:  # fmt: skip
    """The head ``(weight (C, F), bias (C))`` that minimises the NLL of ``errors``; also the NLL before and after.

    Returns the trained head unchanged where the fit does not score better on these pixels.
    """
    before = float(laplace_nll(features @ weight.T + bias, errors))
    mu, sigma = features.mean(0), features.std(0)
    # features that barely vary on these pixels would take weights that explode on images where they do
    sigma = sigma.clamp(min=max(SPREAD_FLOOR * float(sigma.median()), 1e-6))
    z = (features - mu) / sigma
    start = torch.log(torch.expm1(errors.mean(0).clamp(min=2 * FLOOR) - FLOOR))  # softplus^-1 of the mean error
    w = torch.zeros_like(weight, requires_grad=True)
    b = start.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], max_iter=ITERATIONS, line_search_fn="strong_wolfe", tolerance_grad=1e-9)

    def closure():
        opt.zero_grad()
        loss = laplace_nll(z @ w.T + b, errors) + RIDGE * torch.sum(w**2)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    fitted_w, fitted_b = (w / sigma).detach(), (b - (w / sigma) @ mu).detach()
    after = float(laplace_nll(features @ fitted_w.T + fitted_b, errors))
    if not (np.isfinite(after) and after < before):
        return weight, bias, before, before
    return fitted_w, fitted_b, before, after


def fit_scale(net: torch.nn.Module, batches: Sequence[tuple], engine: Engine, seed: int = 0) -> dict | None:
    """Fit ``net``'s scale head in place to its errors on ``batches``; returns what it did (None: no head)."""
    head = getattr(net, "scale_head", None)
    if head is None:
        return None
    features, errors = head_inputs(net, batches, engine, seed)
    if len(features) == 0:
        return None
    weight = head.weight.detach().double().reshape(head.weight.shape[0], -1).cpu()
    bias = head.bias.detach().double().cpu()
    w, b, before, after = fit_head(features, errors, weight, bias)
    with torch.no_grad():
        head.weight.copy_(w.reshape(head.weight.shape).to(head.weight))
        head.bias.copy_(b.to(head.bias))
    return {"pixels": len(features), "nll_before": round(before, 5), "nll_after": round(after, 5)}
