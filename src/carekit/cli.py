"""The command line, mirroring the Python API one-to-one."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from carekit.errors import CarekitError

TRAIN_EXAMPLES = """examples:
  carekit train --low data/low --high data/high --axes YX --model models/nuclei
  carekit train --low low_5mW low_10mW --high high --axes ZYX --model m3d --time-budget 3600
  carekit train --low data/low --high data/high --axes YX --model models/nuclei --resume
  carekit train --mode isotropic --input stack.tif --axes ZYX --factor 4 --psf-sigma 6,1.5 --model iso
  carekit train --mode isotropic --input stack.tif --axes ZCYX --factor 10.2 --psf psf.tif --model iso
  carekit train --mode upsampling --input fine_stack.tif --axes ZYX --factor 4 --model up
  carekit train --mode projection --low stacks/ --high projections/ --axes ZYX --model wing
  carekit train --mode synthetic --recipe tubules.json --model tubules --time-budget 1800
"""
SYNTH_EXAMPLES = """examples:
  carekit synth --recipe tubules.json --n 8 --out synthetic-pairs
"""
PREDICT_EXAMPLES = """examples:
  carekit predict --model models/nuclei --input new.tif --output restored.tif
  carekit predict --model models/nuclei --input folder/ --output restored/ --axes TYX
  carekit predict --model wing --input stack.tif --output surface.tif --height-map height.tif
  carekit predict --model prob --input a.tif --output a_care.tif --uncertainty maps/ --movie a_samples.gif
  carekit predict --model nuclei.zip --input new.tif --output restored.tif   (a bioimage.io package)
  carekit predict --model models/nuclei --input huge.zarr --output restored.zarr --dask   (OME-Zarr, out of core)
"""
EXPORT_EXAMPLES = """examples:
  carekit export --model models/nuclei --out nuclei.zip
  carekit export --model models/nuclei --out nuclei.zip --sample new.tif --name "Nuclei denoising" --author "A. Smith"
"""
CALIBRATE_EXAMPLES = """examples:
  carekit calibrate --model models/prob --low calib/low --high calib/high --axes YX
"""
EVALUATE_EXAMPLES = """examples:
  carekit evaluate --prediction restored.tif --truth ground_truth.tif
"""
DEMO_EXAMPLES = """examples:
  carekit demo
  carekit demo --output demo-output --time-budget 60
  carekit demo --mode isotropic --output demo-isotropic
