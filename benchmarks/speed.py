"""Training and prediction speed, float32 next to the fast default, in one run.

    python benchmarks/speed.py            # full run (about 7 minutes on 2 CPU cores)
    python benchmarks/speed.py --quick    # smaller sizes, for a smoke test

Prints a table and writes ``benchmarks/results/speed-<device>.json``. Rows:
- training ms/step of the default 2D network (batch 16, 64x64 patches; also the CARE paper's
  kernel-5 network), optimizer step only (median of five blocks) and the whole loop (patch
  sampling in its background thread included);
- prediction throughput of the default 2D network on 2048x2048 (best of three) and of the
  default 3D network on 64x512x512 (normalisation, tiling and de-normalisation included);
- the PSNR gap between the fast default and float32 on the demo data, with one model
  trained for ``--train-seconds`` and run both ways;
- in the fast default, the 2D rows again with the U-Net's plain upsample + concatenate next
  to its phase convolution (``UNet.phase_upsampling``), so that change is measured in one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import carekit
from carekit import demo
from carekit.config import Config
from carekit.data.pairs import ImagePair
from carekit.engine import choose_engine
from carekit.model import CARE
from carekit.sampling import PatchSampler
from carekit.trainer import Trainer

RESULTS = Path(__file__).parent / "results"
PAPER_NET = {"kernel_size": 5, "batch_norm": False, "residual": True}  # the CARE paper's 2D network
# the default network as training sets it where the residual is off (the demo's 10 photons)
DEFAULT_NET = {"batch_norm": True, "residual": False}


def step_ms(precision: str, steps: int, net: dict | None = None, phase: bool = True) -> float:
    """Optimizer steps alone: batch 16 of 64x64 patches already in memory (default network unless ``net``).

    The median over five blocks of ``steps`` steps: other tenants of a shared machine slow
    single blocks by 10-20 %.
    """
    torch.manual_seed(0)
    care = CARE(Config(axes="YX", net=net or DEFAULT_NET))
    care.net.phase_upsampling = phase
    rng = np.random.default_rng(0)
    img = rng.gamma(2, 1, (1, 256, 256)).astype(np.float32)
    sampler = PatchSampler([ImagePair("r", img, img)], (64, 64), val_fraction=0.0, threshold=0.0)
    with tempfile.TemporaryDirectory() as d:
        trainer = Trainer(care, sampler, Path(d), choose_engine("auto", precision))
        x, y = sampler.batch(rng, 16)
        for _ in range(3):
            trainer.step(x, y)
        blocks = []
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(steps):
                trainer.step(x, y)
            blocks.append((time.perf_counter() - start) / steps * 1000)
        return float(np.median(blocks))


def loop_ms(precision: str, seconds: float) -> float:
    """The whole training loop on the demo data: ms per step, sampling and validation included."""
    truth, noisy = demo.make_data()
    with tempfile.TemporaryDirectory() as d:
        carekit.train(
            noisy,
            truth,
            "SYX",
            Path(d) / "m",
            epochs=1000,
            steps_per_epoch=25,
            time_budget=seconds,
            precision=precision,
            progress=False,
        )
        rows = (Path(d) / "m" / "history.csv").read_text().splitlines()[1:]
    steps = sum(int(r.split(",")[1]) for r in rows)
    return seconds * 1000 / steps


def predict_mvox_s(model: CARE, shape: tuple[int, ...], axes: str, precision: str, repeats: int = 1) -> float:
    """Best of ``repeats`` whole predictions (normalisation and tiling included)."""
    img = np.random.default_rng(0).gamma(2, 100, shape).astype(np.float32)
    model.predict(img[(slice(0, 8),) * (len(shape) - 2) + (slice(0, 256), slice(0, 256))], axes, precision=precision)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict(img, axes, precision=precision)
        best = max(best, img.size / (time.perf_counter() - start) / 1e6)
    return best


def upsampling_rows(precision: str, steps: int, shape: tuple[int, int], repeats: int) -> dict:
    """The default 2D network with plain upsample + concat, then with phase upsampling (the default)."""
    out = {}
    for phase in (False, True):
        model = CARE(Config(axes="YX", net=DEFAULT_NET))
        model.net.phase_upsampling = phase
        out["phase" if phase else "plain"] = {
            "train_step_ms": step_ms(precision, steps, phase=phase),
            "predict_2d_mpx_s": predict_mvox_s(model, shape, "YX", precision, repeats=repeats),
        }
    return out


def precision_gap(seconds: float, fast: str) -> dict:
    truth, noisy = demo.make_data()
    test = (demo.TEST_SLICES, demo.TEST_ROWS)
    with tempfile.TemporaryDirectory() as d:
        model = carekit.train(
            noisy[:, demo.TRAIN_ROWS],
            truth[:, demo.TRAIN_ROWS],
            "SYX",
            Path(d) / "m",
            epochs=1000,
            steps_per_epoch=50,
            time_budget=seconds,
            progress=False,
        )
    out = {}
    for p in ("float32", fast):
        out[p] = demo.scores(model.predict(noisy[test], "SYX", precision=p), truth[test])["psnr"]
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--train-seconds", type=float, default=60.0)
    a = ap.parse_args(argv)
    fast = choose_engine("auto", "auto")
    precisions = ["float32", fast.precision] if fast.precision != "float32" else ["float32"]
    shape2d, shape3d = ((512, 512), (16, 128, 128)) if a.quick else ((2048, 2048), (64, 512, 512))
    repeats = 1 if a.quick else 3
    rows = []
    for p in precisions:
        torch.manual_seed(0)
        row = {"precision": p, "train_step_ms": step_ms(p, 5 if a.quick else 20)}
        row["train_step_ms_paper_net"] = step_ms(p, 5 if a.quick else 20, PAPER_NET)
        row["train_loop_ms"] = loop_ms(p, 10 if a.quick else 30)
        model2d, model3d = CARE(Config(axes="YX", net=DEFAULT_NET)), CARE(Config(axes="ZYX", net=DEFAULT_NET))
        row["predict_2d_mpx_s"] = predict_mvox_s(model2d, shape2d, "YX", p, repeats=repeats)
        row["predict_3d_mvox_s"] = predict_mvox_s(model3d, shape3d, "ZYX", p)
        rows.append(row)
        print(json.dumps(row), flush=True)
    upsampling = upsampling_rows(fast.precision, 5 if a.quick else 10, shape2d, repeats)
    gap = precision_gap(10 if a.quick else a.train_seconds, fast.precision)
    if fast.device.type == "cuda":
        device = f"{torch.cuda.get_device_name()}, {fast.describe()}"
    else:
        device = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {fast.describe()}"
    print(f"\ncarekit {carekit.__version__} on {device}")
    print(f"{'':34s}" + "".join(f"{p:>12s}" for p in precisions))
    labels = {
        "train_step_ms": "train ms/step (batch 16, 64x64)",
        "train_step_ms_paper_net": "  same, the paper's kernel-5 network",
        "train_loop_ms": "train loop ms/step (with sampling)",
        "predict_2d_mpx_s": f"predict 2D {'x'.join(map(str, shape2d))} Mpx/s",
        "predict_3d_mvox_s": f"predict 3D {'x'.join(map(str, shape3d))} Mvox/s",
    }
    for key, label in labels.items():
        print(f"{label:34s}" + "".join(f"{r[key]:12.2f}" for r in rows))
    print("demo PSNR, one model run both ways: " + ", ".join(f"{k} {v:.3f} dB" for k, v in gap.items()))
    print(f"upsampling ({fast.precision}): " + "; ".join(
        f"{k} {v['train_step_ms']:.1f} ms/step, {v['predict_2d_mpx_s']:.2f} Mpx/s" for k, v in upsampling.items()
    ))  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    name = "speed-quick.json" if a.quick else f"speed-{fast.device.type}.json"
    payload = {"device": device, "torch": torch.__version__, "rows": rows, "demo_psnr": gap, "python": sys.version}
    payload["upsampling"] = upsampling
    (RESULTS / name).write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
