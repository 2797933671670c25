"""The application layer: what the command line, the Python API and a graphical interface call.

Each function takes plain values (paths, arrays, numbers), does one user-level job and reports
progress through callbacks; a ``threading.Event`` passed as ``stop`` cancels it cleanly (training
keeps its best weights, out-of-core prediction its finished blocks). Nothing here prints.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from carekit.axes import check_axes, to_net
from carekit.bioimageio import export
from carekit.chunked import restore_chunked
from carekit.data import recipes
from carekit.data.pairs import match_files
from carekit.ensemble import Ensemble, calibrate, load, train_ensemble
from carekit.errors import CarekitError
from carekit.figures import reliability_diagram, sample_movie
from carekit.io import (
    TIFF_SUFFIXES,
    check_output,
    check_result,
    inside,
    list_images,
    prepare_output,
    read_image,
    read_spacing,
    read_with_axes,
    write_tiff,
)
from carekit.metrics import evaluate
from carekit.model import CARE
from carekit.modes import MODES
from carekit.omezarr import is_zarr
from carekit.package import Package, is_package
from carekit.registry import mode_of, supporting
from carekit.tiling import Progress
from carekit.training import train_mode
from carekit.uncertainty import Laplace, Mixture

__all__ = ["MODES", "Restored", "calibrate_arrays", "calibrate_files", "evaluate_files", "export", "export_folder",
           "load", "open_model", "predict_array", "predict_files", "synth", "train"]  # fmt: skip

MAX_SYNTH = 100_000  # pairs 'carekit synth' writes at most


def train(mode: str, model_dir: str | Path, *, ensemble: int | None = None, **keywords) -> CARE | Ensemble:
    """Train a model of ``mode`` (or an ensemble of ``ensemble`` members) into ``model_dir``.

    ``keywords`` hold the mode's inputs (e.g. ``low``, ``high``, ``axes``; see its
    :class:`~carekit.registry.Mode`), its settings, configuration fields and the options of
    :func:`carekit.training.train_mode` (``time_budget``, ``resume``, ``overwrite``, ``device``,
    ``progress``, ``callbacks``, ``initialize``, ``stop``: a ``threading.Event`` that cancels).

    Examples
    --------
    >>> app.train("isotropic", "iso", input="stack.tif", axes="ZYX", factor=4, psf_sigma=(6, 1.5))  # doctest: +SKIP
    """
    kind = mode_of(mode)
    inputs = {k: keywords.pop(k) for k in kind.inputs if k in keywords}

    def train_one(model_dir: str | Path, **overrides) -> CARE:
        return train_mode(kind, model_dir, inputs, **{**keywords, **overrides})

    if ensemble is None:
        return train_one(model_dir)
    run = {k: keywords.pop(k) for k in ("time_budget", "resume", "overwrite", "stop") if k in keywords}
    return train_ensemble(train_one, ensemble, model_dir, seed=keywords.pop("seed", 0), **run)


def predict_files(model: str | Path, source: str | Path, output: str | Path, *, axes: str | None = None,
                  height_map: str | Path | None = None, uncertainty: str | Path | None = None, level: float = 0.9,
                  movie: str | Path | None = None, samples: int = 16, dask: str | None = None,
                  overwrite: bool = False, progress: bool = True, stop: threading.Event | None = None,
                  on_file: Callable[[Path, Path], None] | None = None, **options) -> list[Path]:  # fmt: skip
    """Restore a TIFF file or folder of TIFFs with a model folder, ensemble or bioimage.io package;
    OME-Zarr input or output (or ``dask``) restores out of core. Returns the written paths.

    ``options`` are prediction options (``n_tiles``, ``memory``, ``device``, ``precision``, ``tta``,
    a mode's own such as ``factor``). ``height_map`` (projection models), ``uncertainty`` (a folder
    for spread, interval, entropy and disagreement maps) and ``movie`` (samples, .gif or .mp4) ask
    for more outputs. ``on_file(source, output)`` is called after each file. No output may be the
    input or lie inside a model folder; existing outputs are replaced only with ``overwrite``.
    ``allow_torchscript`` runs a package's TorchScript weights (code; ONNX only by default);
    ``allow_missing_chunks`` reads chunks missing from an OME-Zarr input as its fill value.
    """
    options = {k: v for k, v in options.items() if v not in (None, False)}
    allow_torchscript = options.pop("allow_torchscript", False)
    allow_missing = options.pop("allow_missing_chunks", False)
    extras = {"--uncertainty": uncertainty, "--movie": movie, "--height-map": height_map,
              "--factor": options.get("factor"), "--tta": options.get("tta")}  # fmt: skip
    if is_package(model):
        package = Package(model, allow_torchscript=allow_torchscript)
        return predict_package(package, source, output, axes, extras, on_file, overwrite)
    if dask or is_zarr(source) or Path(output).suffix.lower() == ".zarr":
        extras = {"--tta": extras.pop("--tta"), **extras, "--n-tiles": options.pop("n_tiles", None)}
        options["allow_missing_chunks"] = allow_missing
        written = predict_out_of_core(model, source, output, axes, extras, dask, overwrite, progress, stop, options)
        if on_file is not None:
            on_file(Path(source), written)
        return [written]
    model = load(model)
    check_outputs(model, height_map, level, movie, samples, options)
    jobs = file_pairs(source, output, overwrite, protected=[model.directory])
    heights = [None] * len(jobs)
    if height_map:
        heights = [Path(height_map) / src.name if Path(source).is_dir() else Path(height_map) for src, _ in jobs]
    check_extra_outputs(jobs, heights, uncertainty_files(model, jobs, uncertainty, level), movie, overwrite,
                        protected=[model.directory])  # fmt: skip
    written = []
    for (src, dst), height in zip(jobs, heights, strict=True):
        if stop is not None and stop.is_set():
            break
        image, image_axes = read_with_axes(src, axes, fallback=model.config.axes)
        spacing = model.output_spacing(read_spacing(src), options.get("factor"))
        out_axes = model.output_axes(image_axes)
        mean, dist, extra = restore(model, image, image_axes, bool(uncertainty or movie), progress, options)
        if dist is not None:
            write_uncertainty(dist, Path(src).stem, out_axes, spacing, uncertainty, level, movie, samples)
        if height is not None:
            write_tiff(height, extra["height"].astype("float32"), out_axes.replace("C", ""), spacing=spacing)
        written.append(write_tiff(dst, mean.astype("float32", copy=False), out_axes, spacing=spacing))
        if on_file is not None:
            on_file(Path(src), Path(dst))
    return written


@dataclass
class Restored:
    """One image restored in memory: the mean in ``axes`` with voxel size ``spacing`` (per axis letter),
    the mode's extra maps in the same axes (a projection's ``height``; a package's further outputs)
    and, for probabilistic models and ensembles, the predicted distribution (intervals, samples,
    disagreement: see :mod:`carekit.uncertainty`)."""

    mean: np.ndarray
    axes: str
    spacing: dict[str, float] | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    distribution: Laplace | Mixture | None = None


def open_model(model: str | Path | CARE | Ensemble | Package) -> CARE | Ensemble | Package:
    """A model folder, ensemble folder or bioimage.io package, opened (opened ones pass through)."""
    if isinstance(model, (str, Path)):
        return Package(model) if is_package(model) else load(model)
    return model


def predict_array(model, image: np.ndarray, axes: str | None = None, *, spacing: dict[str, float] | None = None,
                  distribution: bool | None = None, progress: Progress = False, stop: threading.Event | None = None,
                  **options) -> Restored:  # fmt: skip
    """Restore one in-memory ``image`` with a model folder, ensemble or bioimage.io package (a path or
    :func:`open_model`'s result), tiled automatically.

    ``axes`` default to the model's; ``spacing`` (voxel size per axis letter) comes back as the
    result's. ``distribution`` None asks for it where the model is probabilistic. A callable
    ``progress`` is told the fraction done (0 to 1) after every batch of tiles; setting ``stop``
    cancels at the next batch (:class:`CarekitError`). ``options`` as for :func:`predict_files`.
    """
    model = open_model(model)
    options = {k: v for k, v in options.items() if v not in (None, False)}
    image = np.asarray(image)
    if isinstance(model, Package):
        if options or distribution:
            raise CarekitError(f"{', '.join(options) or 'uncertainty'} need a carekit model folder, not a bioimage.io "
                               "package")  # fmt: skip
        outputs, out_axes = model.predict(image, check_axes(axes or model.spatial, image.ndim, what="image"))
        ids = [spec.id for spec in model.outputs[1:]]
        return Restored(outputs[0], out_axes, spacing, dict(zip(ids, outputs[1:], strict=True)))
    axes = check_axes(axes or model.config.axes, image.ndim, what="image")
    check_outputs(model, None, 0.5, None, 0, options)
    if distribution is None:
        distribution = getattr(model, "probabilistic", model.config.net.probabilistic)
    passes = len(getattr(model, "members", [model])) * (8 if options.get("tta") else 1)
    mean, dist, extra = restore(model, image, axes, distribution, fractions(progress, stop, passes), options)
    return Restored(mean, model.output_axes(axes), model.output_spacing(spacing, options.get("factor")), extra, dist)


def fractions(progress: Progress, stop: threading.Event | None, passes: int) -> Progress:
    """Tiles' ``(done, total)`` over ``passes`` network passes as a callable ``progress``'s fraction done,
    raising once ``stop`` is set."""
    if not callable(progress) and stop is None:
        return progress
    finished = 0

    def tick(done: int, total: int) -> None:
        nonlocal finished
        if stop is not None and stop.is_set():
            raise CarekitError("prediction cancelled")
        finished += done == total
        if callable(progress):
            progress(min(1.0, (finished + (done % total) / total) / passes))

    return tick


def restore(model, image: np.ndarray, axes: str, distribution: bool, progress: Progress, options: dict) -> tuple:
    """Mean, distribution (if asked) and the mode's extra maps, from one pass of the network."""
    if isinstance(model, CARE):
        result = model.prediction(image, axes, progress=progress, **options)
        return result.mean, model.as_distribution(result) if distribution else None, result.extra
    if distribution:
        dist = model.predict_distribution(image, axes, progress=progress, **options)
        return dist.mean, dist, {}
    return model.predict(image, axes, progress=progress, **options), None, {}


def check_outputs(model, height_map, level: float, movie, samples: int, options: dict) -> None:
    """Refuse options the model cannot honour, before any work (where outputs go is checked by
    :func:`file_pairs` and :func:`check_extra_outputs`)."""
    kind, asked = mode_of(model.config.mode), {"height_map": height_map, "factor": "factor" in options}
    for feature, flag in (("height_map", "--height-map"), ("factor", "--factor")):
        if asked[feature] and feature not in kind.supports:
            raise CarekitError(f"{flag} applies to {supporting(feature)} models; {model.directory} is a "
                               f"{kind.name} model")  # fmt: skip
    if not 0 < level < 1:
        raise CarekitError(f"--level must be between 0 and 1, got {level}")
    if movie and not 2 <= samples <= 10_000:
        raise CarekitError(f"--samples must be 2..10000 for a movie, got {samples}")
    if movie and Path(movie).suffix.lower() not in (".gif", ".mp4"):
        raise CarekitError(f"{movie}: movies are written as .gif or .mp4; name the --movie file so")


def file_pairs(source: str | Path, output: str | Path, overwrite: bool = False,
               protected: Sequence[str | Path | None] = ()) -> list[tuple[Path, Path]]:  # fmt: skip
    """Input files with their output paths (a folder maps to a folder), checked: no output is an
    input or lies in a model folder (``protected`` names the model in use), and none exists unless
    ``overwrite``."""
    inputs, out = list_images(source, role="--input"), Path(output)
    guarded = [*inputs, *(Path(p) for p in protected if p is not None)]  # outputs may go below an input folder
    if Path(source).is_dir():
        check_output(out, role="--output", inputs=guarded, overwrite=True)  # the folder itself may exist
        if out.suffix.lower() in TIFF_SUFFIXES:
            raise CarekitError(f"{source} is a folder, so --output must be a folder, not {out.name}")
        pairs = [(f, out / f.name) for f in inputs]
    else:
        check_output(out, role="--output", inputs=guarded, overwrite=overwrite)
        if out.suffix.lower() not in TIFF_SUFFIXES:
            raise CarekitError(f"{out}: the restoration of a TIFF is a TIFF; give an --output ending in .tif "
                               "(or .zarr for OME-Zarr)")  # fmt: skip
        pairs = [(inputs[0], out)]
    for _, target in pairs:
        check_output(target, role="--output", inputs=guarded, overwrite=overwrite)
        prepare_output(target, role="--output")
    return pairs


def uncertainty_files(model, jobs: list, folder, level: float) -> list[Path]:
    """The maps :func:`write_uncertainty` will write into ``folder`` for ``jobs``."""
    if not folder:
        return []
    names = ["spread", f"lower{level:g}", f"upper{level:g}", "entropy"]
    names += ["disagreement"] if isinstance(model, Ensemble) else []
    return [Path(folder) / f"{src.stem}_{name}.tif" for src, _ in jobs for name in names]


def check_extra_outputs(jobs: list, heights: list, maps: list[Path], movie, overwrite: bool,
                        protected: Sequence[Path | None]) -> None:  # fmt: skip
    """Height maps, uncertainty maps and the movie go where :func:`file_pairs` lets outputs go, and no
    two outputs share a path."""
    if movie and len(jobs) > 1:
        raise CarekitError(f"--movie writes one movie but --input holds {len(jobs)} images; predict one file with it")
    guarded = [src for src, _ in jobs] + [Path(p) for p in protected if p is not None]
    extra = [(h, "--height-map") for h in heights if h is not None] + [(m, "--uncertainty") for m in maps]
    extra += [(Path(movie), "--movie")] if movie else []
    for path, role in extra:
        check_output(path, role=role, inputs=guarded, overwrite=overwrite)
        prepare_output(path, role=role)
    every = [dst for _, dst in jobs] + [path for path, _ in extra]
    seen: dict[Path, Path] = {}
    for path in every:
        key = path.resolve()
        if key in seen:
            raise CarekitError(f"{path}: two outputs would be written to this path; give --output, --height-map, "
                               "--uncertainty and --movie different places")  # fmt: skip
        seen[key] = path


def write_uncertainty(dist, stem: str, axes: str, spacing, folder, level: float, movie, samples: int) -> None:
    """Spread, central interval, entropy (and disagreement) maps into ``folder``; a movie of samples."""
    if folder:
        lower, upper = dist.interval(level)
        maps = {"spread": dist.spread(), f"lower{level:g}": lower, f"upper{level:g}": upper, "entropy": dist.entropy()}
        if hasattr(dist, "disagreement"):
            maps["disagreement"] = dist.disagreement()
        for name, value in maps.items():
            value = np.asarray(value, np.float32)
            check_result(value, f"{stem} {name} map")
            write_tiff(Path(folder) / f"{stem}_{name}.tif", value, axes, spacing=spacing)
    if movie:
        drawn = dist.sample(samples, np.random.default_rng(0))
        frames = drawn.reshape(samples, -1, *drawn.shape[-2:])
        sample_movie(frames[:, frames.shape[1] // 2], movie)


def predict_package(package: Package, source, output, axes: str | None, extras: dict, on_file,
                    overwrite: bool = False) -> list[Path]:  # fmt: skip
    """Restore with a bioimage.io package through ONNX Runtime or TorchScript (extra outputs beside)."""
    unsupported = [flag for flag, value in extras.items() if value]
    if unsupported:
        raise CarekitError(f"{' '.join(unsupported)} need a carekit model folder, not a bioimage.io package")
    jobs = file_pairs(source, output, overwrite, protected=[package.path])
    beside = [dst.with_name(f"{dst.stem}_{spec.id}{dst.suffix}") for _, dst in jobs for spec in package.outputs[1:]]
    check_extra_outputs(jobs, [], beside, None, overwrite, protected=[package.path])
    written = []
    for src, dst in jobs:
        image, image_axes = read_with_axes(src, axes, fallback=package.spatial)
        restored, out_axes = package.predict(image, image_axes)
        spacing = read_spacing(src)
        written.append(write_tiff(dst, restored[0], out_axes, spacing=spacing))
        for extra, spec in zip(restored[1:], package.outputs[1:], strict=True):
            write_tiff(dst.with_name(f"{dst.stem}_{spec.id}{dst.suffix}"), extra, out_axes, spacing=spacing)
        if on_file is not None:
            on_file(Path(src), Path(dst))
    return written


def predict_out_of_core(model, source, output, axes, extras: dict, dask, overwrite, progress, stop, options) -> Path:
    """OME-Zarr input or output, or Dask: block by block, resumable (see :func:`restore_chunked`)."""
    refused = [flag for flag, value in extras.items() if value]
    if refused:
        raise CarekitError(f"{', '.join(refused)} cannot be combined with OME-Zarr or --dask prediction; "
                           "predict to a TIFF instead")  # fmt: skip
    out = Path(output)
    if out.suffix.lower() != ".zarr":
        raise CarekitError(f"{out}: OME-Zarr and --dask prediction write OME-Zarr; give an --output ending in .zarr")
    if Path(source).is_dir() and not is_zarr(source):
        raise CarekitError(f"{source}: a folder of TIFFs cannot go to one OME-Zarr; predict the files one by one")
    if Path(source).exists() and inside(Path(source), out):
        raise CarekitError(f"{out}: replacing this --output would delete the input {source}; choose another --output")
    check_output(out, role="--output", inputs=[source, model], overwrite=overwrite)

    def cancel(block) -> None:
        if stop is not None and stop.is_set():
            raise CarekitError(f"cancelled; {out}.partial keeps the finished blocks, run again to continue")

    return restore_chunked(model, source, out, axes=axes, overwrite=overwrite, progress=progress, dask=dask,
                           on_block=cancel, **options)  # fmt: skip


def calibrate_files(model_dir: str | Path, low: Sequence[str | Path], high: str | Path, axes: str | None = None,
                    **options) -> dict:  # fmt: skip
    """Recalibrate a probabilistic model or ensemble on held-out pairs (files matched by name);
    stores the calibration and ``reliability.png`` in the folder and returns the report."""
    model = load(model_dir)
    axes = axes or model.config.axes
    images, truths = [], []
    for low_file, high_file in match_files(low, high):
        images.append(read_with_axes(low_file, axes)[0])
        truths.append(read_with_axes(high_file, model.output_axes(axes))[0])
    return calibrate_arrays(model, images, truths, axes, **options)


def calibrate_arrays(model: str | Path | CARE | Ensemble, images: Sequence[np.ndarray], truths: Sequence[np.ndarray],
                     axes: str | None = None, **options) -> dict:  # fmt: skip
    """Recalibrate a probabilistic model or ensemble (a folder, or loaded from one) on held-out arrays;
    stores the calibration and ``reliability.png`` in its folder and returns the report."""
    model = load(model) if isinstance(model, (str, Path)) else model
    report = calibrate(model, list(images), list(truths), axes, **options)
    reliability_diagram(report, model.directory / "reliability.png")
    return report


def export_folder(model_dir: str | Path, out: str | Path, *, sample: str | Path | np.ndarray | None = None,
                  axes: str | None = None, overwrite: bool = False, **metadata) -> Path:  # fmt: skip
    """Write a model folder as a bioimage.io package, with a test image from a file or array if given;
    an existing package is replaced only with ``overwrite`` (never the model or the sample)."""
    files = [sample] if isinstance(sample, (str, Path)) and sample else []
    check_output(out, role="--out", inputs=[model_dir, *files], overwrite=overwrite)
    model = load(model_dir)
    image = None
    if isinstance(sample, np.ndarray):
        sample_axes = check_axes(axes or model.config.axes, sample.ndim, what="sample")
        image = to_net(sample, sample_axes, model.config.spatial, what="sample")[0]
    elif sample:
        data, sample_axes = read_with_axes(sample, axes, fallback=model.config.axes)
        image = to_net(data, sample_axes, model.config.spatial, what=str(sample))[0]
    return export(model, out, sample=image, **metadata)


def evaluate_files(prediction: str | Path, truth: str | Path) -> dict[str, float | None]:
    """NRMSE, PSNR and SSIM of a restored TIFF against its ground truth; a PSNR of None (JSON null)
    where the prediction matches the truth exactly (infinite)."""
    restored, expected = read_image(prediction)[0], read_image(truth)[0]
    if restored.shape != expected.shape:
        raise CarekitError(f"{prediction}: shape {restored.shape} differs from {truth} shape {expected.shape}; "
                           "compare matching images")  # fmt: skip
    scores = evaluate(restored, expected, names=(str(prediction), str(truth)))
    return {k: v if math.isfinite(v) else None for k, v in scores.items()}


def synth(recipe: str | Path, n: int, out_dir: str | Path, *, seed: int | None = None,
          overwrite: bool = False) -> list[Path]:  # fmt: skip
    """Write ``n`` synthetic pairs into ``out_dir/low`` and ``out_dir/high`` (see
    :func:`carekit.data.recipes.synth`); pairs already there are replaced only with ``overwrite``."""
    if not 1 <= n <= MAX_SYNTH:
        raise CarekitError(f"--n must be 1..{MAX_SYNTH}, got {n}")
    if seed is not None and not 0 <= seed < 2**63:
        raise CarekitError(f"--seed must be a non-negative integer, got {seed}")
    out = Path(out_dir)
    for sub in ("low", "high"):
        check_output(out / sub / "0000.tif", role="--out", inputs=[recipe], overwrite=True)
        taken = sorted(f for f in (out / sub).glob("*.tif") if f.stem.isdigit() and int(f.stem) < n)
        if taken and not overwrite:
            raise CarekitError(f"{taken[0]}: already exists ({len(taken)} pair file(s) in {out / sub}); pass "
                               "--overwrite to replace them, or choose another --out")  # fmt: skip
    return recipes.synth(recipe, n, out, seed=seed)