"""


def ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of integers") from None
    if not values:
        raise argparse.ArgumentTypeError("empty list")
    return values


def floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of numbers") from None


def add_engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda (default: auto)")
    p.add_argument(
        "--precision",
        default=None,
        choices=["auto", "float32", "bfloat16", "float16"],
        help="auto: bfloat16 where the CPU/GPU supports it, else float32",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def parser() -> argparse.ArgumentParser:
    from carekit import __version__

    top = argparse.ArgumentParser(
        prog="carekit",
        description="Content-aware image restoration (CARE) for fluorescence microscopy.",
    )
    top.add_argument("--version", action="version", version=f"carekit {__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    raw = argparse.RawDescriptionHelpFormatter

    t = sub.add_parser("train", help="train a CARE network on image pairs", epilog=TRAIN_EXAMPLES, formatter_class=raw)
    t.add_argument(
        "--mode", default="denoise", choices=["denoise", "isotropic", "upsampling", "projection", "synthetic"]
    )
    t.add_argument("--recipe", metavar="RECIPE.json", help="synthetic: structures, microscope and number of pairs")
    t.add_argument("--low", nargs="+", metavar="PATH", help="denoise/projection: low-SNR input file(s) or folder(s)")
    t.add_argument("--high", metavar="PATH", help="denoise/projection: high-SNR target file or folder (by name)")
    t.add_argument("--input", metavar="STACK", help="isotropic/upsampling: the volume to learn from")
    t.add_argument("--axes", help="axes of every image, e.g. YX, ZYX, TCYX (default: from the file)")
    t.add_argument("--factor", type=float, help="isotropic/upsampling: z-step over lateral pixel size")
    t.add_argument("--psf", metavar="PSF.tif", help="isotropic: measured PSF (ZYX, lateral pixel size in all axes)")
    t.add_argument("--psf-sigma", type=floats, metavar="Z,XY", help="isotropic: Gaussian PSF sigmas in lateral pixels")
    t.add_argument("--na", type=float, help="isotropic: numerical aperture (Gaussian widefield PSF)")
    t.add_argument("--wavelength", type=float, metavar="NM", help="isotropic: emission wavelength in nm")
    t.add_argument("--refractive-index", type=float, default=1.33, help="isotropic: immersion index (1.33)")
    t.add_argument("--pixel-size", type=float, metavar="NM", help="isotropic: lateral pixel size in nm")
    t.add_argument("--noise-photons", type=float, help="isotropic: add Poisson noise at this peak photon count")
    t.add_argument("--read-noise", type=float, default=0.0, help="isotropic: Gaussian read noise (photons)")
    t.add_argument("--combine", choices=["arithmetic", "geometric"], help="isotropic: merge of XZ and YZ results")
    t.add_argument("--model", required=True, metavar="DIR", help="model folder to write")
    t.add_argument("--patch-size", type=ints, help="e.g. 64,64 (2D) or 16,64,64 (3D)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--steps-per-epoch", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--learning-rate", type=float)
    t.add_argument("--loss", choices=["mae", "mse"])
    t.add_argument(
        "--ema", type=float, metavar="DECAY", help="save a running average of the weights, this decay per step (0: off)"
    )
    t.add_argument(
        "--intensity-jitter",
        action=argparse.BooleanOptionalAction,
        help="normalise training patches with random percentiles (default: with the residual; else fixed 2 and 99.8)",
    )
    t.add_argument(
        "--kernel-size", type=int, help="denoising default 3; other modes and --probabilistic: 5 in 2D, 3 in 3D"
    )
    t.add_argument(
        "--batch-norm",
        action=argparse.BooleanOptionalAction,
        help="batch normalisation after convolutions (denoising default: on without the residual, off with it)",
    )
    t.add_argument(
        "--residual",
        action=argparse.BooleanOptionalAction,
        help="add the input to the output (denoising default: on when inputs are within 21 dB PSNR of targets)",
    )
    t.add_argument("--depth", type=int, help="pooling steps of the U-Net (default 2)")
    t.add_argument("--n-first", type=int, help="features of the first level (default 32)")
    t.add_argument(
        "--validation-fraction", type=float, help="share of the pixels held out for validation (default 0.1)"
    )
    t.add_argument("--seed", type=int)
    t.add_argument("--time-budget", type=float, metavar="SECONDS", help="stop cleanly after this long")
    t.add_argument("--probabilistic", action="store_true", help="predict a Laplace distribution per pixel")
    t.add_argument("--ensemble", type=int, metavar="K", help="train K members with different seeds (an ensemble)")
    t.add_argument("--resume", action="store_true", help="continue from the model folder's last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace a model already in the folder")
    add_engine_options(t)

    p = sub.add_parser(
        "predict", help="restore images with a trained model", epilog=PREDICT_EXAMPLES, formatter_class=raw
    )
    p.add_argument("--model", required=True, metavar="DIR", help="model folder, or a bioimage.io package MODEL.zip")
    p.add_argument("--input", required=True, metavar="PATH", help="TIFF file, folder of TIFFs, or OME-Zarr")
    p.add_argument("--output", required=True, metavar="PATH", help="TIFF file (folder for a folder input) or .zarr")
    p.add_argument("--axes", help="axes of the input (default: from the file, else the model's)")
    p.add_argument("--n-tiles", type=ints, help="tiles per spatial axis (default: from the memory budget)")
    p.add_argument(
        "--memory",
        type=float,
        metavar="GB",
        help="per batch of tiles (CPU: 1/4 of available memory, 1.5 to 5; CUDA: 1/4 of free GPU memory up to 8; "
        "isotropic and upsampling models on CPU 0.5); per block for .zarr (1)",
    )
    p.add_argument("--factor", type=float, help="isotropic/upsampling models: override the z factor")
    p.add_argument("--height-map", metavar="PATH", help="projection models: also write the surface height map")
    p.add_argument("--uncertainty", metavar="DIR", help="probabilistic models: spread, interval, entropy maps")
    p.add_argument("--level", type=float, default=0.9, help="central interval level for --uncertainty (0.9)")
    p.add_argument("--movie", metavar="OUT.gif", help="probabilistic models: a movie of samples (.gif or .mp4)")
    p.add_argument("--samples", type=int, default=16, help="frames of --movie (16)")
    p.add_argument("--tta", action="store_true", help="average the 8 flips/rotations (8x slower, often cleaner)")
    p.add_argument(
        "--dask",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="run chunks on Dask: a local 2-worker cluster, or a scheduler address tcp://host:8786",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing OME-Zarr output")
    add_engine_options(p)

    x = sub.add_parser("export", help="write a bioimage.io package (Fiji/deepImageJ, ilastik, napari)",
                       epilog=EXPORT_EXAMPLES, formatter_class=raw)  # fmt: skip
    x.add_argument("--model", required=True, metavar="DIR", help="a denoising or synthetic model folder")
    x.add_argument("--out", required=True, metavar="MODEL.zip", help="the package to write")
    x.add_argument("--sample", metavar="IMAGE.tif", help="test image for the package (default: the shipped nuclei)")
    x.add_argument("--axes", help="axes of --sample (default: from the file, else the model's)")
    x.add_argument("--name", help="package name (default from the folder name)")
    x.add_argument("--author", help="who trained the model (default: the current user)")
    x.add_argument("--license", default="CC-BY-4.0", help="SPDX licence of the weights (default CC-BY-4.0)")

    e = sub.add_parser(
        "evaluate", help="NRMSE, PSNR, SSIM against ground truth", epilog=EVALUATE_EXAMPLES, formatter_class=raw
    )
    e.add_argument("--prediction", required=True, metavar="PATH")
    e.add_argument("--truth", required=True, metavar="PATH")

    y = sub.add_parser("synth", help="write synthetic training pairs for inspection", epilog=SYNTH_EXAMPLES,
                       formatter_class=raw)  # fmt: skip
    y.add_argument("--recipe", required=True, metavar="RECIPE.json")
    y.add_argument("--n", type=int, default=4, help="number of pairs (default 4)")
    y.add_argument("--out", required=True, metavar="DIR", help="writes DIR/low/*.tif and DIR/high/*.tif")
    y.add_argument("--seed", type=int, help="default: the recipe's seed")

    c = sub.add_parser("calibrate", help="fit a probabilistic model's uncertainty on held-out pairs",
                       epilog=CALIBRATE_EXAMPLES, formatter_class=raw)  # fmt: skip
    c.add_argument("--model", required=True, metavar="DIR", help="probabilistic model or ensemble folder")
    c.add_argument("--low", nargs="+", required=True, metavar="PATH", help="held-out inputs (files or folders)")
    c.add_argument("--high", required=True, metavar="PATH", help="their ground truth (matched by name)")
    c.add_argument("--axes", help="axes of the images (default: the model's)")
    add_engine_options(c)

    i = sub.add_parser("info", help="describe a model folder")
    i.add_argument("--model", required=True, metavar="DIR")

    d = sub.add_parser(
        "demo", help="train and restore on the shipped sample", epilog=DEMO_EXAMPLES, formatter_class=raw
    )
    d.add_argument("--mode", default="denoise", choices=["denoise", "isotropic"], help="which demo (default denoise)")
    d.add_argument("--output", default="demo-output", metavar="DIR", help="folder for results (default demo-output)")
    d.add_argument("--time-budget", type=float, default=None, metavar="SECONDS", help="training time (default 120)")
    add_engine_options(d)
    return top


TRAIN_SETTINGS = (
    "patch_size",
    "epochs",
    "steps_per_epoch",
    "batch_size",
    "learning_rate",
    "loss",
    "ema",
    "intensity_jitter",
    "kernel_size",
    "batch_norm",
    "residual",
    "depth",
    "n_first",
    "validation_fraction",
    "seed",
    "precision",
)


def psf_sigma(a: argparse.Namespace) -> tuple[float, float] | None:
    """PSF sigmas in lateral pixels, from --psf-sigma or from the optics."""
    from carekit.data.camera import widefield_sigmas

    optics = [a.na, a.wavelength, a.pixel_size]
    if a.psf_sigma is not None:
        if len(a.psf_sigma) != 2:
            raise CarekitError(f"--psf-sigma takes two numbers Z,XY, got {len(a.psf_sigma)}")
        return a.psf_sigma
    if any(v is not None for v in optics):
        if any(v is None for v in optics):
            raise CarekitError("a Gaussian PSF from optics needs --na, --wavelength and --pixel-size together")
        try:
            sz, sxy = widefield_sigmas(a.na, a.wavelength, a.refractive_index)
        except ValueError as e:
            raise CarekitError(str(e)) from None
        return sz / a.pixel_size, sxy / a.pixel_size
    return None


def run_train(a: argparse.Namespace) -> None:
    settings = {k: getattr(a, k) for k in TRAIN_SETTINGS if getattr(a, k) is not None}
    if a.probabilistic:
        settings["probabilistic"] = True
    common = {"device": a.device, "progress": not a.quiet, **settings}
    train_one = trainer_for(a, common)
    if a.ensemble:
        from carekit.ensemble import train_ensemble

        model = train_ensemble(train_one, a.ensemble, a.model, time_budget=a.time_budget, resume=a.resume,
                               overwrite=a.overwrite, seed=settings.pop("seed", 0))  # fmt: skip
    else:
        model = train_one(model_dir=a.model, time_budget=a.time_budget, resume=a.resume, overwrite=a.overwrite)
    print(model.summary())
    print(f"model written to {a.model}")


def trainer_for(a: argparse.Namespace, common: dict):
    """``train_one(model_dir=..., **overrides)`` for the chosen mode."""
    if a.mode == "synthetic":
        from carekit.synthetic import train_synthetic

        if not a.recipe:
            raise CarekitError("synthetic training needs --recipe RECIPE.json")
        return lambda model_dir, **kw: train_synthetic(a.recipe, model_dir, **{**common, **kw})
    if a.mode in ("denoise", "projection"):
        from carekit.projection import train_projection
        from carekit.train import train

        if not a.low or not a.high or not a.axes:
            raise CarekitError(f"{a.mode} training needs --low, --high and --axes")
        fn = train if a.mode == "denoise" else train_projection
        return lambda model_dir, **kw: fn(a.low, a.high, a.axes, model_dir, **{**common, **kw})
    from carekit.axial import train_isotropic, train_upsampling

    if not a.input:
        raise CarekitError(f"{a.mode} training needs --input STACK (the volume to learn from)")
    if a.factor is None and not a.resume:
        raise CarekitError(f"{a.mode} training needs --factor (z-step over lateral pixel size)")
    if a.mode == "isotropic":
        extra = {"psf": a.psf, "psf_sigma": psf_sigma(a), "peak_photons": a.noise_photons,
                 "read_sigma": a.read_noise, "combine": a.combine}  # fmt: skip
        return lambda model_dir, **kw: train_isotropic(
            a.input, a.axes, a.factor, model_dir, **extra, **{**common, **kw}
        )
    return lambda model_dir, **kw: train_upsampling(a.input, a.axes, a.factor, model_dir, **{**common, **kw})


def run_predict(a: argparse.Namespace) -> None:
    from carekit.io import prepare_output, read_spacing, read_with_axes, write_tiff
    from carekit.model import load
    from carekit.omezarr import is_zarr
    from carekit.package import is_package

    if is_package(a.model):
        return run_package(a)
    if a.dask or is_zarr(a.input) or Path(a.output).suffix.lower() == ".zarr":
        from carekit.chunked import run_predict_chunked

        return run_predict_chunked(a)
    model = load(a.model)
    if a.height_map and model.config.mode != "projection":
        raise CarekitError(f"--height-map applies to projection models; {a.model} is a {model.config.mode} model")
    pairs = input_output_pairs(a)
    heights: list = [None] * len(pairs)
    if a.height_map:
        folder = Path(a.input).is_dir()
        heights = [Path(a.height_map) / src.name if folder else Path(a.height_map) for src, _ in pairs]
        for height in heights:
            prepare_output(height, role="--output")
    memory = int(a.memory * 2**30) if a.memory else None
    options = {"n_tiles": a.n_tiles, "memory": memory, "device": a.device, "precision": a.precision}
    if a.tta:
        options["tta"] = True
    if not 0 < a.level < 1:
        raise CarekitError(f"--level must be between 0 and 1, got {a.level}")
    if a.movie:
        prepare_output(a.movie, role="--movie")
        if a.samples < 2:
            raise CarekitError(f"--samples must be at least 2 for a movie, got {a.samples}")
    if a.factor is not None:
        if model.config.axial is None:
            raise CarekitError(
                f"--factor applies to isotropic and upsampling models; {a.model} is a {model.config.mode} model"
            )
        options["factor"] = a.factor
    wants_distribution = bool(a.uncertainty or a.movie)
    for (src, dst), height_path in zip(pairs, heights, strict=True):
        image, axes = read_with_axes(src, a.axes, fallback=model.config.axes)
        spacing = model.output_spacing(read_spacing(src), a.factor)
        out_axes = model.output_axes(axes)
        if wants_distribution:
            dist = model.predict_distribution(image, axes, progress=not a.quiet, **options)
            restored = dist.mean
            write_uncertainty(a, dist, Path(src).stem, out_axes, spacing)
        else:
            restored = model.predict(image, axes, progress=not a.quiet, **options)
        if height_path is not None:
            _, height = model.predict(image, axes, return_height=True, **options)
            write_tiff(height_path, height.astype("float32"), out_axes.replace("C", ""), spacing=spacing)
        write_tiff(dst, restored.astype("float32", copy=False), out_axes, spacing=spacing)
        print(f"{src} -> {dst}")


def input_output_pairs(a: argparse.Namespace) -> list[tuple[Path, Path]]:
    """``--input`` files with their ``--output`` paths (a folder maps to a folder), checked writable."""
    from carekit.io import list_images, prepare_output

    inputs = list_images(a.input, role="--input")
    out = Path(a.output)
    if Path(a.input).is_dir():
        if out.suffix.lower() in (".tif", ".tiff"):
            raise CarekitError(f"{a.input} is a folder, so --output must be a folder, not {out.name}")
        pairs = [(f, out / f.name) for f in inputs]
    else:
        pairs = [(inputs[0], out)]
    for _, target in pairs:
        prepare_output(target, role="--output")
    return pairs


def run_package(a: argparse.Namespace) -> None:
    """``predict --model MODEL.zip``: a bioimage.io package through ONNX Runtime or TorchScript."""
    from carekit.io import read_spacing, read_with_axes, write_tiff
    from carekit.package import Package

    unsupported = [f"--{k.replace('_', '-')}" for k in ("uncertainty", "movie", "height_map", "factor", "tta")
                   if getattr(a, k)]  # fmt: skip
    if unsupported:
        raise CarekitError(f"{' '.join(unsupported)} need a carekit model folder, not a bioimage.io package")
    package = Package(a.model)
    for src, dst in input_output_pairs(a):
        image, axes = read_with_axes(src, a.axes, fallback=package.spatial)
        restored, out_axes = package.predict(image, axes)
        spacing = read_spacing(src)
        write_tiff(dst, restored[0], out_axes, spacing=spacing)
        for extra, spec in zip(restored[1:], package.outputs[1:], strict=True):
            write_tiff(dst.with_name(f"{dst.stem}_{spec.id}{dst.suffix}"), extra, out_axes, spacing=spacing)
        print(f"{src} -> {dst}")


def run_export(a: argparse.Namespace) -> None:
    from carekit.axes import to_net
    from carekit.export import export
    from carekit.io import read_with_axes
    from carekit.model import load

    model = load(a.model)
    sample = None
    if a.sample:
        image, axes = read_with_axes(a.sample, a.axes, fallback=model.config.axes)
        sample = to_net(image, axes, model.config.spatial, what=a.sample)[0]
    out = export(model, a.out, sample=sample, name=a.name, author=a.author, license=a.license)
    print(f"{a.model} -> {out}")


def write_uncertainty(a: argparse.Namespace, dist, stem: str, axes: str, spacing) -> None:
    """The maps of ``--uncertainty DIR`` and the movie of ``--movie``."""
    from carekit.figures import sample_movie
    from carekit.io import write_tiff

    if a.uncertainty:
        folder = Path(a.uncertainty)
        lower, upper = dist.interval(a.level)
        maps = {"spread": dist.spread(), f"lower{a.level:g}": lower, f"upper{a.level:g}": upper,
                "entropy": dist.entropy()}  # fmt: skip
        if hasattr(dist, "disagreement"):
            maps["disagreement"] = dist.disagreement()
        for name, value in maps.items():
            write_tiff(folder / f"{stem}_{name}.tif", np.asarray(value, np.float32), axes, spacing=spacing)
    if a.movie:
        samples = dist.sample(a.samples, np.random.default_rng(0))
        frames = samples.reshape(a.samples, -1, *samples.shape[-2:])
        sample_movie(frames[:, frames.shape[1] // 2], a.movie)


def run_evaluate(a: argparse.Namespace) -> None:
    from carekit.io import read_image
    from carekit.metrics import evaluate

    prediction, _ = read_image(a.prediction)
    truth, _ = read_image(a.truth)
    if prediction.shape != truth.shape:
        raise CarekitError(
            f"{a.prediction}: shape {prediction.shape} differs from {a.truth} shape {truth.shape}; "
            "compare matching images"
        )
    print(json.dumps(evaluate(prediction, truth)))


def run_synth(a: argparse.Namespace) -> None:
    from carekit.synthetic import synth

    written = synth(a.recipe, a.n, a.out, seed=a.seed)
    print(f"wrote {len(written)} pairs to {a.out}/low and {a.out}/high")


def run_calibrate(a: argparse.Namespace) -> None:
    from carekit.data.pairs import match_files
    from carekit.ensemble import calibrate
    from carekit.figures import reliability_diagram
    from carekit.io import read_with_axes
    from carekit.model import load

    model = load(a.model)
    axes = a.axes or model.config.axes
    images, truths = [], []
    for low, high in match_files(a.low, a.high):
        images.append(read_with_axes(low, axes)[0])
        truths.append(read_with_axes(high, model.output_axes(axes))[0])
    report = calibrate(model, images, truths, axes, device=a.device, precision=a.precision)
    print(f"{'nominal':>8s}{'before':>9s}{'after':>9s}")
    for p in (0.5, 0.8, 0.9, 0.95):
        print(f"{p:8.0%}{report['coverage_before'][p]:9.1%}{report['coverage_after'][p]:9.1%}")
    print(f"ECE {report['ece_before']:.3f} -> {report['ece_after']:.3f} ({report['pixels']:,} pixels); "
          f"calibration stored in {a.model}")  # fmt: skip
    reliability_diagram(report, Path(a.model) / "reliability.png")
    print(f"reliability diagram: {Path(a.model) / 'reliability.png'}")


def run_info(a: argparse.Namespace) -> None:
    from carekit.model import load

    print(load(a.model).summary())


def run_demo(a: argparse.Namespace) -> None:
    from carekit.demo import run

    run(a.output, mode=a.mode, time_budget=a.time_budget, device=a.device, precision=a.precision, progress=not a.quiet)


COMMANDS = {
    "train": run_train,
    "predict": run_predict,
    "export": run_export,
    "evaluate": run_evaluate,
    "synth": run_synth,
    "calibrate": run_calibrate,
    "info": run_info,
    "demo": run_demo,
}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except CarekitError as e:
        print(f"carekit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("carekit: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
