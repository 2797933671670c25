"""Foreign bioimage.io packages: built with bioimageio.spec's own classes (spec 0.4 and 0.5), with ONNX or
TorchScript weights and the spec's defaults, 'carekit predict --model PKG.zip' must reproduce what
bioimageio.core computes for them."""

import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from carekit.cli import main
from carekit.errors import CarekitError
from carekit.package import Package

pytest.importorskip("bioimageio.core")
sys.path.insert(0, str(Path(__file__).parent / "robustness"))
from world import Affine

CITE = {"text": "Weigert et al. (2018)", "doi": "10.1038/s41592-018-0216-7"}


class TwoChannel(torch.nn.Module):
    """A network of two channels with different gains, for per-channel processing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.tensor([1.0, -2.0]).reshape(1, 2, 1, 1) + 0.25


def weights(folder: Path, net: torch.nn.Module, channels: int, channels_last: bool = False) -> tuple[Path, Path]:
    """ONNX and TorchScript files of ``net`` (for inputs ``b,c,y,x``; ``b,y,x,c`` with ``channels_last``)."""

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net.requires_grad_(False)

        def forward(self, x):
            return self.net(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1) if channels_last else self.net(x)

    example = torch.zeros((1, 16, 16, channels) if channels_last else (1, channels, 16, 16))
    dims = {0: "b", 1: "y", 2: "x"} if channels_last else {0: "b", 2: "y", 3: "x"}
    onnx = folder / "net.onnx"
    torch.onnx.export(Wrapped(), (example,), str(onnx), input_names=["i"], output_names=["o"],
                      dynamic_axes={"i": dims, "o": dims}, opset_version=17, dynamo=False)  # fmt: skip
    script = folder / "net.pt"
    torch.jit.trace(Wrapped(), example).save(str(script))
    return onnx, script


def spec05(folder: Path, formats: tuple[str, ...], preprocessing, postprocessing, image: np.ndarray) -> Path:
    """A spec-0.5 package of :class:`Affine` built with bioimageio.spec's classes, using defaults: the
    second space axis has no id (so it is x), tensors keep their default ids."""
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5 as b

    onnx, script = weights(folder, Affine(), 1)
    np.save(folder / "in.npy", image[None, None])
    with torch.no_grad():
        np.save(folder / "out.npy", Affine()(torch.from_numpy(image[None, None])).numpy())
    channel = b.ChannelAxis(channel_names=[b.Identifier("c0")])
    size = b.ParameterizedSize(min=16, step=8)
    inputs = [
        b.InputTensorDescr(
            axes=[b.BatchAxis(), channel, b.SpaceInputAxis(id=b.AxisId("y"), size=size), b.SpaceInputAxis(size=size)],
            test_tensor=b.FileDescr(source=folder / "in.npy"),
            preprocessing=preprocessing,
        )
    ]
    ref = b.TensorId("input")
    outputs = [
        b.OutputTensorDescr(
            axes=[
                b.BatchAxis(),
                channel,
                b.SpaceOutputAxis(id=b.AxisId("y"), size=b.SizeReference(tensor_id=ref, axis_id=b.AxisId("y"))),
                b.SpaceOutputAxis(size=b.SizeReference(tensor_id=ref, axis_id=b.AxisId("x"))),
            ],
            test_tensor=b.FileDescr(source=folder / "out.npy"),
            postprocessing=postprocessing,
        )
    ]
    version = b.Version(torch.__version__.split("+")[0])
    entries = {
        "onnx": b.OnnxWeightsDescr(source=onnx, opset_version=17),
        "torchscript": b.TorchscriptWeightsDescr(source=script, pytorch_version=version),
    }
    (folder / "README.md").write_text("# test\n")
    descr = b.ModelDescr(
        name="foreign 05",
        description="a test package",
        authors=[b.Author(name="Tester")],
        cite=[b.CiteEntry(**CITE)],
        license="CC-BY-4.0",
        documentation=b.FileDescr(source=folder / "README.md"),
        inputs=inputs,
        outputs=outputs,
        weights=b.WeightsDescr(**{k: entries[k] for k in formats}),
    )
    return save_bioimageio_package(descr, output_path=folder / "foreign05.zip")  # fmt: skip


def spec04(folder: Path, formats: tuple[str, ...], image: np.ndarray) -> Path:
    """A spec-0.4 package of :class:`TwoChannel`, channels last (``byxc``), with per-sample
    zero-mean-unit-variance over x and y, per-channel gains and a sigmoid."""
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_4 as b

    onnx, script = weights(folder, TwoChannel(), 2, channels_last=True)
    np.save(folder / "in.npy", image[None])
    np.save(folder / "out.npy", image[None])
    shape = b.ParameterizedInputShape(min=[1, 16, 16, 2], step=[0, 8, 8, 0])
    inputs = [
        b.InputTensorDescr(
            name=b.TensorName("raw"),
            axes="byxc",
            data_type="float32",
            shape=shape,
            preprocessing=[
                b.ZeroMeanUnitVarianceDescr(kwargs=b.ZeroMeanUnitVarianceKwargs(mode="per_sample", axes="xy"))
            ],
        )
    ]
    out_shape = b.ImplicitOutputShape(reference_tensor=b.TensorName("raw"), scale=[1, 1, 1, 1], offset=[0, 0, 0, 0])
    post = [
        b.ScaleLinearDescr(kwargs=b.ScaleLinearKwargs(axes="xy", gain=[0.5, 3.0], offset=[1.0, 0.0])),
        b.SigmoidDescr(),
    ]
    outputs = [
        b.OutputTensorDescr(
            name=b.TensorName("out"), axes="byxc", data_type="float32", shape=out_shape, postprocessing=post
        )
    ]
    entries = {
        "onnx": b.OnnxWeightsDescr(source=onnx, opset_version=17),
        "torchscript": b.TorchscriptWeightsDescr(source=script, pytorch_version=b.Version("2.0")),
    }
    (folder / "README.md").write_text("# test\n")
    descr = b.ModelDescr(
        name="foreign 04",
        description="a test package",
        authors=[b.Author(name="Tester")],
        cite=[b.CiteEntry(text=CITE["text"], doi=b.Doi(CITE["doi"]))],
        license="CC-BY-4.0",
        documentation=folder / "README.md",
        timestamp="2024-06-01T12:00:00",
        test_inputs=[folder / "in.npy"],
        test_outputs=[folder / "out.npy"],
        inputs=inputs,
        outputs=outputs,
        weights=b.WeightsDescr(**{k: entries[k] for k in formats}),
    )
    return save_bioimageio_package(descr, output_path=folder / "foreign04.zip")  # fmt: skip


def core_prediction(package: Path, image: np.ndarray, weight_format: str) -> np.ndarray:
    """What bioimageio.core computes for ``image`` (in the input tensor's own axis order)."""
    from bioimageio.core import create_prediction_pipeline, load_description, predict

    descr = load_description(package, perform_io_checks=False)
    pipeline = create_prediction_pipeline(descr, weight_format=weight_format)
    sample = predict(model=pipeline, inputs={next(iter(pipeline.input_ids)): image})
    return np.asarray(next(iter(sample.members.values())).data)


def steps05():
    from bioimageio.spec.model import v0_5 as b

    pre = [b.ZeroMeanUnitVarianceDescr()]  # every kwarg left to the spec's defaults
    post = [b.ScaleLinearDescr(kwargs=b.ScaleLinearKwargs(gain=2.0, offset=1.0)),
            b.ClipDescr(kwargs=b.ClipKwargs(min=0.0, max=5.0)), b.SigmoidDescr()]  # fmt: skip
    return pre, post


def blobs(shape, seed=0):
    return (np.random.default_rng(seed).gamma(2.0, 30.0, shape) + 10).astype(np.float32)


@pytest.mark.parametrize("formats", [("onnx",), ("torchscript",)])
def test_spec05_package_from_the_spec_classes_runs_like_bioimageio_core(tmp_path, formats):
    pre, post = steps05()
    image = blobs((48, 64))
    package = spec05(tmp_path, formats, pre, post, image)
    tifffile.imwrite(tmp_path / "a.tif", image)
    argv = ["predict", "--model", str(package), "--input", str(tmp_path / "a.tif"), "--output", str(tmp_path / "o.tif"),
            "--axes", "YX", *(["--allow-torchscript"] if formats == ("torchscript",) else [])]  # fmt: skip
    assert main(argv) == 0
    ours = tifffile.imread(tmp_path / "o.tif")
    theirs = core_prediction(package, image[None, None], formats[0])[0, 0]
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    assert ours.min() >= 0.5 and ours.max() < 1  # the sigmoid of clipped values in [0, 5]


def test_spec05_binarize_and_scale_range(tmp_path):
    from bioimageio.spec.model import v0_5 as b

    pre = [b.ScaleRangeDescr(kwargs=b.ScaleRangeKwargs(axes=[b.AxisId("y"), b.AxisId("x")], min_percentile=5,
                                                       max_percentile=99.5))]  # fmt: skip
    post = [b.BinarizeDescr(kwargs=b.BinarizeKwargs(threshold=0.8))]
    image = blobs((32, 40), seed=3)
    package = spec05(tmp_path, ("onnx",), pre, post, image)
    (ours,), axes = Package(package).predict(image, "YX")
    theirs = core_prediction(package, image[None, None], "onnx")[0, 0]
    assert axes == "YX" and set(np.unique(ours)) <= {0.0, 1.0} and 0 < ours.mean() < 1
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("formats", [("onnx",), ("torchscript",)])
def test_spec04_channels_last_package_applies_its_steps_per_channel(tmp_path, formats):
    # bioimageio.core does not implement 0.4's scale_linear with axes, so the reference is written here
    image = np.stack([blobs((32, 48), 1), blobs((32, 48), 2) * 3], axis=-1)  # YXC
    package = spec04(tmp_path, formats, image)
    (ours,), axes = Package(package, allow_torchscript=True).predict(image, "YXC")
    normalised = (image - image.mean((0, 1))) / (image.std((0, 1)) + 1e-6)  # per sample and channel
    restored = normalised * np.array([1.0, -2.0]) + 0.25  # TwoChannel
    scaled = restored * np.array([0.5, 3.0]) + np.array([1.0, 0.0])
    assert axes == "YXC"
    np.testing.assert_allclose(ours, 1 / (1 + np.exp(-scaled)), rtol=1e-5, atol=1e-6)


def test_torchscript_runs_only_when_allowed(tmp_path):
    pre, post = steps05()
    package = spec05(tmp_path, ("torchscript",), pre, post, blobs((32, 32)))
    with pytest.raises(CarekitError, match="--allow-torchscript"):
        Package(package)
    assert Package(package, allow_torchscript=True).predict(blobs((32, 32)), "YX")[0][0].shape == (32, 32)
