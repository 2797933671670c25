"""Classical restorations to compare against: Gaussian filters, non-local means and Richardson-Lucy.

``tuned_nlm`` searches NLM's filter strength and window sizes, ``best_filter`` the better of a
Gaussian filter and NLM, and ``tuned_rl`` the Richardson-Lucy iteration count, against ground
truth (an oracle choice no user could make), so comparisons are as fair to the classical
methods as possible.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.ndimage import convolve, gaussian_filter
from skimage.restoration import denoise_nl_means
from skimage.restoration import richardson_lucy as richardson_lucy_skimage

from carekit.metrics import evaluate

H_FACTORS = (0.4, 0.6, 0.8, 1.0, 1.2, 1.5)
PATCH_SIZES = (5, 7)
PATCH_DISTANCES = (6, 11)
LAPLACE = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float64)


def noise_sigma(image: np.ndarray) -> float:
    """Gaussian noise level of a 2D image from its Laplacian residual (Immerkær 1996)."""
    img = np.asarray(image, np.float64)
    residual = np.abs(convolve(img, LAPLACE, mode="reflect"))[1:-1, 1:-1]
    return float(np.sqrt(np.pi / 2) * residual.mean() / 6)


def nlm(image: np.ndarray, *, h: float = 0.8, patch_size: int = 5, patch_distance: int = 6) -> np.ndarray:
    """Non-local means on each 2D plane of ``image`` with strength ``h`` times the plane's noise level."""
    img = np.asarray(image, np.float32)
    planes = img.reshape(-1, *img.shape[-2:])
    out = np.empty_like(planes)
    for i, plane in enumerate(planes):
        sigma = noise_sigma(plane)
        out[i] = denoise_nl_means(
            plane, h=h * sigma, sigma=sigma, patch_size=patch_size, patch_distance=patch_distance, fast_mode=True
        )
    return out.reshape(img.shape)


Boxes = list[tuple[slice, slice]] | None  # the part of each 2D plane that is scored (None: all of it)


def mean_psnr(prediction: np.ndarray, truth: np.ndarray, boxes: Boxes = None) -> float:
    """PSNR averaged over 2D planes (the paper's per-image evaluation), each scored on its box."""
    p = prediction.reshape(-1, *prediction.shape[-2:])
    t = truth.reshape(-1, *truth.shape[-2:])
    every = [(slice(None), slice(None))] * len(t) if boxes is None else boxes
    return float(np.mean([evaluate(a[b], c[b])["psnr"] for a, c, b in zip(p, t, every, strict=True)]))


def tuned_nlm(noisy: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, dict]:
    """NLM with the parameters that score best against ``truth``; returns the image and the parameters."""
    best: tuple[float, np.ndarray | None, dict] = (-np.inf, None, {})
    for h, ps, pd in itertools.product(H_FACTORS, PATCH_SIZES, PATCH_DISTANCES):
        out = nlm(noisy, h=h, patch_size=ps, patch_distance=pd)
        score = mean_psnr(out, truth)
        if score > best[0]:
            best = (score, out, {"h": h, "patch_size": ps, "patch_distance": pd})
    assert best[1] is not None
    return best[1], best[2]


GAUSS_SIGMAS = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
QUICK_NLM = tuple({"h": h, "patch_size": 5, "patch_distance": 6} for h in (0.6, 0.9, 1.2))


def best_filter(noisy: np.ndarray, truth: np.ndarray, *, nlm_settings=QUICK_NLM, boxes: Boxes = None) -> dict:
    """The best of Gaussian filters and NLM against ``truth`` (same shape, leading axes are samples,
    the last two are filtered): ``{"method", "params", "psnr"}`` with the mean per-plane PSNR, each
    plane filtered whole and scored on its box where ``boxes`` are given."""
    candidates = []
    for sigma in GAUSS_SIGMAS:
        smoothed = gaussian_filter(np.asarray(noisy, np.float32), (0,) * (noisy.ndim - 2) + (sigma, sigma))
        candidates.append((mean_psnr(smoothed, truth, boxes), "Gaussian filter", {"sigma": sigma}))
    for settings in nlm_settings:
        candidates.append((mean_psnr(nlm(noisy, **settings), truth, boxes), "non-local means", dict(settings)))
    psnr, method, params = max(candidates, key=lambda c: c[0])
    return {"method": method, "params": params, "psnr": psnr}


def describe_margin(report: dict | None) -> tuple[str, str | None]:
    """A phrase for the summary and, where the network loses (alone, or mixed with a filter of its
    input), a warning with advice."""
    if not report:
        return "", None
    if "skipped" in report:
        return f"no margin over simple filters: {report['skipped']}", None
    best = report["best_classical"]
    params = ", ".join(f"{k} {v:g}" for k, v in best["params"].items())
    margin = f"{report['margin_db']:+.2f} dB"
    alone = report.get("network_alone_margin_db")
    phrase = (f"{margin} over the best simple filter on its validation data ({best['method']}, {params}: "
              f"{best['psnr']:.2f} dB; network {report['network_psnr']:.2f} dB"
              + (f", {alone:+.2f} dB without the mix)" if alone is not None else ")"))  # fmt: skip
    advice = "train longer, with more or more varied pairs, or use the filter"
    if report["margin_db"] <= 0:
        return phrase, (f"this model does not beat a simple filter on its own validation data ({margin} against "
                        f"{best['method']}); {advice}")  # fmt: skip
    if alone is not None and alone <= 0:
        return phrase, (f"this model's network alone does not beat a simple filter on its own validation data "
                        f"({alone:+.2f} dB against {best['method']}; {margin} mixed with a Gaussian filter of the "
                        f"input); {advice}")  # fmt: skip
    return phrase, None


def describe_blend(blend: dict | None) -> str:
    """A phrase for the summary on the network's mix with a Gaussian filter (``carekit.filterblend``;
    empty without one)."""
    if not blend:
        return ""
    sigma = " x ".join(f"{s:g}" for s in blend["sigma"])
    weights = ", ".join(f"{w:.2f}" for w in blend["weight"])
    return (f"output mixed with a Gaussian filter of the input ({sigma} px; output weight {weights}), "
            f"{blend['gain_db']:+.2f} dB on its validation data")  # fmt: skip


RL_ITERATIONS = (2, 5, 10, 20, 40, 80, 160)


def richardson_lucy(image: np.ndarray, psf: np.ndarray, iterations: int) -> np.ndarray:
    """Richardson-Lucy deconvolution (scikit-image) of a non-negative image with ``psf``.

    The image is shifted to be non-negative and scaled to [0, 1] first, as RL expects
    non-negative data; the result is returned in that scaled unit.
    """
    img = np.asarray(image, np.float64)
    img = img - min(img.min(), 0.0)
    scale = img.max() or 1.0
    return richardson_lucy_skimage(img / scale, np.asarray(psf, np.float64), num_iter=iterations, clip=False)


def tuned_rl(image: np.ndarray, truth: np.ndarray, psf: np.ndarray) -> tuple[np.ndarray, int]:
    """Richardson-Lucy with the iteration count that scores best against ``truth``."""
    scored = []
    for n in RL_ITERATIONS:
        out = richardson_lucy(image, psf, n)
        scored.append((evaluate(out, truth)["psnr"], n, out))
    _, n, out = max(scored, key=lambda s: s[0])
    return out.astype(np.float32), n
