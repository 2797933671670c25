"""The paper's evaluation: NRMSE, PSNR and SSIM after fitting intensities.

The ground truth is scaled by its 0.1 and 99.9 percentiles; the prediction is then
mapped onto it by the least-squares scale and offset, so that methods that change
the intensity scale are neither rewarded nor punished for it. Scores use a data
range of 1.
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity

from carekit.errors import CarekitError

TRUTH_PERCENTILES = (0.1, 99.9)


def normalize_truth(truth: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(truth, TRUTH_PERCENTILES)
    return ((truth - lo) / (hi - lo if hi > lo else 1.0)).astype(np.float64)


def fit_affine(x: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``alpha * x + beta`` fitted to ``target``: ``alpha = cov(x, t) / var(x)``, ``beta = mean(t) - alpha mean(x)``."""
    x = np.asarray(x, np.float64)
    var = x.var()
    alpha = ((x - x.mean()) * (target - target.mean())).mean() / var if var > 0 else 0.0
    return alpha * x + (target.mean() - alpha * x.mean())


def fitted_error(prediction: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """The fitted prediction, the normalised truth and their mean squared error."""
    t = normalize_truth(truth)
    p = fit_affine(prediction, t)
    return p, t, float(np.mean((p - t) ** 2))


def decibels(mse: float) -> float:
    """PSNR for data range 1."""
    return float(10 * np.log10(1.0 / mse)) if mse > 0 else float("inf")


def evaluate(prediction: np.ndarray, truth: np.ndarray, *, names: tuple[str, str] = ("prediction", "truth")
             ) -> dict[str, float]:  # fmt: skip
    """NRMSE, PSNR (dB) and SSIM of ``prediction`` against ``truth`` (same shape, 2D or 3D, at least
    3 pixels along every axis longer than 1). A constant truth has no scale to compare against and is
    refused; ``names`` name the two in error messages. PSNR is infinite for an exact (affine) match.

    Examples
    --------
    >>> t = np.linspace(0, 1, 64 * 64).reshape(64, 64)
    >>> evaluate(3 * t + 1, t)["psnr"] > 100  # an affine copy is perfect
    True
    """
    prediction = np.asarray(prediction)
    truth = np.asarray(truth)
    if prediction.shape != truth.shape:
        raise CarekitError(f"{names[0]}: shape {prediction.shape} differs from {names[1]} shape {truth.shape}")
    for name, a in zip(names, (prediction, truth), strict=True):
        if a.dtype.kind not in "uif":
            raise CarekitError(f"{name}: pixel type {a.dtype} cannot be scored; give integer or float images")
        if not np.isfinite(a).all():
            raise CarekitError(f"{name}: holds NaN or infinite values; scores would be meaningless")
    sizes = [s for s in truth.shape if s > 1]
    if len(sizes) < 2 or min(sizes) < 3:
        raise CarekitError(f"{names[1]}: shape {truth.shape} is too small to score (SSIM needs at least 3x3 pixels); "
                           "compare whole images")  # fmt: skip
    if np.ptp(truth) == 0:
        raise CarekitError(f"{names[1]}: the ground truth is constant ({truth.flat[0]}), so NRMSE, PSNR and SSIM are "
                           "undefined; compare against an image with structure")  # fmt: skip
    p, t, mse = fitted_error(prediction, truth)
    psnr = decibels(mse)
    squeezed = [s for s in t.shape if s > 1]
    win = min(7, *squeezed) if squeezed else 1
    win -= 1 - win % 2
    ssim = float(structural_similarity(p.squeeze(), t.squeeze(), data_range=1.0, win_size=max(win, 3)))
    return {"nrmse": float(np.sqrt(mse)), "psnr": psnr, "ssim": ssim}
