"""An int8 copy of every trained network, kept only where it restores as well as float32.

Training ends (after the margin over simple filters) by exporting the best weights to ONNX and
quantizing them with ONNX Runtime: weights per output channel, activations per tensor with ranges
taken from training patches of the user's own images. The copy is scored on the validation
patches against float32 with the paper's PSNR; it is kept as ``int8.onnx`` in the model folder
(see :mod:`carekit.int8`) only where it loses at most :data:`~carekit.int8.TOLERANCE_DB`. Eight
bits lose most in the full-resolution feature maps next to the output (and the input), so where
quantizing every convolution costs more, the outermost ones stay in float32, a few more at a
time (:data:`FLOAT_ENDS`). The check goes into ``config.json`` (``int8``) either way.

Only networks whose prediction is the plain tiled pass of clean-target training get a copy:
modes with their own network pass, probabilistic networks (their scale is not scored) and
training without clean targets (nothing to score against) do not.
"""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from carekit.baselines import mean_psnr
from carekit.int8 import FILE, INPUT, OUTPUT, TOLERANCE_DB, export, fingerprint
from carekit.io import write_json
from carekit.margin import planes, scored_planes
from carekit.model import CARE, CONFIG
from carekit.registry import mode_of
from carekit.trainer import Callback, Trainer

# convolutions left in float32 (next to the input, next to the output), tried in turn: on the demo data
# at 10 photons, quantizing all 11 convolutions lost 0.17 dB, keeping the output's last two in float32
# 0.01 dB, the input's first two alone 0.17 dB
FLOAT_ENDS = ((0, 0), (0, 1), (0, 2), (1, 2), (2, 2), (2, 3), (3, 3))
CALIBRATION_BATCHES = 4  # training batches whose activations set the int8 ranges
CALIBRATION_SEED = 8


def why_not(trainer: Trainer) -> str | None:
    """Why this training gets no int8 copy, or None."""
    care = trainer.care
    if not trainer.config.train.int8:
        return "turned off (--no-int8)"
    if type(care).network_pass is not CARE.network_pass or type(care).run_net is not CARE.run_net:
        return f"{care.config.mode} models predict through a network pass of their own"
    if care.config.net.probabilistic:
        return "probabilistic networks keep their precision (their scale is not checked in int8)"
    if mode_of(care.config.mode).targets != "clean":
        return "trained without clean targets: nothing to check an int8 copy against"
    if trainer.val is None or trainer.val[1] is None or len(trainer.val[0]) < 1:
        return "no validation patches to check an int8 copy on"
    try:
        import onnx  # noqa: F401
        import onnxruntime.quantization  # noqa: F401
    except ImportError:
        return "needs the onnx and onnxruntime packages"
    return None


class Batches:
    """ONNX Runtime's calibration reader over a list of input batches."""

    def __init__(self, batches: list[np.ndarray]) -> None:
        self.batches = iter(batches)

    def get_next(self) -> dict | None:
        x = next(self.batches, None)
        return None if x is None else {INPUT: np.ascontiguousarray(x, np.float32)}

    def rewind(self) -> None:  # ONNX Runtime's reader interface; one pass is enough here
        pass


def run(path: Path, x: np.ndarray, batch: int) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    outs = [session.run([OUTPUT], {INPUT: np.ascontiguousarray(x[i : i + batch], np.float32)})[0]
            for i in range(0, len(x), batch)]  # fmt: skip
    return np.concatenate(outs)


def quantized(source: Path, target: Path, calibration: list[np.ndarray], keep_float: list[str]) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    logging.disable(logging.WARNING)  # its advice to pre-process the graph, logged on every call
    try:
        quantize_static(str(source), str(target), Batches(calibration), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=keep_float)  # fmt: skip
    finally:
        logging.disable(logging.NOTSET)


def ends(convs: list[str], first: int, last: int, members: int = 1) -> list[str]:
    """The first ``first`` and last ``last`` of ``convs`` (in graph order), in each of ``members``
    networks that run one after the other (independent channels)."""
    size = len(convs) // members
    groups = [convs[i * size : (i + 1) * size] for i in range(members)]
    return [name for g in groups for name in g[:first] + g[len(g) - last :]]


def build(trainer: Trainer) -> dict:
    """Quantize the trained network, score it on validation, keep it where it holds (see module doc)."""
    import onnx

    care, t = trainer.care, trainer.config.train
    x, truth, scored, boxes = scored_planes(trainer.val)
    if not scored.any():
        return {"kept": False, "skipped": "its validation targets hold no structure to score against"}
    batches = trainer.sampler.batches([t.seed, CALIBRATION_SEED], CALIBRATION_BATCHES, t.batch_size)
    calibration = [np.asarray(b[0], np.float32) for b in itertools.islice(batches, CALIBRATION_BATCHES)]
    c = care.config.n_channel_out

    def score(out: np.ndarray) -> float:
        return mean_psnr(planes(out[:, :c])[scored], truth[scored], boxes)

    report: dict = {"kept": False, "tolerance_db": TOLERANCE_DB, "patches": len(x)}
    with tempfile.TemporaryDirectory(prefix=".int8-", dir=trainer.dir) as tmp:
        source = Path(tmp) / "float32.onnx"
        export(care.net, (1, *x.shape[1:]), source)
        nodes = onnx.load(str(source)).graph.node
        convs = [n.name for n in nodes if n.op_type in ("Conv", "ConvTranspose")]
        blend = [n.name for n in nodes if "/blend/" in n.name]  # the filter blend stays in float
        members = len(getattr(care.net, "members", ())) or 1  # one U-Net per channel: each has its ends
        reference = score(run(source, x, t.batch_size))
        report.update({"psnr_float32": reference, "convolutions": len(convs)})
        for first, last in FLOAT_ENDS:
            if first + last >= len(convs):
                break
            target = Path(tmp) / f"int8-{first}-{last}.onnx"
            quantized(source, target, calibration, ends(convs, first, last, members) + blend)
            psnr = score(run(target, x, t.batch_size))
            if "psnr_int8" not in report or psnr > report["psnr_int8"]:
                report.update({"psnr_int8": psnr, "gap_db": reference - psnr, "float_convolutions": first + last})
            if reference - psnr <= TOLERANCE_DB:
                os.replace(target, trainer.dir / FILE)
                report.update({"kept": True, "weights": fingerprint(care.net)})
                return report
    (trainer.dir / FILE).unlink(missing_ok=True)  # a copy from an earlier run of this folder
    return report


class Int8Check(Callback):
    """Makes and checks the int8 copy once the best weights are back in the model (after the margin).

    The copy only speeds prediction up: where export or quantization fails, the trained model is
    kept without one and the report says why."""

    def on_finish(self, trainer: Trainer) -> None:
        reason = why_not(trainer)
        if reason is None:
            try:
                report = build(trainer)
            except Exception as e:  # ONNX's and ONNX Runtime's own exception types
                (trainer.dir / FILE).unlink(missing_ok=True)
                first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
                report = {"kept": False, "skipped": f"quantization failed ({first})"}
        else:
            (trainer.dir / FILE).unlink(missing_ok=True)
            report = {"kept": False, "skipped": reason}
        trainer.care.config.int8 = report
        write_json(trainer.dir / CONFIG, trainer.care.config.to_dict())
