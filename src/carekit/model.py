"""The model: configuration + network, its folder on disk, and the prediction outline of every mode.

A model folder holds ``config.json`` (every setting, axes, normalisation, carekit
version), ``weights.safetensors`` (the best weights), ``last.safetensors`` (the last
checkpoint, for resuming), ``history.csv`` and ``training.png``. Nothing in it is
ever unpickled.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from carekit import int8, threads
from carekit.axes import Layout, check_axes, to_net
from carekit.baselines import describe_blend, describe_margin
from carekit.config import Config
from carekit.engine import Engine, Probe, choose_engine
from carekit.errors import CarekitError, warn
from carekit.io import check_finite, check_result, read_json, write_atomic, write_json
from carekit.nets import packaged
from carekit.nets.unet import BLEND_KEYS, UNet, build_unet, count_parameters, fold_batch_norm
from carekit.noise import describe_redraw
from carekit.normalize import PREDICT_PERCENTILES, IntensityMap, normalize, percentiles
from carekit.registry import Mode, mode_of, supporting
from carekit.tiling import Progress, predict_tiled
from carekit.uncertainty import Calibration, Laplace

CONFIG = "config.json"
WEIGHTS = "weights.safetensors"
LAST = "last.safetensors"
HISTORY = "history.csv"
CURVE = "training.png"


def unet_settings(config: Config) -> dict:
    """The U-Net keyword settings of ``config`` (everything but dimensions and channel counts)."""
    n = config.net
    return {
        "depth": n.depth,
        "n_first": n.n_first,
        "kernel_size": n.kernel_size,
        "n_conv": n.n_conv,
        "residual": n.residual,
        "batch_norm": n.batch_norm,
        "probabilistic": n.probabilistic,
        "blur_pool": n.blur_pool,
        "top_skip": n.top_skip,
        "independent_channels": n.independent_channels,
        "filter_blend": {k: config.blend[k] for k in BLEND_KEYS} if config.blend else None,
    }


def build_net(config: Config) -> torch.nn.Module:
    """The network of ``config``: its mode's, or the U-Net of ``config.net``."""
    build = mode_of(config.mode).net
    if build is not None:
        return build(config)
    return build_unet(config.ndim, config.n_channel_in, config.n_channel_out, **unet_settings(config))


