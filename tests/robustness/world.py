"""The shared, read-only things robustness cases start from: images, tiny models, a package, OME-Zarr.

Built once per test session (a few seconds: two tiny trainings and one tiny ONNX network). Cases
copy what they change into their own folder; the harness checks that nothing in here ever changes.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
import torch
import yaml
from scipy.ndimage import gaussian_filter

TINY = {"epochs": 1, "steps_per_epoch": 3, "n_first": 4, "kernel_size": 3, "batch_size": 4, "patch_size": (32, 32),
        "validation_patches": 4, "precision": "float32", "progress": False}  # fmt: skip


@dataclass
class World:
    root: Path
    low: Path  # folder of two float32 80x80 low-SNR images
    high: Path  # their uint16 targets, same names
    image: Path  # a YX float32 64x64 image that records its axes
    model: Path  # a tiny 2D denoising model
    prob: Path  # a tiny probabilistic 2D model
    package: Path  # a bioimage.io 0.5 package: a tiny ONNX network with pre- and post-processing
    zarr: Path  # a YX OME-Zarr image, 64x64 in 16x16 chunks
    recipe: Path  # a small synthetic recipe


def blobs(shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros(shape, np.float32)
    idx = tuple(rng.integers(0, s, max(1, int(0.004 * np.prod(shape)))) for s in shape)
    img[idx] = rng.uniform(0.5, 1.0, len(idx[0]))
    img = gaussian_filter(img, 2.0)
    return img / img.max()


def noisy(clean: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.poisson(clean * 20) + rng.normal(0, 1, clean.shape)).astype(np.float32)


class Affine(torch.nn.Module):
    """The tiny network of the test packages: a 3x3 convolution with fixed weights."""

    def __init__(self, channels: int = 1) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=True)
        with torch.no_grad():
            self.conv.weight.fill_(1 / 9)
            self.conv.bias.fill_(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def onnx_bytes(net: torch.nn.Module, channels: int = 1, names=("input", "output")) -> bytes:
    buf = io.BytesIO()
    dynamic = {n: {0: "b", 2: "y", 3: "x"} for n in names}
    torch.onnx.export(net, (torch.zeros(1, channels, 16, 16),), buf, input_names=[names[0]], output_names=[names[1]],
                      dynamic_axes=dynamic, opset_version=17, dynamo=False)  # fmt: skip
    return buf.getvalue()


def torchscript_bytes(net: torch.nn.Module, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.trace(net, torch.zeros(1, channels, 16, 16)), buf)
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def package_rdf(weights: dict[str, bytes]) -> dict:
    """A spec-0.5 description of the tiny network (``weights``: format -> file bytes)."""
    space_in = [{"type": "space", "id": a, "size": {"min": 8, "step": 1}} for a in ("y", "x")]
    space_out = [{"type": "space", "id": a, "size": {"tensor_id": "raw", "axis_id": a}} for a in ("y", "x")]
    channel = {"type": "channel", "channel_names": ["c0"]}
    files = {"onnx": "weights.onnx", "torchscript": "weights.pt"}
    return {
        "format_version": "0.5.4",
        "type": "model",
        "name": "tiny",
        "inputs": [{"id": "raw", "axes": [{"type": "batch"}, channel, *space_in],
                    "preprocessing": [{"id": "zero_mean_unit_variance"}]}],
        "outputs": [{"id": "out", "axes": [{"type": "batch"}, channel, *space_out],
                     "postprocessing": [{"id": "scale_linear", "kwargs": {"gain": 2.0, "offset": 1.0}}]}],
        "weights": {k: {"source": files[k], "sha256": sha256(v)} for k, v in weights.items()},
    }  # fmt: skip


def write_package(path: Path, rdf: dict, members: dict[str, bytes]) -> Path:
    """A zip with ``rdf.yaml`` and ``members``."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("rdf.yaml", yaml.safe_dump(rdf))
        for name, data in members.items():
            z.writestr(name, data)
    return path


RECIPE = {"shape": [32, 32], "pairs": 2, "seed": 0, "channels": [[{"type": "tubules", "density": 0.02}]],
          "imaging": {"photons": 50}}  # fmt: skip


def build_world(root: Path) -> World:
    """Write the shared images, models, package and OME-Zarr image into ``root``."""
    import carekit
    from carekit.omezarr import write_omezarr

    root.mkdir(parents=True, exist_ok=True)
    low, high = root / "low", root / "high"
    low.mkdir(exist_ok=True)
    high.mkdir(exist_ok=True)
    for i in range(2):
        clean = blobs((80, 80), seed=i)
        tifffile.imwrite(high / f"img{i}.tif", (clean * 1000).astype(np.uint16))
        tifffile.imwrite(low / f"img{i}.tif", noisy(clean, seed=10 + i))
    image = root / "image.tif"
    tifffile.imwrite(image, noisy(blobs((64, 64), seed=5), seed=6), metadata={"axes": "YX"})
    carekit.train(str(low), str(high), axes="YX", model_dir=root / "model", **TINY)
    carekit.train(str(low), str(high), axes="YX", model_dir=root / "prob", probabilistic=True, **TINY)
    weights = {"onnx": onnx_bytes(Affine())}
    write_package(root / "package.zip", package_rdf(weights), {"weights.onnx": weights["onnx"]})
    write_omezarr(root / "image.zarr", tifffile.imread(image), "YX", chunks=(16, 16))
    (root / "recipe.json").write_text(json.dumps(RECIPE))
    return world_at(root)


def world_at(root: Path) -> World:
    """The world :func:`build_world` wrote into ``root`` (paths only: nothing is computed)."""
    return World(root, root / "low", root / "high", root / "image.tif", root / "model", root / "prob",
                 root / "package.zip", root / "image.zarr", root / "recipe.json")  # fmt: skip
