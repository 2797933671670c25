"""Export a model folder as a bioimage.io model package (Fiji/deepImageJ, ilastik, napari, BioEngine).

The package holds the network with its normalisation inside (:class:`PackagedNet`):
it takes raw intensities and returns restored intensities in the target's units,
exactly as ``CARE.predict`` does for a whole image. The bioimage.io pre- and
post-processing vocabulary cannot express percentile de-normalisation (its
``scale_range`` only divides by a percentile span), so carrying both steps in the
graph is the only way a consumer reproduces carekit's numbers. A consumer that tiles
the image normalises each tile by its own percentiles; tiles of a few hundred pixels
per axis keep that difference small, whole images remove it.

Weights come in three formats: ONNX, TorchScript and the PyTorch state dict with
its architecture source (``unet.py`` + ``packaged.py``, torch only).
"""

from __future__ import annotations

import getpass
import inspect
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from carekit._version import __version__
from carekit.errors import CarekitError
from carekit.io import atomic_path, check_result
from carekit.model import CARE, state_dict_cpu, unet_settings
from carekit.nets import packaged, unet
from carekit.nets.packaged import PackagedNet
from carekit.normalize import PREDICT_PERCENTILES
from carekit.registry import supporting

CARE_DOI = "10.1038/s41592-018-0216-7"
CARE_CITATION = (
    "Weigert et al. (2018), Content-aware image restoration: pushing the limits of fluorescence microscopy. "
    "Nature Methods 15, 1090-1097."
)
ONNX_OPSET = 17
SAMPLE_EDGE = {2: 128, 3: 32}  # test-tensor edge, before rounding to a valid size


def packaged_net(model: CARE) -> PackagedNet:
    """The model's network wrapped with its normalisation, float32 on the CPU, in eval mode."""
    if not isinstance(model, CARE) or "export" not in model.kind.supports:
        what = getattr(getattr(model, "config", None), "mode", type(model).__name__)
        raise CarekitError(
            f"export packages {supporting('export')} models; this is a {what} model. "
            "Export one ensemble member folder, or predict the other modes with carekit"
        )
    c = model.config
    kwargs = {"ndim": c.ndim, "in_channels": c.n_channel_in, "out_channels": c.n_channel_out, **unet_settings(c)}
    imap = model.intensity_map
    net = PackagedNet(kwargs, list(imap.gain), list(imap.offset), *PREDICT_PERCENTILES)
    net.net.load_state_dict(state_dict_cpu(model.net))
    return net.eval()


def architecture_source() -> str:
    """``unet.py`` and ``packaged.py`` as one torch-only file, importable without carekit."""
    body = inspect.getsource(packaged).split("from carekit.nets.unet import build_unet\n", 1)
    if len(body) != 2:
        raise RuntimeError("packaged.py no longer imports build_unet as expected")
    tail = body[1]
    return inspect.getsource(unet) + "\n\n# --- normalisation wrapper ---\n" + tail


def sizes(net: PackagedNet) -> tuple[list[int], list[int]]:
    """Per spatial axis, the smallest valid input size and the halo a tiling consumer should crop.

    The network pads to its pooling grid itself, so every size from the minimum on is valid;
    the specification asks the minimum to exceed twice the halo.
    """
    halo = list(net.net.halo())
    minimum = [2 * h + 1 for h in halo]
    return minimum, halo


