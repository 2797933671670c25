"""Two CPU prediction paths side by side, and float32's memory layout, in one run.

    python benchmarks/cpu_paths.py --before /path/to/other/checkout/src --name cpu-paths

``--before`` is the ``src`` folder of another carekit checkout (e.g. ``git worktree add
/tmp/before <commit>``); each path runs in fresh processes, alternating, and the best of
``--rounds`` counts (Mpx/s of ``model.predict`` with the comparison network: depth 2, 32 first
features, residual, no batch norm; 2D 2048x2048 with kernels 3 and 5, 3D 64x512x512 with kernel
3; bfloat16 and float32). The layout part times this checkout's U-Net in float32, contiguous
against channels-last: a training step (forward, backward, Adam) and a forward pass, 2D and 3D.
Writes ``benchmarks/results/<name>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
HERE = Path(__file__).resolve().parents[1] / "src"

PREDICT = r"""
import json, time, numpy as np, torch
torch.set_num_threads(2)
from carekit.config import Config
from carekit.model import CARE
out = {}
for name, axes, k, shape in [("2D k3 2048", "YX", 3, (2048, 2048)), ("2D k5 2048", "YX", 5, (2048, 2048)),
                             ("3D k3 64x512", "ZYX", 3, (64, 512, 512))]:
    net = {"depth": 2, "n_first": 32, "kernel_size": k, "batch_norm": False, "residual": True}
    m = CARE(Config(axes=axes, net=net))
    img = np.random.default_rng(0).random(shape, np.float32)
    small = tuple(slice(0, 16 if i < len(shape) - 2 else 128) for i in range(len(shape)))
    for prec in ("bfloat16", "float32"):
        m.predict(img[small], precision=prec)
        times = []
        for _ in range(2):
            t = time.perf_counter()
            m.predict(img, precision=prec)
            times.append(time.perf_counter() - t)
        out[f"{name} {prec}"] = img.size / min(times) / 1e6
print(json.dumps(out))
"""

LAYOUT = r"""
import json, time, torch
torch.set_num_threads(2)
from carekit.nets.unet import UNet

def run(ndim, channels_last, train, shape, repeats=4):
    torch.manual_seed(0)
    net = UNet(ndim, 1, 1, kernel_size=3, n_first=32)
    x = torch.randn(shape)
    if channels_last:
        layout = torch.channels_last_3d if ndim == 3 else torch.channels_last
        net, x = net.to(memory_format=layout), x.contiguous(memory_format=layout)
    opt = torch.optim.Adam(net.parameters(), 1e-4)
    best = float("inf")
    for i in range(repeats + 1):
        t = time.perf_counter()
        if train:
            opt.zero_grad()
            net.train()(x).abs().mean().backward()
            opt.step()
        else:
            with torch.inference_mode():
                net.eval()(x)
        if i:
            best = min(best, time.perf_counter() - t)
    return best * 1e3

out = {}
for ndim, train, shape in [(2, True, (8, 1, 96, 96)), (2, False, (1, 1, 400, 400)), (3, True, (4, 1, 16, 64, 64)),
                           (3, False, (1, 1, 32, 192, 192))]:
    row = {"contiguous": float("inf"), "channels-last": float("inf")}
    for layout in ("contiguous", "channels-last") * 2:
        row[layout] = min(row[layout], run(ndim, layout == "channels-last", train, shape))
    out[f"{ndim}D {'training step' if train else 'forward'} {list(shape)}, ms"] = row
print(json.dumps(out))
"""


def in_process(code: str, src: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, required=True, help="the src folder of the checkout to compare with")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--name", default="cpu-paths")
    a = ap.parse_args()
    if not (a.before / "carekit").is_dir():
        sys.exit(f"--before {a.before}: no carekit package there; give the src folder of a checkout")
    predict: dict[str, dict[str, list[float]]] = {}
    for _ in range(a.rounds):
        for label, src in (("before", a.before), ("after", HERE)):
            for row, value in in_process(PREDICT, src).items():
                predict.setdefault(row, {}).setdefault(label, []).append(value)
    layout = in_process(LAYOUT, HERE)
    from carekit.hardware import this_cpu

    print(this_cpu().model)
    print("| Mpx/s | before | after | after / before |\n|---|---|---|---|")
    for row, v in predict.items():
        b, f = max(v["before"]), max(v["after"])
        print(f"| {row} | {b:.2f} | {f:.2f} | {f / b:.2f}x |")
    print("\n| float32 | contiguous | channels-last |\n|---|---|---|")
    for row, v in layout.items():
        print(f"| {row} | {v['contiguous']:.0f} | {v['channels-last']:.0f} |")
    RESULTS.mkdir(exist_ok=True)
    payload = {"cpu": this_cpu().model, "before": str(a.before), "predict": predict, "layout": layout}
    (RESULTS / f"{a.name}.json").write_text(json.dumps(payload, indent=1) + "\n")


if __name__ == "__main__":
    main()
