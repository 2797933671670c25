"""int8 prediction through ONNX Runtime, where it runs faster here than the network's own precision.

Training ends by quantizing a copy of the network (:mod:`carekit.quantize`) and keeps it in the
model folder as ``int8.onnx`` only where the validation patches score within
:data:`TOLERANCE_DB` of float32. Prediction with ``precision="auto"`` on a CPU uses it when a
short measurement of both (cached per machine and network, like bfloat16's) finds it at most
:data:`INT8_GAIN` of the default's time; ``precision="int8"`` asks for it. Int8 convolutions
use the CPU's 8-bit dot products (AVX-512 VNNI, AVX-VNNI, AMX) where it has them.
"""

from __future__ import annotations

import copy
import hashlib
import math
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from carekit.engine import Engine, cached_timings, time_pass
from carekit.errors import CarekitError
from carekit.hardware import this_cpu
from carekit.nets.unet import FilterBlend, fold_batch_norm

FILE = "int8.onnx"
TOLERANCE_DB = 0.05  # the int8 network may lose at most this much PSNR against float32 on validation
INT8_GAIN = 0.8  # measured int8 passes must take at most this share of the default's time to be chosen
INPUT, OUTPUT = "input", "output"
# The timed input per spatial dimensions: 2D prediction runs cache-sized windows on one thread each
# (carekit.tiling), so 2D is timed on one such window with one thread; 3D on all threads.
PROBE_SIDE = {2: (384, 384), 3: (16, 128, 128)}
DOT_PRODUCT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def exportable(net: nn.Module) -> nn.Module:
    """A float32 CPU copy of ``net`` for export: batch norms folded, plain operators."""
    net = fold_batch_norm(copy.deepcopy(net).eval()).float().cpu()
    net.phase_upsampling = False  # type: ignore[assignment]  # plain operators, exportable to ONNX
    return net


def export(net: nn.Module, example_shape: tuple[int, ...], path: Path) -> None:
    """Write ``net`` as float32 ONNX with free batch and spatial sizes."""
    dynamic = {name: {0: "batch", **{i: f"s{i}" for i in range(2, len(example_shape))}} for name in (INPUT, OUTPUT)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own future
        torch.onnx.export(exportable(net), (torch.zeros(example_shape),), str(path), input_names=[INPUT],
                          output_names=[OUTPUT], dynamic_axes=dynamic, opset_version=17, dynamo=False)  # fmt: skip


def fingerprint(net: torch.nn.Module) -> str:
    """A digest of the weights and of any filter blend, so that a copy made from others is never used."""
    digest = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    blends = [f"{name}: {module.settings()}" for name, module in net.named_modules() if isinstance(module, FilterBlend)]
    if blends:  # (nothing added without one: fingerprints of networks without a blend stay as they were)
        digest.update("; ".join(blends).encode())
    return digest.hexdigest()[:16]


class Int8Net:
    """Runs an ``int8.onnx`` like a network: a float32 tensor ``(N, C, *S)`` in, one out.

    One ONNX Runtime session per thread count, made when first needed: prediction windows that run
    on one worker per core call it with one torch thread each (and share that session), a single
    pass with every thread.
    """

    def __init__(self, path: Path) -> None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise CarekitError("int8 prediction needs ONNX Runtime (pip install onnxruntime)") from None
        self.path = Path(path)
        try:
            self.graph = self.path.read_bytes()
        except OSError as e:
            raise CarekitError(f"{self.path}: cannot read the int8 network ({e.strerror})") from None
        self.sessions: dict[int, object] = {}
        self.lock = threading.Lock()

    def session(self, threads: int):
        import onnxruntime as ort

        with self.lock:
            if threads not in self.sessions:
                options = ort.SessionOptions()
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
                options.log_severity_level = 3
                # no spin-waiting between operations, as for OpenMP (carekit.threads): beside a busy
                # process a two-thread pass ran 1024x1024 at 2.28 instead of 2.02 Mpx/s; idle 3.41 / 3.40
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                try:
                    self.sessions[threads] = ort.InferenceSession(self.graph, options,
                                                                  providers=["CPUExecutionProvider"])  # fmt: skip
                except Exception as e:  # ONNX Runtime raises its own exception types
                    raise CarekitError(f"{self.path}: ONNX Runtime cannot load the int8 network "
                                       f"({str(e).splitlines()[0][:200]})") from None  # fmt: skip
            return self.sessions[threads]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        session = self.session(max(1, torch.get_num_threads()))
        array = np.ascontiguousarray(x.detach().float().cpu().numpy())
        return torch.from_numpy(session.run([OUTPUT], {INPUT: array})[0])  # type: ignore[attr-defined]


def probe_shape(net: nn.Module, channels: int) -> tuple[int, ...]:
    grid = net.divisor()  # type: ignore[operator]
    side = PROBE_SIDE[len(grid)]
    return (1, channels, *(max(g, s // g * g) for s, g in zip(side, grid, strict=True)))


def time_int8(runner: Int8Net, shape: tuple[int, ...], repeats: int = 2) -> float:
    x = torch.from_numpy(np.random.default_rng(0).random(shape, np.float32))
    best = math.inf
    for i in range(repeats + 1):
        start = time.perf_counter()
        runner(x)
        if i:
            best = min(best, time.perf_counter() - start)
    return best


def faster_here(runner: Int8Net, net: nn.Module, channels: int, engine: Engine,
                float_convolutions: int = 0) -> tuple[bool, str]:  # fmt: skip
    """Whether the int8 network runs faster here than ``net`` on ``engine`` (measured once per
    machine, network, convolutions left in float32 and precision; cached on disk), and why."""
    cpu = this_cpu()
    shape = probe_shape(net, channels)
    params = sum(p.numel() for p in net.parameters())
    threads = 1 if len(shape) == 4 else torch.get_num_threads()
    network = f"int8 {params} float {float_convolutions}|{list(shape)}|{threads} threads"
    key = f"{cpu.model}|{cpu.arch}|torch {torch.__version__}|{network}|{engine.precision}"

    def measure() -> dict[str, float]:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return {"int8": time_int8(runner, shape), engine.precision: time_pass(net, shape, engine, train=False)}
        finally:
            torch.set_num_threads(before)

    times = cached_timings("int8.json", key, measure)
    ratio = times["int8"] / times[engine.precision]
    dots = [f for f in DOT_PRODUCT_FLAGS if f in cpu.flags]
    why = f"measured: int8 takes {ratio:.2f}x {engine.precision}'s time ({', '.join(dots) or 'no 8-bit dot products'})"
    return ratio <= INT8_GAIN, why


def missing(report: dict | None) -> str:
    """Why a model has no usable int8 copy, from its training's check (``config.json``'s ``int8``)."""
    if not report:
        return "no int8 copy (trained before carekit made them)"
    if report.get("skipped"):
        return f"no int8 copy ({report['skipped']})"
    if not report.get("kept") and "gap_db" in report:
        return (f"no int8 copy (the best lost {report['gap_db']:.2f} dB against float32 on validation, more than "
                f"{report.get('tolerance_db', TOLERANCE_DB):g})")  # fmt: skip
    return "its int8 copy is missing or was made from other weights"


def describe(report: dict | None) -> str:
    """A phrase for the model's summary: the int8 copy kept, or why the check refused it."""
    if not report or report.get("skipped"):
        return ""
    if report.get("kept"):
        n, k = report["convolutions"], report.get("float_convolutions", 0)
        return (f"int8 copy for CPU prediction: {n - k} of {n} convolutions in int8, "
                f"{-report['gap_db']:+.2f} dB against float32 on its validation data")  # fmt: skip
    return missing(report)