def state_dict_cpu(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", memory_format=torch.contiguous_format).clone() for k, v in net.state_dict().items()}


@dataclass(frozen=True)
class Run:
    """How one prediction runs the network: engine, tiles, memory budget, progress bar, TTA."""

    engine: Engine
    n_tiles: tuple[int, ...] | None = None
    memory: int | None = None
    progress: Progress = False
    tta: bool = False


@dataclass
class Prediction:
    """A restoration in the input's axes order: mean, Laplace scale (probabilistic models) and the
    mode's extra maps (e.g. a projection's ``height``)."""

    mean: np.ndarray
    scale: np.ndarray | None
    extra: dict[str, np.ndarray] = field(default_factory=dict)


class CARE:
    """A CARE restoration model; a mode's class overrides :meth:`network_pass` and the axes it works on.

    Examples
    --------
    >>> model = carekit.train(low, high, axes="YX", model_dir="my_model")  # doctest: +SKIP
    >>> restored = model.predict(new_image, axes="YX")  # doctest: +SKIP
    >>> model = carekit.load("my_model")  # doctest: +SKIP
    """

    fold_spatial: str | None = None  # the axes prediction folds an image into (None: the network's)
    result_spatial: str | None = None  # the result's spatial axes (None: those folded)
    extra_outputs: tuple[str, ...] = ()  # maps the network pass returns after mean (and scale)

    def __init__(self, config: Config, net: UNet | None = None, directory: str | Path | None = None) -> None:
        config.net = config.net.settled()  # built untrained, choices left to the data: no residual
        self.config = config
        self.net = net if net is not None else build_net(config)
        self.directory = Path(directory) if directory is not None else None
        self._engine: Engine | None = None
        self._inference: torch.nn.Module | int8.Int8Net | None = None
        self._int8: int8.Int8Net | bool | None = None  # the int8 copy; False: none valid; None: not looked for
        self._int8_error: str | None = None  # why a copy that should be there did not load

    # -- description ----------------------------------------------------------
    @property
    def kind(self) -> Mode:
        """The registered mode this model restores in."""
        return mode_of(self.config.mode)

    @property
    def intensity_map(self) -> IntensityMap:
        if self.config.intensity_map is None:
            return IntensityMap.identity(self.config.n_channel_out)
        return IntensityMap.from_dict(self.config.intensity_map)

    def summary(self) -> str:
        c, n = self.config, self.config.net
        return (
            f"CARE {c.mode} model, {c.ndim}D U-Net: depth {n.depth}, {n.n_first} first features, "
            f"kernel {n.kernel_size}, {'batch norm, ' if n.batch_norm else ''}"
            f"{'blur pooling, ' if n.blur_pool else ''}{'' if n.top_skip else 'no top skip, '}"
            f"{'one network per channel, ' if n.independent_channels and c.n_channel_in > 1 else ''}"
            f"{'residual' if self.net.residual else 'no residual'}, "
            f"{c.n_channel_in} -> {c.n_channel_out} channel(s); {count_parameters(self.net):,} parameters; "
            f"receptive-field halo {self.net.halo()} px; trained on axes {c.axes}"
            + (f"; {mixed}" if (mixed := describe_blend(c.blend)) else "")
            + (f"; {margin}" if (margin := describe_margin(c.baseline)[0]) else "")
            + (f"; {quantized}" if (quantized := int8.describe(c.int8)) else "")
            + (f"; {redrawn}" if (redrawn := describe_redraw(c.redraw)) else "")
        )

    def warnings(self) -> list[str]:
        """What a user should know before trusting this model (e.g. it does not beat a simple filter)."""
        warning = describe_margin(self.config.baseline)[1]
        return [warning] if warning else []

    def __repr__(self) -> str:
        return f"<{self.summary()}>"

    def output_spacing(self, spacing: dict[str, float] | None, factor: float | None = None) -> dict[str, float] | None:
        """Voxel size of :meth:`predict`'s result for an input with ``spacing`` (unchanged here)."""
        return spacing

    def output_axes(self, axes: str) -> str:
        """Axes of :meth:`predict`'s result for an input with ``axes`` (C appears for multi-channel output)."""
        axes = check_axes(axes)
        if "C" in axes or self.config.n_channel_out == 1:
            return axes
        first = min(axes.index(a) for a in self.config.spatial)
        return axes[:first] + "C" + axes[first:]

    # -- the network --------------------------------------------------------------
    def probe(self, train: bool = False) -> Probe:
        """The network on a small input, to time where the CPU's flags leave the precision open."""
        return Probe(self.net, self.net.example_shape(), train)

    def engine(self, device: str = "auto", precision: str | None = None) -> Engine:
        asked = precision or self.config.train.precision
        engine = choose_engine(device, asked, self.probe())
        engine = dataclasses.replace(engine, predicting=True)
        if engine.device.type == "cpu" and asked in ("auto", "int8"):
            engine = self.int8_engine(engine, asked == "int8")
        if engine != self._engine:
            self.net = engine.prepare(self.net.eval())
            self._engine = engine
            self._inference = None
        return engine

    def weights_changed(self) -> None:
        """Forget the inference copy of the network after its weights were replaced."""
        self._engine = self._inference = self._int8 = None

    def int8_net(self) -> int8.Int8Net | None:
        """The model folder's int8 copy (:mod:`carekit.int8`), where it was kept for these weights and
        loads (otherwise :attr:`_int8_error` says why it does not)."""
        if self._int8 is None:
            report, path = self.config.int8 or {}, (self.directory or Path()) / int8.FILE
            valid = self.directory is not None and report.get("kept") and path.is_file()
            self._int8, self._int8_error = False, None
            if valid and report.get("weights") == int8.fingerprint(self.net):
                try:
                    runner = int8.Int8Net(path)
                    runner.session(1)  # loads the graph: a damaged file fails here
                    self._int8 = runner
                except CarekitError as e:  # no ONNX Runtime, or it cannot read the file
                    self._int8_error = str(e)
        return self._int8 or None

    def int8_engine(self, engine: Engine, asked: bool) -> Engine:
        """``engine``, or int8 where asked for (``asked``) or where the model's int8 copy runs faster here.
        A damaged copy is an error where asked for, else a warning: the model's own weights predict."""
        runner = self.int8_net()
        if runner is None and asked:
            why = self._int8_error or f"{self.directory or 'this model'}: {int8.missing(self.config.int8)}"
            raise CarekitError(f"{why}; predict with --precision auto")
        if runner is None:
            if self._int8_error:
                warn(f"{self._int8_error}; predicting in {engine.precision}")
                self._int8_error = None  # said once
            return engine
        if asked:
            return engine
        floats = int((self.config.int8 or {}).get("float_convolutions", 0))
        faster, why = int8.faster_here(runner, self.net, self.config.n_channel_in, engine, floats)
        return Engine(engine.device, "int8", why, predicting=True) if faster else engine

    @property
    def inference_net(self) -> torch.nn.Module:
        """The network for prediction: batch norms folded into convolutions, on the engine's device."""
        if self._inference is None and self._engine is not None and self._engine.precision == "int8":
            self._inference = self.int8_net()
        if self._inference is None:
            net = fold_batch_norm(self.net.eval())
            self._inference = self._engine.prepare(net) if self._engine is not None else net
        return self._inference

    # -- prediction ---------------------------------------------------------------
    def predict(self, image: np.ndarray, axes: str | None = None, **options) -> np.ndarray:
        """Restore ``image`` and return float32 intensities in the same axes order.

        Parameters
        ----------
        image : ndarray
        axes : str, optional
            The image's axes (e.g. ``"YX"``, ``"TZCYX"``); default the training axes.
        n_tiles : tuple of int, optional
            Tiles per spatial axis; default chosen from ``memory``.
        memory : int, optional
            Activation memory budget in bytes per batch of tiles (default on CPU a quarter of
            the available memory, at most 5 GiB, less the image's padded input and output, at
            least 1.5 GiB; on CUDA a quarter of the GPU's free memory, at most 8 GiB).
        device, precision : str
            ``"auto"`` picks CUDA if present and the fastest safe precision.
        progress : bool or callable
            Show a progress bar for large inputs; a callable is told ``(done, total)`` after each
            batch of tiles of every network pass (and may raise to cancel).
        tta : bool
            Test-time augmentation: average the 8 flips/rotations of the lateral plane (8x slower).
        **options
            The mode's own options (e.g. ``factor`` for isotropic models).
        """
        return self.prediction(image, axes, **options).mean

    def predict_distribution(self, image: np.ndarray, axes: str | None = None, **options) -> Laplace:
        """The per-pixel Laplace distribution (mean and scale, in intensity units) of a probabilistic model."""
        return self.as_distribution(self.prediction(image, axes, **options))

    def as_distribution(self, result: Prediction) -> Laplace:
        """The Laplace distribution of a :meth:`prediction` (calibrated, where the model was)."""
        if not self.config.net.probabilistic:
            raise CarekitError("this model predicts no distribution; train it with --probabilistic")
        return Laplace(result.mean, result.scale, stored_calibration(self.config.calibration, self.directory))

    def predict_with_scale(
        self, image: np.ndarray, axes: str | None = None, **options
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Mean and Laplace scale (None for point models) in the input's axes order."""
        result = self.prediction(image, axes, **options)
        return result.mean, result.scale

    def prediction(self, image: np.ndarray, axes: str | None = None, *, n_tiles: tuple[int, ...] | None = None,
                   memory: int | None = None, device: str = "auto", precision: str | None = None,
                   progress: Progress = False, tta: bool = False, **options) -> Prediction:  # fmt: skip
        """The outline every mode follows: fold ``image`` into network order, take its percentiles,
        run the mode's network pass, bring the output to intensities and unfold it (see :meth:`predict`)."""
        if tta and "tta" not in self.kind.supports:
            raise CarekitError(f"test-time augmentation is available for {supporting('tta')} models, "
                               f"not {self.config.mode} ones")  # fmt: skip
        x, layout = self.network_input(image, axes, self.fold_spatial or self.config.spatial)
        engine = self.engine(device, precision)
        lo, hi = percentiles(x, PREDICT_PERCENTILES, engine.device)
        with threads.scope(window=3, shared_cores=True):  # every core, tuned batch by batch
            y = self.network_pass(x, lo, hi, Run(engine, n_tiles, memory, progress, tta), **options)
        lo, hi = (v.reshape(*v.shape[:2], *(1,) * (y.ndim - 2)) for v in (lo, hi))
        mean, scale = self.to_intensities(y, lo, hi, x)
        check_result(y, "prediction")  # mean and scale are views of y
        spatial = self.result_spatial or layout.spatial
        c = mean.shape[1] + (0 if scale is None else scale.shape[1])
        extra = {}
        for i, name in enumerate(self.extra_outputs):  # one value per pixel, whatever the channels
            value, value_axes = layout.unfold(y[:, c + i : c + i + 1], spatial)
            extra[name] = np.take(value, 0, axis=value_axes.index("C")) if "C" in value_axes else value
        return Prediction(*(None if a is None else layout.unfold(a, spatial)[0] for a in (mean, scale)), extra)

    def network_input(self, image: np.ndarray, axes: str | None, spatial: str) -> tuple[np.ndarray, Layout]:
        """Validate ``image`` and fold it into ``(N, C, *spatial)``."""
        x, layout = to_net(np.asarray(image), axes or self.config.axes, spatial, what="image")
        if x.shape[1] != self.config.n_channel_in:
            raise CarekitError(
                f"image has {x.shape[1]} channel(s) along C but the model expects {self.config.n_channel_in}; "
                "check --axes and the channel order"
            )
        check_finite(x, "image")
        return x, layout

    def network_pass(self, x: np.ndarray, lo: np.ndarray, hi: np.ndarray, run: Run) -> np.ndarray:
        """The network's output for raw ``x`` with percentiles ``lo``, ``hi``, in normalised units:
        mean, then scale channels (probabilistic), then :attr:`extra_outputs`.

        Here a plain tiled pass; with ``run.tta`` averaged over the 8 flips and 90° rotations of the
        lateral plane.
        """
        normalized = normalize(x, lo, hi)
        if not run.tta:
            return self.run_net(normalized, run.engine, run.n_tiles, run.memory, run.progress)
        y, n_tiles = None, run.n_tiles
        for k, flip in itertools.product(range(4), (False, True)):
            tiles = n_tiles if n_tiles is None or k % 2 == 0 else (*n_tiles[:-2], n_tiles[-1], n_tiles[-2])
            view = np.rot90(np.flip(normalized, -1) if flip else normalized, k, axes=(-2, -1))
            out = self.run_net(np.ascontiguousarray(view), run.engine, tiles, run.memory, run.progress)
            out = np.rot90(out, -k, axes=(-2, -1))
            out = np.flip(out, -1) if flip else out
            y = out.copy() if y is None else y + out
        return y / 8

    def run_net(self, x: np.ndarray, engine: Engine, n_tiles=None, memory=None, progress=False, forward=None,
                bytes_per_voxel=None) -> np.ndarray:  # fmt: skip
        """Tiled network output for normalised ``x`` (mean, then scale channels if probabilistic)."""
        per_voxel = int((bytes_per_voxel or self.net.bytes_per_voxel()) * engine.activation_scale)
        return predict_tiled(forward or self.inference_net, x, engine, grid=self.net.divisor(), halo=self.net.halo(),
                             bytes_per_voxel=per_voxel, n_tiles=n_tiles, memory=memory, progress=progress)  # fmt: skip

    def to_intensities(self, y: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                       x: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:  # fmt: skip
        """Mean and scale of network output ``y`` in the target's intensity units, in place (views of ``y``).

        ``x``, the raw input of the same pixels where there is one, serves modes whose result
        also reads it (Noise2Void's blend).
        ``lo``/``hi`` are the input's percentiles; the mean is de-normalised with the target
        percentiles they map to, and the scale multiplied by the same span.
        """
        c = self.config.n_channel_out
        t_lo, t_hi = self.intensity_map.apply(lo, hi)
        mean = packaged.denormalize(y[:, :c], t_lo, t_hi)
        if not self.config.net.probabilistic:
            return mean, None
        scale = y[:, c : 2 * c]
        scale *= packaged.nonzero_span(t_lo, t_hi)
        return mean, scale

    # -- folder -------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``weights.safetensors`` into ``directory``."""
        d = Path(directory)
        write_json(d / CONFIG, self.config.to_dict())
        save_weights(d / WEIGHTS, self.net)
        self.directory = d
        return d

    @classmethod
    def load(cls, directory: str | Path, *, weights: str = WEIGHTS) -> CARE:
        """Load a model folder (no pickles are read)."""
        d = Path(directory)
        if not d.is_dir():
            raise CarekitError(f"{d}: no such model folder; pass the --model folder written by 'carekit train'")
        config = Config.from_dict(read_json(d / CONFIG), source=str(d / CONFIG))
        net = build_net(config)
        load_weights(d / weights, net)
        return mode_of(config.mode).model(config, net, d)


def stored_calibration(calibration: dict | None, directory: Path | None = None) -> Calibration | None:
    """The stored recalibration of a model or ensemble, if it was calibrated (global or conditional)."""
    if not calibration:
        return None
    try:
        return Calibration.from_dict(calibration)
    except (KeyError, TypeError, ValueError) as e:
        raise CarekitError(f"{directory or 'model'}: stored calibration is damaged ({e}); "
                           "run 'carekit calibrate' again") from None  # fmt: skip


def save_weights(path: Path, net: torch.nn.Module, metadata: dict[str, str] | None = None) -> None:
    tensors = state_dict_cpu(net)
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def load_weights(path: Path, net: torch.nn.Module) -> None:
    if not path.exists():
        raise CarekitError(f"{path}: weights missing; train the model first or point --model at a complete folder")
    try:
        tensors = load_file(str(path))
        net.load_state_dict(tensors)
    except Exception as e:  # safetensors and torch raise several types for damaged files
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CarekitError(f"{path}: weights do not fit the configuration ({first}); the folder is damaged") from None
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CarekitError(f"{path}: weights hold NaN or infinite values ({', '.join(bad[:3])}); the model is damaged, "
                           "train it again")  # fmt: skip
