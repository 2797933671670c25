"""The command line: argument parsing only; the work is done by :mod:`carekit.app`.

The flags of 'carekit train' for configuration fields are made from the configuration dataclasses
(every NetConfig and TrainConfig field is one), and each mode's flags come from its registration,
so neither can drift from what they set.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import signal
import sys
import typing
import warnings
from collections.abc import Iterator
from dataclasses import MISSING, fields
from pathlib import Path

from carekit import app, demo, system
from carekit._version import __version__
from carekit.config import FIELD_CHOICES, FIELD_HELP, NetConfig, TrainConfig
from carekit.errors import CarekitError, CarekitWarning
from carekit.registry import MODES, mode_of

EXAMPLES = {  # each command's --help ends with its examples
    "train": """\
  carekit train --low data/low --high data/high --axes YX --model models/nuclei
  carekit train --low low_5mW low_10mW --high high --axes ZYX --model m3d --time-budget 3600
  carekit train --low data/low --high data/high --axes YX --model models/nuclei --resume
  carekit train --mode isotropic --input stack.tif --axes ZYX --factor 4 --psf-sigma 6,1.5 --model iso
  carekit train --mode isotropic --input stack.tif --axes ZCYX --factor 10.2 --psf psf.tif --model iso
  carekit train --mode upsampling --input fine_stack.tif --axes ZYX --factor 4 --model up
  carekit train --mode projection --low stacks/ --high projections/ --axes ZYX --model wing
  carekit train --mode synthetic --recipe tubules.json --model tubules --time-budget 1800
  carekit train --mode n2v --input noisy/ --axes TYX --model n2v       (no clean images: Noise2Void, N2V2)
  carekit train --mode n2v --input scan.tif --axes YX --struct-mask x:4 --model sn2v   (line noise along x)
  carekit train --mode n2n --low take1/ --high take2/ --axes ZYX --model n2n   (two noisy acquisitions)
  carekit train --mode n2n --input static_movie.tif --axes TYX --model n2n     (adjacent frames pair up)
""",
    "synth": "  carekit synth --recipe tubules.json --n 8 --out synthetic-pairs\n",
    "predict": """\
  carekit predict --model models/nuclei --input new.tif --output restored.tif
  carekit predict --model models/nuclei --input folder/ --output restored/ --axes TYX
  carekit predict --model wing --input stack.tif --output surface.tif --height-map height.tif
  carekit predict --model prob --input a.tif --output a_care.tif --uncertainty maps/ --movie a_samples.gif
  carekit predict --model nuclei.zip --input new.tif --output restored.tif   (a bioimage.io package)
  carekit predict --model models/nuclei --input huge.zarr --output restored.zarr --dask   (OME-Zarr, out of core)
""",
    "export": """\
  carekit export --model models/nuclei --out nuclei.zip
  carekit export --model models/nuclei --out nuclei.zip --sample new.tif --name "Nuclei denoising" --author "A. Smith"
""",
    "calibrate": "  carekit calibrate --model models/prob --low calib/low --high calib/high --axes YX\n",
    "evaluate": "  carekit evaluate --prediction restored.tif --truth ground_truth.tif\n",
    "demo": """\
  carekit demo
  carekit demo --output demo-output --time-budget 60
  carekit demo --mode isotropic --output demo-isotropic
  carekit demo --mode n2v --output demo-n2v
""",
    "info": """\
  carekit info --model models/nuclei
  carekit info --system
