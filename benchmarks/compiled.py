"""Eager PyTorch next to ``torch.compile`` (Inductor) for the default 2D network, in one run.

    python benchmarks/compiled.py          # about 3 minutes on 2 CPU cores, compilation included

Rows, each the best of three timings after a warm-up, in the engine carekit picks here:
- prediction of one 2048x2048 image by the inference network (batch norms folded), Mpx/s;
- a training step (batch 16 of 64x64, MAE, fused Adam) of the kernel-3 network with batch
  norm and no residual, and with the residual and no batch norm, ms per step.

Writes ``benchmarks/results/compiled.json``. The compiled graphs use static shapes; the
compilation time is reported separately and not counted in the rows.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from carekit.config import Config
from carekit.engine import choose_engine
from carekit.model import CARE

RESULTS = Path(__file__).parent / "results"


def best_seconds(fn, repeats: int = 3, calls: int = 1) -> float:
    fn()  # warm-up (compiles on the first call)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls)
    return min(times)


def timed_compile(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def prediction(engine, compiled: bool) -> dict:
    torch.manual_seed(0)
    model = CARE(Config(axes="YX", net={"batch_norm": True, "residual": False}))
    model.engine(engine.device.type, engine.precision)
    net = model.inference_net
    net = torch.compile(net, dynamic=False) if compiled else net
    x = engine.tensor(torch.randn(1, 1, 2048, 2048).numpy())

    def run():
        with torch.inference_mode(), engine.autocast():
            return net(x)

    first = timed_compile(run)
    return {"mpx_s": round(x.numel() / best_seconds(run) / 1e6, 3), "first_call_s": round(first, 1)}


def training(engine, compiled: bool, batch_norm: bool) -> dict:
    torch.manual_seed(0)
    model = CARE(Config(axes="YX", net={"batch_norm": batch_norm, "residual": not batch_norm}))
    net = engine.prepare(model.net.train())
    opt = torch.optim.Adam(net.parameters(), lr=4e-4, fused=True)
    forward = torch.compile(net, dynamic=False) if compiled else net
    x, y = (engine.tensor(torch.randn(16, 1, 64, 64).numpy()) for _ in range(2))

    def step():
        with engine.autocast():
            loss = (forward(x).float() - y).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    first = timed_compile(step)
    return {"ms_per_step": round(best_seconds(step, calls=20) * 1000, 1), "first_call_s": round(first, 1)}


def main() -> None:
    engine = choose_engine()
    rows = {}
    for compiled in (False, True):
        name = "compiled" if compiled else "eager"
        rows[name] = {
            "predict_2d_2048": prediction(engine, compiled),
            "train_bn": training(engine, compiled, batch_norm=True),
            "train_residual": training(engine, compiled, batch_norm=False),
        }
        print(name, json.dumps(rows[name]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    payload = {"engine": engine.describe(), "threads": torch.get_num_threads(), "torch": torch.__version__, **rows}
    (RESULTS / "compiled.json").write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
