"""Throughput on a busy machine: training and prediction with one core held by another process.

    python benchmarks/busy.py                 # every case (~6 minutes on 2 cores)
    python benchmarks/busy.py --quick         # fewer steps

Each case runs in a fresh process (so OpenMP settings apply as for a user): the default 2D network
trains (8 x 96x96 patches, the training loop with its thread tuning) and restores a 2048x2048
image, on an idle machine and beside one process that spins on one core, started before the
measurement or halfway through it. "fixed 2 threads" is the behaviour before thread tuning
(``CAREKIT_THREADS=2``). Writes ``benchmarks/results/busy.json``; the whole run holds the CPU lock.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cpulock import cpu_lock

RESULTS = Path(__file__).parent / "results"
SPIN = "import time\nend = time.time() + 600\nwhile time.time() < end: pass\n"


def worker(task: str, steps: int, spin_after: float | None) -> dict:
    """Runs in the child process: time training steps or predictions, optionally starting a spinner."""
    import numpy as np
    import torch

    import carekit
    from carekit import threads
    from carekit.trainer import Callback

    rng = np.random.default_rng(0)
    clean = rng.gamma(2.0, 1.0, (4, 256, 256)).astype(np.float32)
    spinner = None

    def spin():
        nonlocal spinner
        spinner = subprocess.Popen([sys.executable, "-c", SPIN])

    if spin_after == 0:
        spin()
        time.sleep(0.5)
    try:
        if task == "train":
            stamps: list[float] = []

            class Clock(Callback):
                def on_step(self, trainer, step, loss):
                    stamps.append(time.perf_counter())
                    if spin_after and spinner is None and step >= steps * spin_after:
                        spin()

            with tempfile.TemporaryDirectory() as d:
                carekit.train(clean + rng.normal(0, 1, clean.shape).astype(np.float32), clean, "SYX", Path(d) / "m",
                              epochs=1, steps_per_epoch=steps, validation_fraction=0, progress=False,
                              callbacks=[Clock()], residual=False)  # fmt: skip
            start = len(stamps) // 2 if spin_after else 5  # after the spinner started, or a warm-up
            timed = stamps[start:]
            rate = (len(timed) - 1) / (timed[-1] - timed[0])
            return {"steps_per_s": rate, "threads_at_end": torch.get_num_threads(), "steps": len(stamps)}
        model = carekit.CARE(carekit.Config(axes="YX", net={"kernel_size": 3, "batch_norm": True, "residual": False}))
        image = rng.gamma(2.0, 1.0, (2048, 2048)).astype(np.float32)
        model.predict(image[:256, :256], "YX")
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            model.predict(image, "YX")
            times.append(time.perf_counter() - start)
        return {"mpx_per_s": image.size / 1e6 / min(times), "seconds": times, "threads": threads.initial_threads()}
    finally:
        if spinner is not None:
            spinner.kill()


def run_case(task: str, steps: int, spin_after: float | None, env: dict) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        code = (f"import sys, json; sys.path.insert(0, {str(Path(__file__).parent)!r}); import busy; "
                f"json.dump(busy.worker({task!r}, {steps}, {spin_after!r}), open({f.name!r}, 'w'))")  # fmt: skip
        subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, **env})
        return json.loads(Path(f.name).read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tasks", default="train,predict", help="comma list: train, predict (default both)")
    ap.add_argument("--name", default="busy")
    ap.add_argument("--env", nargs="*", default=[], metavar="NAME=VALUE", help="environment of every case")
    a = ap.parse_args()
    common = dict(item.split("=", 1) for item in a.env)
    steps, calls = (60, 2) if a.quick else (160, 3)
    from carekit.hardware import this_cpu

    cases = [
        ("train", "idle", None, {}),
        ("train", "busy from the start", 0.0, {}),
        ("train", "busy from halfway", 0.5, {}),
        ("train", "busy from the start, fixed 2 threads", 0.0, {"CAREKIT_THREADS": "2"}),
        ("predict", "idle", None, {}),
        ("predict", "busy from the start", 0.0, {}),
        ("predict", "busy from the start, fixed 2 threads", 0.0, {"CAREKIT_THREADS": "2"}),
        ("predict", "busy from the start, fixed 1 thread", 0.0, {"CAREKIT_THREADS": "1"}),
    ]
    tasks = set(a.tasks.split(","))
    cases = [c for c in cases if c[0] in tasks]
    rows = []
    with cpu_lock(exclusive=True):
        for task, label, spin_after, env in cases:
            result = run_case(task, steps if task == "train" else calls, spin_after, {**common, **env})
            rows.append({"task": task, "case": label, **result})
            print(json.dumps(rows[-1]), flush=True)
    idle = {r["task"]: r.get("steps_per_s") or r.get("mpx_per_s") for r in rows if r["case"] == "idle"}
    print(f"\n{this_cpu().model}, torch threads {os.cpu_count()}")
    print("| task | case | throughput | share of idle |\n|---|---|---|---|")
    for r in rows:
        value = r.get("steps_per_s") or r.get("mpx_per_s")
        unit = "steps/s" if r["task"] == "train" else "Mpx/s"
        print(f"| {r['task']} | {r['case']} | {value:.2f} {unit} | {value / idle[r['task']]:.0%} |")
    RESULTS.mkdir(exist_ok=True)
    payload = {"cpu": this_cpu().model, "env": common, "rows": rows}
    (RESULTS / f"{a.name}.json").write_text(json.dumps(payload, indent=1) + "\n")


if __name__ == "__main__":
    main()
