"""Shared parts of the transfer benchmarks: timed training under the CPU lock, steps, reporting."""

from __future__ import annotations

import csv
import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: cpulock, quality
from cpulock import cpu_lock

RESULTS = Path(__file__).resolve().parents[1] / "results"
EXCLUSIVE = Path("/work/tools/cpu-exclusive")


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def timed_training(spec: dict, folder: Path, exclusive: bool = True) -> dict:
    """Train the model that ``spec`` describes (see ``train_one.py``) into ``folder`` in a process of
    its own that holds the machine's CPU lock exclusively (``/work/tools/cpu-exclusive``, which also
    pauses registered long jobs, where it exists); returns the wall-clock seconds of the training
    call and the steps that fit (from ``history.csv``). Untimed runs (``exclusive`` False, a fixed
    number of steps) share the lock."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    spec_path = folder.parent / f"{folder.name}-spec.json"
    spec_path.write_text(json.dumps({**spec, "model": str(folder)}))
    command = [sys.executable, str(Path(__file__).with_name("train_one.py")), str(spec_path)]
    if exclusive and EXCLUSIVE.exists():
        subprocess.run([str(EXCLUSIVE), *command], check=True)
    else:
        with cpu_lock(exclusive):
            subprocess.run(command, check=True)
    with open(folder / "history.csv") as f:
        rows = list(csv.DictReader(f))
    timing = json.loads((folder / "timing.json").read_text())
    return {"wall_s": round(timing["wall_s"], 1),
            "loop_s": float(rows[-1]["seconds"]) if rows else 0.0, "steps": sum(int(r["steps"]) for r in rows),
            "precision": timing["precision"]}  # fmt: skip


def budget(seconds: float, steps: int | None) -> dict:
    """Training keywords for a wall-clock budget, or for a fixed number of steps (untimed)."""
    if steps:
        return {"epochs": max(1, steps // 50), "steps_per_epoch": min(50, steps)}
    return {"time_budget": seconds}


def summary(margins: dict[str, list[float]]) -> dict:
    """Per run (label -> per-image margins): mean, worst image; over runs: worst mean."""
    runs = {k: {"mean": float(np.mean(v)), "worst_image": float(np.min(v))} for k, v in margins.items()}
    return {"runs": runs, "worst_mean": min(r["mean"] for r in runs.values()),
            "mean_of_means": float(np.mean([r["mean"] for r in runs.values()]))}  # fmt: skip


def write(name: str, payload: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
