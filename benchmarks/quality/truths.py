"""Ground truths for the quality benchmark: real images and structures drawn for evaluation only.

Every dataset gives training truths and test truths that share no pixel. The synthetic ones are
drawn here with methods of their own (Bezier curves, watershed cells, band-pass labyrinths, ...),
independent of ``carekit.data.synthetic`` and of anything carekit pre-trains on, so a network that
learned carekit's generators is tested on structure drawn differently. Real images come from the
shared sample folder (``--data``); the package never reads it.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


@dataclass
class Dataset:
    """Clean images (2D ``(Y, X)`` or 3D ``(Z, Y, X)``, float32) to degrade, train on and test on."""

    name: str
    kind: str  # "real" or "synthetic"
    train: list[np.ndarray]
    test: list[np.ndarray]

    @property
    def ndim(self) -> int:
        return self.train[0].ndim


def unit(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img, np.float32)
    lo, hi = np.percentile(img, (0.01, 99.99))
    return np.clip((img - lo) / (hi - lo or 1.0), 0, None).astype(np.float32)


# -- real images ---------------------------------------------------------------------------------
def read(name: str, data: Path) -> np.ndarray:
    import tifffile

    path = data / name
    if not path.exists():
        raise SystemExit(f"{path}: missing; pass --data with the folder of the shared sample images")
    return tifffile.imread(path).astype(np.float32)


def confocal_nuclei(data: Path) -> Dataset:
    """Confocal nuclei (scikit-image cells3d): slices as 2D images; test rows never trained on."""
    v = read("nuclei3d_confocal.tif", data)
    train = [v[z, :160] for z in range(22, 50, 4)]  # the slices that hold nuclei
    test = [v[z, 176:, :128] for z in (24, 36, 48)] + [v[z, 176:, 128:] for z in (30, 42)]
    return Dataset("confocal-nuclei", "real", train, test)


def widefield_nuclei(data: Path) -> Dataset:
    """Widefield nuclei (Data Science Bowl 2018): one image, split into rows."""
    v = read("nuclei2d_dsb2018.tif", data)
    train = [v[:352, :256], v[:352, 256:]]
    test = [v[384:, x : x + 128] for x in range(0, 512, 128)]
    return Dataset("widefield-nuclei", "real", train, test)


def timelapse_nuclei(data: Path) -> Dataset:
    """Time-lapse nuclei (Cell Tracking Challenge): early frames train, late frames test."""
    v = read("nuclei2d_timelapse.tif", data)
    train = [v[t, :256, :256] for t in range(0, 20, 4)] + [v[t, 255:, 255:] for t in range(2, 20, 4)]
    test = [v[t, 64:320, 128:384] for t in (24, 27)] + [v[t, 255:, :256] for t in (25, 29)]
    return Dataset("timelapse-nuclei", "real", train, test)


def confocal_nuclei_3d(data: Path) -> Dataset:
    """The confocal stack in 3D: the upper rows of the whole stack train, the lower rows test."""
    v = read("nuclei3d_confocal.tif", data)
    return Dataset("confocal-nuclei-3d", "real", [v[14:58, :160]], [v[18:50, 176:, :128], v[22:54, 176:, 128:]])


# -- structures drawn for evaluation ------------------------------------------------------------
def bezier_tubules(shape, rng, density: float = 0.01) -> np.ndarray:
    """Cubic Bezier curves across the image, widths 0.6-1.6 px, brightness varying along each."""
    out = np.zeros(shape, np.float32)
    n = max(2, int(density * np.sqrt(np.prod(shape)) * 4))
    t = np.linspace(0, 1, 4 * int(max(shape)))[:, None]
    for _ in range(n):
        p = rng.uniform(-0.2, 1.2, (4, 2)) * np.array(shape)
        curve = (1 - t) ** 3 * p[0] + 3 * (1 - t) ** 2 * t * p[1] + 3 * (1 - t) * t**2 * p[2] + t**3 * p[3]
        brightness = rng.uniform(0.4, 1.0) * (1 + 0.3 * np.sin(rng.uniform(2, 12) * t[:, 0] + rng.uniform(0, 6)))
        layer = np.zeros(shape, np.float32)
        ij = np.round(curve).astype(int)
        keep = np.all((ij >= 0) & (ij < np.array(shape)), axis=1)
        np.add.at(layer, tuple(ij[keep].T), brightness[keep])
        out += ndi.gaussian_filter(layer, rng.uniform(0.6, 1.6))
    return out


def watershed_membranes(shape, rng, cell: float = 22.0) -> np.ndarray:
    """Cell outlines: watershed basins of a smoothed random field, bright uneven boundaries."""
    from skimage.segmentation import find_boundaries, watershed

    field = ndi.gaussian_filter(rng.standard_normal(shape), cell / 4)
    peaks = (field == ndi.maximum_filter(field, size=int(cell * 0.6))) & (field > np.percentile(field, 20))
    labels = watershed(-field, ndi.label(peaks)[0])
    edges = find_boundaries(labels, mode="inner").astype(np.float32)
    brightness = ndi.gaussian_filter(rng.uniform(0.3, 1.0, shape), 6) * 2
    interior = 0.12 * rng.uniform(0.5, 1.0, labels.max() + 1)[labels]
    return ndi.gaussian_filter(edges * brightness, 1.0) + ndi.gaussian_filter(interior, 1.0)


def gaussian_granules(shape, rng, density: float = 0.004) -> np.ndarray:
    """Anisotropic Gaussian spots, sizes 0.8-3 px, heavy-tailed brightness."""
    out = np.zeros(shape, np.float32)
    n = int(density * np.prod(shape))
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    for _ in range(n):
        cy, cx = rng.uniform(0, 1, 2) * np.array(shape)
        sy, sx = rng.uniform(0.8, 3.0, 2)
        r = int(4 * max(sy, sx)) + 1
        y0, y1 = max(0, int(cy) - r), min(shape[0], int(cy) + r)
        x0, x1 = max(0, int(cx) - r), min(shape[1], int(cx) + r)
        g = np.exp(-0.5 * (((yy[y0:y1, x0:x1] - cy) / sy) ** 2 + ((xx[y0:y1, x0:x1] - cx) / sx) ** 2))
        out[y0:y1, x0:x1] += (rng.pareto(3.0) * 0.3 + 0.2) * g
    return out


def textured_nuclei(shape, rng, count: float = 0.0012) -> np.ndarray:
    """Ellipses with soft edges, smooth chromatin texture and a few bright spots inside."""
    out = np.zeros(shape, np.float32)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    texture = 0.6 + 0.4 * unit(ndi.gaussian_filter(rng.standard_normal(shape), 2.0))
    for _ in range(max(3, int(count * np.prod(shape)))):
        cy, cx = rng.uniform(0, 1, 2) * np.array(shape)
        a, b = rng.uniform(7, 16), rng.uniform(5, 12)
        th = rng.uniform(0, np.pi)
        u = ((yy - cy) * np.cos(th) + (xx - cx) * np.sin(th)) / a
        v = (-(yy - cy) * np.sin(th) + (xx - cx) * np.cos(th)) / b
        inside = 1 / (1 + np.exp(np.minimum((np.sqrt(u**2 + v**2) - 1) * 12, 50)))
        out = np.maximum(out, inside * rng.uniform(0.4, 1.0))
    spots = ndi.gaussian_filter((rng.random(shape) < 0.002).astype(np.float32), 1.2) * 8
    return out * texture + out * spots


def labyrinth_texture(shape, rng) -> np.ndarray:
    """A dense reticular texture (ER-like): the zero set of band-pass filtered noise."""
    noise = rng.standard_normal(shape)
    band = ndi.gaussian_filter(noise, 2.0) - ndi.gaussian_filter(noise, 4.0)
    lines = np.exp(-0.5 * (band / (0.25 * band.std())) ** 2)
    return ndi.gaussian_filter(lines * (0.5 + unit(ndi.gaussian_filter(noise, 12))), 0.8)


def sparse_points(shape, rng, density: float = 0.0015) -> np.ndarray:
    """Isolated point emitters seen through a PSF of sigma 1.3 px, brightness over a decade."""
    out = np.zeros(shape, np.float32)
    n = int(density * np.prod(shape))
    idx = tuple(rng.integers(0, s, n) for s in shape)
    np.add.at(out, idx, np.exp(rng.uniform(0, np.log(10), n)).astype(np.float32))
    return ndi.gaussian_filter(out, 1.3)


def granules_3d(shape, rng, density: float = 0.0008) -> np.ndarray:
    """3D vesicles: Gaussian blobs of 1-2.5 voxels, axially elongated by the PSF."""
    out = np.zeros(shape, np.float32)
    n = int(density * np.prod(shape))
    idx = tuple(rng.integers(0, s, n) for s in shape)
    np.add.at(out, idx, rng.uniform(0.3, 1.0, n).astype(np.float32))
    return ndi.gaussian_filter(out, (2.2, 1.3, 1.3)) + 0.3 * ndi.gaussian_filter(out, (4.0, 2.5, 2.5))


def drawn(name: str, make: Callable, shape=(256, 256), test_shape=(128, 128), n_train=6, n_test=4) -> Callable:
    def build(_data: Path) -> Dataset:
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        train = [unit(make(shape, rng)) for _ in range(n_train)]
        test = [unit(make(test_shape, rng)) for _ in range(n_test)]
        return Dataset(name, "synthetic", train, test)

    return build


DATASETS: dict[str, Callable[[Path], Dataset]] = {
    "confocal-nuclei": confocal_nuclei,
    "widefield-nuclei": widefield_nuclei,
    "timelapse-nuclei": timelapse_nuclei,
    "membranes": drawn("membranes", watershed_membranes),
    "tubules": drawn("tubules", bezier_tubules),
    "granules": drawn("granules", gaussian_granules),
    "nuclei": drawn("nuclei", textured_nuclei),
    "texture": drawn("texture", labyrinth_texture),
    "points": drawn("points", sparse_points),
    "confocal-nuclei-3d": confocal_nuclei_3d,
    "granules-3d": drawn("granules-3d", granules_3d, (32, 128, 128), (24, 96, 96), n_train=3, n_test=2),
}
DATASETS_2D = [k for k in DATASETS if not k.endswith("-3d")]


def load(name: str, data: Path = DATA) -> Dataset:
    if name not in DATASETS:
        raise SystemExit(f"dataset '{name}' is unknown; use one of {', '.join(DATASETS)}")
    return DATASETS[name](data)