""",
}


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line, ``carekit: error: ...``, like every other error."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"carekit: error: {self.prog}: {message}; see '{self.prog} --help'\n")


def number(text: str) -> float:
    """A finite number (argparse's float also takes nan and inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"'{text}' is not a finite number")
    return value


def ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of integers") from None
    if not values:
        raise argparse.ArgumentTypeError("empty list")
    return values


def add_engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda (default: auto)")
    p.add_argument(
        "--precision",
        default=None,
        choices=["auto", "float32", "bfloat16", "float16", "int8"],
        help="auto: on a CPU, bfloat16 where it computes it natively, else float32, and for prediction the "
        "model's int8 copy where it runs faster; on a GPU, bfloat16 or float16; int8: prediction on a CPU only",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_config_flags(p: argparse.ArgumentParser) -> list[str]:
    """One flag per NetConfig and TrainConfig field (``--kernel-size`` for ``kernel_size``), default
    None so that only given flags become settings; returns the fields' names."""
    names = []
    for cls in (NetConfig, TrainConfig):
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            names.append(f.name)
            if f.name == "precision":  # an engine option of every command (add_engine_options)
                continue
            kind = next(t for t in (*typing.get_args(hints[f.name]), hints[f.name]) if t is not type(None))
            default = "" if f.default in (None, MISSING) else f" (default {f.default})"
            options = {"help": FIELD_HELP.get(f.name, f.name.replace("_", " ") + default)}
            if kind is bool:
                options["action"] = argparse.BooleanOptionalAction
            elif f.name in FIELD_CHOICES:
                options["choices"] = FIELD_CHOICES[f.name]
            else:
                options["type"] = ints if typing.get_origin(kind) is tuple else number if kind is float else kind
            p.add_argument("--" + f.name.replace("_", "-"), **options)
    return names


def add_mode_options(p: argparse.ArgumentParser) -> None:
    """Every registered mode's options, each once (as the first mode declares it), its help naming
    the modes that take it (with each mode's own help where they differ)."""
    helps: dict[str, dict[str, list[str]]] = {}
    first = {}
    for kind in MODES.values():
        for option in kind.options:
            helps.setdefault(option.flag, {}).setdefault(option.help, []).append(kind.name)
            first.setdefault(option.flag, option)
    for flag, option in first.items():
        text = "; ".join(f"{'/'.join(names)}: {help}" for help, names in helps[flag].items())
        kwargs = {**option.kwargs, **({"type": number} if option.kwargs.get("type") is float else {})}
        p.add_argument(flag, help=text, **kwargs)


def parser() -> argparse.ArgumentParser:
    top = Parser(
        prog="carekit",
        description="Content-aware image restoration (CARE) for fluorescence microscopy.",
    )
    top.add_argument("--version", action="version", version=f"carekit {__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        epilog = f"examples:\n{EXAMPLES[name]}" if name in EXAMPLES else None
        return sub.add_parser(name, help=help, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)

    t = command("train", "train a CARE network on image pairs")
    t.add_argument("--mode", default="denoise", choices=list(MODES),
                   help="; ".join(f"{m.name}: {m.summary}" for m in MODES.values()))  # fmt: skip
    add_mode_options(t)
    t.add_argument("--model", required=True, metavar="DIR", help="model folder to write")
    t.set_defaults(settings=add_config_flags(t))
    t.add_argument("--time-budget", type=number, metavar="SECONDS", help="stop cleanly after this long")
    t.add_argument("--ensemble", type=int, metavar="K", help="train K members with different seeds (an ensemble)")
    t.add_argument("--resume", action="store_true", help="continue from the model folder's last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace a model already in the folder")
    add_engine_options(t)

    p = command("predict", "restore images with a trained model")
    p.add_argument("--model", required=True, metavar="DIR", help="model folder, or a bioimage.io package MODEL.zip")
    p.add_argument("--input", required=True, metavar="PATH", help="TIFF file, folder of TIFFs, or OME-Zarr")
    p.add_argument("--output", required=True, metavar="PATH", help="TIFF file (folder for a folder input) or .zarr")
    p.add_argument("--axes", help="axes of the input (default: from the file, else the model's)")
    p.add_argument("--n-tiles", type=ints, help="tiles per spatial axis (default: from the memory budget)")
    p.add_argument("--memory", type=number, metavar="GB",
                   help="per batch of tiles (CPU: 1/4 of available memory, 1.5 to 5; CUDA: 1/4 of free GPU memory up "
                   "to 8; isotropic and upsampling models on CPU 0.5); per block for .zarr (1)")  # fmt: skip
    p.add_argument("--factor", type=number, help="isotropic/upsampling models: override the z factor")
    p.add_argument("--height-map", metavar="PATH", help="projection models: also write the surface height map")
    p.add_argument("--uncertainty", metavar="DIR", help="probabilistic models: spread, interval, entropy maps")
    p.add_argument("--level", type=number, default=0.9, help="central interval level for --uncertainty (0.9)")
    p.add_argument("--movie", metavar="OUT.gif", help="probabilistic models: a movie of samples (.gif or .mp4)")
    p.add_argument("--samples", type=int, default=16, help="frames of --movie (16)")
    p.add_argument("--tta", action="store_true", help="average the 8 flips/rotations (8x slower, often cleaner)")
    dask = "run chunks on Dask: a local cluster (a worker per free core), or a scheduler address tcp://host:8786"
    p.add_argument("--dask", nargs="?", const="local", metavar="ADDRESS", help=dask)
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (never the input)")
    p.add_argument("--allow-torchscript", action="store_true",
                   help="packages: run TorchScript weights, which are code (only for packages you trust); "
                   "default ONNX only")  # fmt: skip
    p.add_argument("--allow-missing-chunks", action="store_true",
                   help="OME-Zarr: read chunks missing from the input as its fill value (for images written "
                   "without their empty chunks); by default a missing chunk is an error")  # fmt: skip
    add_engine_options(p)

    x = command("export", "write a bioimage.io package (Fiji/deepImageJ, ilastik, napari)")
    x.add_argument("--model", required=True, metavar="DIR", help="a denoising or synthetic model folder")
    x.add_argument("--out", required=True, metavar="MODEL.zip", help="the package to write")
    x.add_argument("--sample", metavar="IMAGE.tif", help="test image for the package (default: the shipped nuclei)")
    x.add_argument("--axes", help="axes of --sample (default: from the file, else the model's)")
    x.add_argument("--name", help="package name (default from the folder name)")
    x.add_argument("--author", help="who trained the model (default: the current user)")
    x.add_argument("--license", default="CC-BY-4.0", help="SPDX licence of the weights (default CC-BY-4.0)")
    x.add_argument("--overwrite", action="store_true", help="replace an existing package")

    e = command("evaluate", "NRMSE, PSNR, SSIM against ground truth")
    e.add_argument("--prediction", required=True, metavar="PATH")
    e.add_argument("--truth", required=True, metavar="PATH")

    y = command("synth", "write synthetic training pairs for inspection")
    y.add_argument("--recipe", required=True, metavar="RECIPE.json")
    y.add_argument("--n", type=int, default=4, help="number of pairs (default 4)")
    y.add_argument("--out", required=True, metavar="DIR", help="writes DIR/low/*.tif and DIR/high/*.tif")
    y.add_argument("--seed", type=int, help="default: the recipe's seed")
    y.add_argument("--overwrite", action="store_true", help="replace pairs already in DIR")

    c = command("calibrate", "fit a probabilistic model's uncertainty on held-out pairs")
    c.add_argument("--model", required=True, metavar="DIR", help="probabilistic model or ensemble folder")
    c.add_argument("--low", nargs="+", required=True, metavar="PATH", help="held-out inputs (files or folders)")
    c.add_argument("--high", required=True, metavar="PATH", help="their ground truth (matched by name)")
    c.add_argument("--axes", help="axes of the images (default: the model's)")
    add_engine_options(c)

    i = command("info", "describe a model folder, or what carekit gets on this machine (--system)")
    i.add_argument("--model", metavar="DIR", help="a model folder, ensemble or bioimage.io package")
    i.add_argument(
        "--system",
        action="store_true",
        help="device, precision and why, cores, threads, memory, measured training and prediction speed",
    )
    add_engine_options(i)

    d = command("demo", "train and restore on the shipped sample")
    d.add_argument("--mode", default="denoise", choices=list(demo.DEMOS), help="which demo (default denoise)")
    d.add_argument("--output", default="demo-output", metavar="DIR", help="folder for results (default demo-output)")
    d.add_argument("--time-budget", type=number, default=None, metavar="SECONDS", help="training time (default 120)")
    add_engine_options(d)
    return top


def run_train(a: argparse.Namespace) -> None:
    kind = mode_of(a.mode)
    named = {n: getattr(a, n) for n in (*kind.inputs, *kind.settings, *a.settings) if getattr(a, n, None) is not None}
    model = app.train(a.mode, a.model, ensemble=a.ensemble, time_budget=a.time_budget, resume=a.resume,
                      overwrite=a.overwrite, device=a.device, progress=not a.quiet, **named)  # fmt: skip
    print(model.summary())
    for warning in model.warnings():
        print(f"carekit: warning: {warning}", file=sys.stderr)
    print(f"model written to {a.model}")


def run_predict(a: argparse.Namespace) -> None:
    app.predict_files(a.model, a.input, a.output, axes=a.axes, height_map=a.height_map, uncertainty=a.uncertainty,
                      level=a.level, movie=a.movie, samples=a.samples, dask=a.dask, overwrite=a.overwrite,
                      progress=not a.quiet, on_file=lambda src, dst: print(f"{src} -> {dst}"), n_tiles=a.n_tiles,
                      memory=memory_bytes(a.memory), device=a.device, precision=a.precision, tta=a.tta,
                      factor=a.factor, allow_torchscript=a.allow_torchscript,
                      allow_missing_chunks=a.allow_missing_chunks)  # fmt: skip


def memory_bytes(gigabytes: float | None) -> int | None:
    if gigabytes is None:
        return None
    if not 0.01 <= gigabytes <= 2**20:
        raise CarekitError(f"--memory {gigabytes:g} GB is out of range; give a budget between 0.01 and 1048576 GB")
    return int(gigabytes * 2**30)


def run_export(a: argparse.Namespace) -> None:
    out = app.export_folder(a.model, a.out, sample=a.sample, axes=a.axes, name=a.name, author=a.author,
                            license=a.license, overwrite=a.overwrite)  # fmt: skip
    print(f"{a.model} -> {out}")


def run_evaluate(a: argparse.Namespace) -> None:
    print(json.dumps(app.evaluate_files(a.prediction, a.truth), allow_nan=False))


def run_synth(a: argparse.Namespace) -> None:
    written = app.synth(a.recipe, a.n, a.out, seed=a.seed, overwrite=a.overwrite)
    print(f"wrote {len(written)} pairs to {a.out}/low and {a.out}/high")


def run_calibrate(a: argparse.Namespace) -> None:
    report = app.calibrate_files(a.model, a.low, a.high, a.axes, device=a.device, precision=a.precision)
    held = report["held_out"]
    print(f"{'nominal':>8s}{'before':>9s}{'after':>9s}" + (f"{'held out':>10s}" if held else ""))
    for p in (0.5, 0.8, 0.9, 0.95):
        cells = f"{report['coverage_before'][p]:9.1%}{report['coverage_after'][p]:9.1%}"
        print(f"{p:8.0%}{cells}" + (f"{held['coverage'][p]:10.1%}" if held else ""))
    for label, deciles in (("before", report["deciles_before"]), ("after", report["deciles_after"]),
                           ("held out", held["deciles"] if held else None)):  # fmt: skip
        if deciles:
            print(f"90 % interval by intensity decile, {label}: " + " ".join(f"{c:.0%}" for c in deciles[0.9]))
    if held:
        what = "of the image (split along its first axis)" if held["split"] == "halves" else "of the images"
        print(f"held out: calibrated on one half {what}, measured on the other, both ways")
    print(f"ECE {report['ece_before']:.3f} -> {report['ece_after']:.3f} ({report['pixels']:,} pixels, "
          f"{report['bins']} intensity bins); calibration stored in {a.model}")  # fmt: skip
    print(f"reliability diagram: {Path(a.model) / 'reliability.png'}")


def run_info(a: argparse.Namespace) -> None:
    if not a.model and not a.system:
        raise CarekitError("info needs --model DIR (describe a model) or --system (describe this machine)")
    if a.model:
        model = app.load(a.model)
        print(model.summary())
        for warning in model.warnings():
            print(f"carekit: warning: {warning}", file=sys.stderr)
    if a.system:
        print(system.report(a.device, a.precision or "auto"))


def run_demo(a: argparse.Namespace) -> None:
    options = {"time_budget": a.time_budget, "device": a.device, "precision": a.precision, "progress": not a.quiet}
    demo.run(a.output, mode=a.mode, **options)


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


def one_line(message: object) -> str:
    return " ".join(str(message).split())


@contextlib.contextmanager
def user_messages() -> Iterator[None]:
    """carekit's warnings as one line each, ``carekit: warning: ...``; others as Python shows them."""
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, CarekitWarning):
            print(f"carekit: warning: {one_line(message)}", file=sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():  # restores showwarning and the filters afterwards
        warnings.simplefilter("always", CarekitWarning)
        warnings.showwarning = show
        yield


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a cluster's job limit, ``kill``) stops the work like Ctrl-C does, so that half-written
    files are removed and training keeps its checkpoint."""

    def interrupt(signum, frame) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def environment_error(e: OSError) -> str:
    """A one-line message for an operating-system error no carekit check caught (a full disk, a
    permission, a file that vanished), naming the file."""
    where = f"{e.filename}: " if e.filename else ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{where}the disk is full ({e.strerror}); free space or write elsewhere"
    return f"{where}{e.strerror or one_line(e)}; check the path, the disk and the permissions"


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error (already printed)
        return e.code if isinstance(e.code, int) else 2
    try:
        with user_messages(), terminate_as_interrupt():
            COMMANDS[args.command](args)
    except CarekitError as e:
        print(f"carekit: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("carekit: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("carekit: error: out of memory; predict with --memory or --n-tiles, or train with a smaller "
              "--batch-size or --patch-size", file=sys.stderr)  # fmt: skip
        return 2
    except BrokenPipeError:  # the reader of our output went away (e.g. '| head')
        return 0
    except OSError as e:
        print(f"carekit: error: {environment_error(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