def sample_input(model: CARE, image: np.ndarray | None, minimum: list[int]) -> np.ndarray:
    """A test input ``(1, C, *S)``: a central crop of ``image`` (network order), else of the shipped nuclei stack."""
    c = model.config
    if image is None:
        import tifffile

        stack = tifffile.imread(Path(__file__).parent / "samples" / "nuclei3d.tif").astype(np.float32)
        image = stack[None, None] if c.ndim == 3 else stack[None, None, stack.shape[0] // 2]
        image = np.repeat(image, c.n_channel_in, axis=1)
        short = [(0, max(0, low - size)) for size, low in zip(image.shape[2:], minimum, strict=True)]
        image = np.pad(image, [(0, 0), (0, 0), *short], mode="symmetric")
    image = np.asarray(image, np.float32)[:1]
    if image.shape[1] != c.n_channel_in:
        raise CarekitError(f"sample image has {image.shape[1]} channel(s) but the model takes {c.n_channel_in}; "
                           "check --axes")  # fmt: skip
    crop = []
    for size, low in zip(image.shape[2:], minimum, strict=True):
        want = max(low, min(size, SAMPLE_EDGE[c.ndim]))
        if size < want:
            raise CarekitError(f"sample image is {size} px along an axis; the package needs at least {low}")
        start = (size - want) // 2
        crop.append(slice(start, start + want))
    return np.ascontiguousarray(image[(slice(None), slice(None), *crop)])


def cover(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    """Input | restoration, side by side (middle slice of a volume), as the package's cover image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def plane(a: np.ndarray) -> np.ndarray:
        a = a[0, 0]
        return a[a.shape[0] // 2] if a.ndim == 3 else a

    fig, axes = plt.subplots(1, 2, figsize=(8, 4), dpi=80)
    for ax, img, title in zip(axes, (plane(x), plane(y)), ("input", "CARE"), strict=True):
        lo, hi = np.percentile(img, (1, 99.8))
        ax.imshow(img, cmap="magma", vmin=lo, vmax=hi)
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def references(model: CARE) -> tuple[tuple[str, str], ...]:
    """``(reference, DOI)`` of the model's method: its mode's, else CARE's."""
    cite = model.kind.cite
    return cite(model.config) if cite is not None else ((CARE_CITATION, CARE_DOI),)


def readme(model: CARE, name: str) -> str:
    c = model.config
    outputs = "mean and Laplace scale" if c.net.probabilistic else "the restored image"
    cite = "\n".join(f"{text} https://doi.org/{doi}" for text, doi in references(model))
    return f"""# {name}

A restoration network ({model.kind.summary}) trained with carekit {__version__}.

{model.summary()}

## Input and output
- input: raw intensities, axes batch, channel, {", ".join(a.lower() for a in c.spatial)} (float32)
- output: {outputs} in the training targets' intensity units

The network normalises its input itself (percentiles {PREDICT_PERCENTILES[0]} and {PREDICT_PERCENTILES[1]} per
image and channel, linear interpolation) and maps the result back to intensities, so no pre- or
post-processing is needed. For results identical to `carekit predict`, give it whole images; a
consumer that tiles normalises each tile on its own, so use large tiles.

## Training
Mode {c.mode}, axes {c.axes}, loss {c.train.loss}, patch size {list(c.train.patch_size or [])}.

## Cite
{cite}
"""


def export(model: CARE, out: str | Path, *, sample: np.ndarray | None = None, name: str | None = None,
           author: str | None = None, license: str = "CC-BY-4.0") -> Path:  # fmt: skip
    """Write ``model`` as a bioimage.io model package ``out`` (a .zip), validated by ``bioimageio.spec``.

    Parameters
    ----------
    model : CARE
        A denoising or synthetic model (``carekit.load(folder)``).
    out : path
        The package to write; written under a temporary name and renamed when complete.
    sample : ndarray, optional
        A test image in network order ``(N, C, *S)``; default a crop of the shipped nuclei stack.
    name, author, license : str
        Package metadata (defaults: the model folder's name, the current user, CC-BY-4.0).
    """
    try:
        from bioimageio.spec import save_bioimageio_package
    except ImportError:
        raise CarekitError("export needs bioimageio.spec; install it with: pip install 'carekit[export]'") from None
    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise CarekitError(f"{out}: a bioimage.io package is a .zip file; name the output MODEL.zip")
    net = packaged_net(model)
    minimum, halo = sizes(net)
    x = sample_input(model, sample, minimum)
    with torch.no_grad():
        result = net(torch.from_numpy(x))
    y = [t.numpy() for t in (result if isinstance(result, tuple) else (result,))]
    for t in y:
        check_result(t, f"{out}: the model's output on the test image")
    name = name or f"CARE {model.directory.name if model.directory else model.config.mode} (carekit)"
    with tempfile.TemporaryDirectory() as tmp:
        files = write_files(Path(tmp), net, x, y, model, name)
        try:
            descr = describe(model, net, files, minimum, halo, name, author or getpass.getuser(), license, y)
            with atomic_path(out) as partial:
                save_bioimageio_package(descr, output_path=partial)
        except CarekitError:
            raise
        except ValueError as e:  # pydantic's ValidationError: the description breaks a rule of the specification
            first = " ".join(str(e).split())[:300]
            raise CarekitError(f"{out}: bioimage.io rejects the package description ({first}); check --name, "
                               "--author and --license") from None  # fmt: skip
    return out


def write_files(d: Path, net: PackagedNet, x: np.ndarray, y: list[np.ndarray], model: CARE, name: str) -> dict:
    """Weights in three formats, test tensors, cover, README and architecture source, in ``d``."""
    files = {k: d / v for k, v in {
        "onnx": "weights.onnx", "torchscript": "weights_torchscript.pt", "state_dict": "weights.pt",
        "architecture": "carekit_net.py", "input": "test_input.npy", "cover": "cover.png", "readme": "README.md",
    }.items()}  # fmt: skip
    example = torch.from_numpy(x)
    with warnings.catch_warnings():
        # tracing notes that channel-count branches become constants: they are, per model
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is what deepImageJ and QuPath run
        with torch.no_grad():
            torch.jit.trace(net, example, check_trace=False).save(str(files["torchscript"]))
        export_onnx(net, example, files["onnx"], n_outputs=len(y))
    torch.save(net.state_dict(), files["state_dict"])
    files["architecture"].write_text(architecture_source())
    np.save(files["input"], x)
    for i, t in enumerate(y):
        files[f"output{i}"] = d / f"test_output{i}.npy"
        np.save(files[f"output{i}"], t)
    cover(files["cover"], x, y[0])
    files["readme"].write_text(readme(model, name))
    return files


def export_onnx(net: PackagedNet, example: torch.Tensor, path: Path, n_outputs: int) -> None:
    spatial = {i: f"s{i}" for i in range(2, example.ndim)}
    names = ["output", "scale"][:n_outputs]
    dynamic = {k: {0: "batch", **spatial} for k in ["input", *names]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        # a filter blend's slices have constant ends on dynamic axes: nothing to fold, as it says
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
        torch.onnx.export(net, (example,), str(path), input_names=["input"], output_names=names,
                          dynamic_axes=dynamic, opset_version=ONNX_OPSET, dynamo=False)  # fmt: skip


def tensor_axes(bio, kind: str, names: list[str], spatial: list[str], minimum: list[int], halo: list[int]) -> list:
    """bioimage.io axes ``batch, channel, [z,] y, x`` of the input or of an output tensor."""
    axes = [bio.BatchAxis(), bio.ChannelAxis(channel_names=[bio.Identifier(n) for n in names])]
    for a, low, h in zip(spatial, minimum, halo, strict=True):
        if kind == "input":
            axes.append(bio.SpaceInputAxis(id=bio.AxisId(a), size=bio.ParameterizedSize(min=low, step=1)))
        else:
            same = bio.SizeReference(tensor_id=bio.TensorId("input"), axis_id=bio.AxisId(a))
            axes.append(bio.SpaceOutputAxisWithHalo(id=bio.AxisId(a), halo=h, size=same))
    return axes


def reproducibility(y: list[np.ndarray]) -> dict[str, float]:
    """Tolerances for reproducing the test outputs: 1e-4 of the output's range, absolute, where the
    specification allows it (at most 1 % of every output's maximum, so none for a negative maximum,
    as a briefly trained model may give); else relative only."""
    span = float(np.ptp(y[0])) or 1.0
    absolute = max(0.0, min(1e-4 * span, *(0.01 * float(t.max()) for t in y)))
    return {"relative_tolerance": 1e-4 if absolute > 0 else 1e-3, "absolute_tolerance": absolute}


def describe(model, net, files, minimum, halo, name, author, license, y):
    """The bioimage.io model description (spec 0.5) for the written files."""
    from bioimageio.spec.model import v0_5 as bio

    c = model.config
    spatial = [a.lower() for a in c.spatial]

    def tensor(kind: str, tid: str, channels: int, source, what: str):
        descr = bio.InputTensorDescr if kind == "input" else bio.OutputTensorDescr
        names = [f"{'c' if kind == 'input' else tid}{k}" for k in range(channels)]
        return descr(id=bio.TensorId(tid), axes=tensor_axes(bio, kind, names, spatial, minimum, halo),
                     test_tensor=bio.FileDescr(source=source), description=what)  # fmt: skip

    what = "raw intensities; normalised inside the network"
    inputs = [tensor("input", "input", c.n_channel_in, files["input"], what)]
    kinds = [("output", "restored intensities"), ("scale", "Laplace scale")][: len(y)]
    outputs = [tensor("output", tid, c.n_channel_out, files[f"output{i}"], what) for i, (tid, what) in enumerate(kinds)]
    torch_version = bio.Version(torch.__version__.split("+")[0])
    architecture = bio.ArchitectureFromFileDescr(
        source=files["architecture"], callable="PackagedNet", kwargs=net.kwargs
    )
    weights = bio.WeightsDescr(
        pytorch_state_dict=bio.PytorchStateDictWeightsDescr(
            source=files["state_dict"], pytorch_version=torch_version, architecture=architecture
        ),
        torchscript=bio.TorchscriptWeightsDescr(
            source=files["torchscript"], pytorch_version=torch_version, parent="pytorch_state_dict"
        ),
        onnx=bio.OnnxWeightsDescr(source=files["onnx"], opset_version=ONNX_OPSET, parent="pytorch_state_dict"),
    )
    tolerance = bio.ReproducibilityTolerance(**reproducibility(y))
    settings = {"version": __version__, "config": json.loads(json.dumps(c.to_dict()))}
    return bio.ModelDescr(
        name=name,
        description=f"CARE {c.mode} network ({c.ndim}D), trained with carekit {__version__}",
        authors=[bio.Author(name=author)],
        cite=[bio.CiteEntry(text=text, doi=bio.Doi(doi)) for text, doi in references(model)],
        license=license,
        documentation=bio.FileDescr(source=files["readme"]),
        covers=[bio.FileDescr(source=files["cover"])],
        tags=["care", "denoising", "restoration", "fluorescence-light-microscopy", f"{c.ndim}d", "carekit", c.mode],
        inputs=inputs,
        outputs=outputs,
        weights=weights,
        config=bio.Config(bioimageio=bio.BioimageioConfig(reproducibility_tolerance=[tolerance]), carekit=settings),
    )
