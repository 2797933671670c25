"""Semi-synthetic training pairs for isotropic restoration and z-upsampling.

An anisotropic stack sees its axial (XZ, YZ) planes through a PSF elongated along z
and sampled ``factor`` times more coarsely than laterally. Its lateral (XY) planes
are sharp, so they serve as ground truth once degraded to look axial along one
lateral axis: blurred by the anisotropic part of the PSF, optionally made noisy,
subsampled by ``factor`` and interpolated back. All functions here are pure numpy
functions of (array, parameters, rng); sizes are in lateral pixels.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import convolve1d, zoom
from scipy.signal import fftconvolve
from skimage.restoration import richardson_lucy

from carekit.data.camera import gaussian_kernel_1d, poisson_gaussian, subsample_and_interpolate, to_photons
from carekit.data.pairs import ImagePair
from carekit.errors import CarekitError

DEGRADED_AXIS = -1  # networks learn to undo axial blur along X of a 2D image


def anisotropic_sigma(sigma_z: float, sigma_xy: float) -> float:
    """Extra blur that turns a lateral PSF (``sigma_xy``) into an axial one (``sigma_z``): ``sqrt(sz² - sxy²)``."""
    if sigma_z < 0 or sigma_xy < 0:
        raise CarekitError(f"PSF sigmas must be non-negative, got z {sigma_z}, xy {sigma_xy}")
    return math.sqrt(max(sigma_z**2 - sigma_xy**2, 0.0))


def anisotropic_kernel(psf: np.ndarray, spacing_ratio: float = 1.0, iterations: int = 100) -> np.ndarray:
    """The 2D kernel that turns a measured PSF's lateral section into its axial section.

    ``psf`` is a ZYX stack; ``spacing_ratio`` is its z-step over its lateral pixel size
    (it is resampled to isotropic lateral pixels first). The kernel ``k`` solves
    ``psf_xy ⊛ k ≈ psf_xz`` (z laid along the second axis) by Richardson-Lucy deconvolution,
    which keeps it non-negative and free of ringing.
    """
    psf = np.asarray(psf, np.float64)
    if psf.ndim != 3:
        raise CarekitError(f"the PSF must be a 3D ZYX stack, got {psf.ndim} dimension(s) of shape {psf.shape}")
    if not np.isfinite(psf).all() or psf.sum() <= 0:
        raise CarekitError("the PSF must hold finite values with a positive sum")
    if spacing_ratio != 1.0:
        psf = zoom(psf, (spacing_ratio, 1, 1), order=1)
    psf = np.clip(psf - np.median(psf), 0, None)  # remove a flat background of measured PSFs
    cz, cy, _ = np.unravel_index(np.argmax(psf), psf.shape)
    lateral = psf[cz]  # (Y, X)
    axial = psf[:, cy, :].T  # (X, Z): z along the second axis, like X of a lateral plane
    size = max(*lateral.shape, *axial.shape) | 1
    lateral, axial = centred(lateral, size), centred(axial, size)
    k = richardson_lucy(axial / axial.sum(), lateral / lateral.sum(), num_iter=iterations, clip=False)
    return (k / k.sum()).astype(np.float32)


def centred(img: np.ndarray, size: int) -> np.ndarray:
    """Pad (or crop) a 2D array to ``size x size`` with its maximum at the centre."""
    out = np.zeros((size, size), np.float64)
    py, px = np.unravel_index(np.argmax(img), img.shape)
    c = size // 2
    ys = np.arange(img.shape[0]) - py + c
    xs = np.arange(img.shape[1]) - px + c
    keep_y, keep_x = (ys >= 0) & (ys < size), (xs >= 0) & (xs < size)
    out[np.ix_(ys[keep_y], xs[keep_x])] = img[np.ix_(keep_y, keep_x)]
    return out


def degrade(plane: np.ndarray, factor: float, *, sigma: float = 0.0, kernel: np.ndarray | None = None,
            peak_photons: float | None = None, read_sigma: float = 0.0,
            rng: np.random.Generator | None = None) -> np.ndarray:  # fmt: skip
    """Make lateral planes ``(..., Y, X)`` look axial along X.

    Blur with the anisotropic PSF part (a Gaussian of ``sigma`` along X, or a 2D ``kernel``),
    optionally add Poisson-Gaussian noise at ``peak_photons``, subsample X by ``factor`` and
    interpolate back (same shape out).
    """
    if factor < 1:
        raise CarekitError(f"factor must be at least 1, got {factor}")
    x = np.asarray(plane, np.float32)
    if kernel is not None:
        k = np.asarray(kernel, np.float32).reshape((1,) * (x.ndim - 2) + kernel.shape)
        x = fftconvolve(x, k, mode="same", axes=(-2, -1)).astype(np.float32)
    elif sigma > 0:
        x = convolve1d(x, gaussian_kernel_1d(sigma), axis=-1, mode="reflect")
    if peak_photons is not None:
        lo, hi = float(x.min()), float(np.percentile(x, 99.9))
        noisy = poisson_gaussian(to_photons(x, peak_photons), rng or np.random.default_rng(), read_sigma=read_sigma)
        x = noisy / peak_photons * (hi - lo) + lo
    return subsample_and_interpolate(x, -1, factor)


def isotropic_pairs(stack: np.ndarray, factor: float, *, sigma: float = 0.0, kernel: np.ndarray | None = None,
                    peak_photons: float | None = None, read_sigma: float = 0.0, seed: int = 0,
                    min_size: int = 16) -> list[ImagePair]:  # fmt: skip
    """Training pairs from an anisotropic stack ``(Z, C, Y, X)``: each lateral plane, degraded
    along X, and the same plane transposed (so Y's structure is learned too), degraded along X."""
    stack = np.asarray(stack)
    if stack.ndim != 4:
        raise CarekitError(f"expected a (Z, C, Y, X) stack, got shape {stack.shape}")
    z, _, ny, nx = stack.shape
    if min(ny, nx) < min_size:
        raise CarekitError(
            f"stack of lateral size {ny}x{nx} is too thin to train on; it needs at least {min_size} pixels laterally"
        )
    rng = np.random.default_rng(seed)
    pairs = []
    options = {"sigma": sigma, "kernel": kernel, "peak_photons": peak_photons, "read_sigma": read_sigma, "rng": rng}
    for i in range(z):
        plane = stack[i].astype(np.float32)
        turned = np.swapaxes(plane, -1, -2)
        pairs.append(ImagePair(f"z{i}", degrade(plane, factor, **options), plane))
        pairs.append(ImagePair(f"z{i}T", degrade(turned, factor, **options), turned))
    return pairs


def upsampling_pairs(stack: np.ndarray, factor: float) -> list[ImagePair]:
    """3D pairs for upsampling CARE from a finely sampled stack ``(C, Z, Y, X)``: the input is the
    stack subsampled along z by ``factor`` and interpolated back, the target the stack itself."""
    stack = np.asarray(stack, np.float32)
    if stack.ndim != 4:
        raise CarekitError(f"expected a (C, Z, Y, X) stack, got shape {stack.shape}")
    if factor < 1:
        raise CarekitError(f"factor must be at least 1, got {factor}")
    if stack.shape[1] < 2 * factor:
        raise CarekitError(f"stack of {stack.shape[1]} slices is too thin to subsample by {factor}; it needs more z")
    return [ImagePair("stack", subsample_and_interpolate(stack, 1, factor), stack)]
