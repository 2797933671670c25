"""Training losses, and the protocol a loss follows.

A loss takes the network output, the targets (None for self-supervised batches, whose loss reads
the inputs it was given) and an optional mask of the pixels that count (1) and do not (0).
"""

from __future__ import annotations

import math
from typing import Protocol

import torch

NLL_BETA = 1.0


class Loss(Protocol):
    def __call__(
        self, pred: torch.Tensor, y: torch.Tensor | None, mask: torch.Tensor | None = None
    ) -> torch.Tensor: ...


def mean_over(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The mean of ``values``, over the pixels ``mask`` marks where there is one."""
    return torch.mean(values) if mask is None else torch.sum(values * mask) / torch.sum(mask).clamp(min=1)


def laplace_nll(pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Negative log-likelihood of ``y`` under Laplace(mean, scale) stacked as ``pred = [mean, scale]``.

    Each pixel's term is weighted by its scale to the power :data:`NLL_BETA`, held constant for
    the gradient (beta-NLL, Seitzer et al. 2022). The plain NLL (beta = 0) moves the mean by
    ``sign(error) / scale``, so pixels the network is already sure of (flat background)
    dominate and the mean learns more slowly than under MAE; with ``beta = 1`` the mean's
    gradient is exactly MAE's, while the scale's optimum stays the expected absolute error.
    """
    c = y.shape[1]
    mean, scale = pred[:, :c].float(), pred[:, c:].float()
    nll = torch.abs(y - mean) / scale + torch.log(scale) + math.log(2.0)
    return mean_over(nll * scale.detach() ** NLL_BETA, mask)


def loss_function(name: str, probabilistic: bool = False) -> Loss:
    """The configured loss: MAE or MSE of the mean, or the Laplace NLL of a probabilistic network."""
    if probabilistic:
        return laplace_nll
    if name == "mse":
        return lambda pred, y, mask=None: mean_over((pred.float() - y) ** 2, mask)
    return lambda pred, y, mask=None: mean_over(torch.abs(pred.float() - y), mask)
