"""carekit next to CSBDeep and CAREamics: training and prediction speed, memory, quality at equal time.

    .venv/bin/python benchmarks/peers/run.py            # everything (see README.md for the time)
    .venv/bin/python benchmarks/peers/run.py --quick    # tiny sizes, a few steps: a smoke test
    .venv/bin/python benchmarks/peers/run.py --only predict --tools carekit,csbdeep
    python3 benchmarks/peers/run.py --here --label gpu --tools carekit,careamics   # tools installed here

The peers run in their own virtual environments (created under ``--venvs`` when missing, never
among carekit's dependencies); every job runs in a fresh worker process of its tool, one after
the other. With ``--here`` every tool runs in the running Python instead (a machine where they
are all installed, such as a GPU machine without package access). Prints the tables and writes
``benchmarks/results/peers.json`` and ``peers.md`` (``peers-quick.*`` with ``--quick``;
``peers-<workloads>-<tools>.*`` for a partial run; ``--label`` adds a suffix).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import envs
import report
import workloads
from cpulock import cpu_lock
from workloads import Job

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results"
WORKLOADS = ("throughput", "predict", "quality", "memory", "n2v")
TOOLS = ("carekit", "csbdeep", "careamics")
JOB_TIMEOUT = 3600  # seconds; a hung worker is recorded as failed and the run goes on


def choices(values: list[str], allowed: tuple[str, ...], what: str) -> list[str]:
    """Comma lists and repeated options, flattened, checked and kept in ``allowed``'s order."""
    chosen = {v.strip() for value in values for v in value.split(",") if v.strip()}
    unknown = chosen - set(allowed)
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(sorted(unknown))}; choose from {', '.join(allowed)}")
    return [a for a in allowed if a in chosen]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", default=[], help=f"workloads ({', '.join(WORKLOADS)}); default all")
    ap.add_argument("--tools", default=",".join(TOOLS), help="comma list of tools (default all)")
    ap.add_argument("--budget", type=float, default=240.0, help="training seconds per tool in the quality runs")
    ap.add_argument("--photons", default="10,100", help="peak photon levels of the quality data (comma list)")
    ap.add_argument("--image", type=Path, help="n2v: a clean image (TIFF, 2D planes) to use instead of the demo stack")
    ap.add_argument("--carekit-budgets", default="30,45,60,90",
                    help="carekit also trains for these seconds: its time to reach each peer's quality")  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="tiny sizes and a few steps (smoke test)")
    ap.add_argument("--venvs", type=Path, default=envs.DEFAULT_VENVS, help="where the peers' venvs live")
    ap.add_argument("--here", action="store_true", help="run every tool in this Python (no venvs)")
    ap.add_argument("--label", default="", help="suffix of the result files (e.g. gpu)")
    a = ap.parse_args(argv)
    a.only = choices(a.only or list(WORKLOADS), WORKLOADS, "workload")
    a.tools = choices([a.tools], TOOLS, "tool")
    a.photons = [float(p) for p in a.photons.split(",")]
    a.carekit_budgets = tuple(float(b) for b in a.carekit_budgets.split(",") if b.strip())
    if a.quick:
        a.budget = min(a.budget, 10.0)
    return a


def tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def run_job(job: Job, python: Path, folder: Path, index: int) -> None:
    """Run one job in a fresh worker process of its tool; its result (or error) lands in ``job.result``."""
    spec, out, log = (folder / f"job{index:02d}.{ext}" for ext in ("json", "result.json", "log"))
    spec.write_text(json.dumps(job.spec))
    worker = HERE / f"worker_{job.tool}.py"
    print(f"[{job.workload}] {job.row}: {job.tool} ...", end=" ", flush=True)
    start = time.perf_counter()
    try:
        with log.open("w") as f:
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            command = [str(python), str(worker), str(spec), str(out)]
            done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=JOB_TIMEOUT)
            code = done.returncode
    except subprocess.TimeoutExpired:
        code = "timeout"
    if code == 0 and out.exists():
        job.result = json.loads(out.read_text())
        print(f"{time.perf_counter() - start:.0f} s", flush=True)
    else:
        job.result = {"error": f"exit {code}: {tail(log, 3)}"}
        print(f"FAILED (exit {code}); last lines of {log.name}:\n{tail(log)}", flush=True)


def plan(a: argparse.Namespace, folder: Path) -> tuple[list[Job], list[workloads.QualityData]]:
    """The jobs of the chosen workloads (``memory`` alone runs the import and prediction jobs)."""
    sizes = workloads.QUICK if a.quick else workloads.FULL
    jobs: list[Job] = []
    if "memory" in a.only:
        jobs += workloads.idle_jobs(a.tools)
    if "throughput" in a.only:
        jobs += workloads.throughput_jobs(a.tools, sizes)
    if "predict" in a.only or "memory" in a.only:
        jobs += workloads.predict_jobs(a.tools, sizes)
    data = []
    if "quality" in a.only:
        data = [workloads.quality_data(p, folder) for p in a.photons]
        jobs += workloads.quality_jobs(a.tools, data, a.budget, folder, () if a.quick else a.carekit_budgets)
    if "n2v" in a.only:
        n2v = [workloads.n2v_data(p, folder, a.image) for p in a.photons]
        jobs += workloads.n2v_jobs(a.tools, n2v, a.budget, folder)
        data += n2v
    return jobs, data


def cpu_name() -> str:
    """The CPU model from ``/proc/cpuinfo`` (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "python": sys.version.split()[0], "load": os.getloadavg()}


def gpus(jobs: list[Job]) -> list[str]:
    """The GPUs the workers reported having used (none on a CPU run)."""
    return sorted({j.result["gpu"] for j in jobs if j.result and "gpu" in j.result})


def warn_if_busy() -> None:
    """Timings need an idle machine: with a core taken, 2 OpenMP threads (torch) can slow down 10-50x."""
    load = os.getloadavg()[0]
    if load >= 0.5:
        print(f"warning: load average {load:.1f} before the run; timings will be distorted", flush=True)


def summarise(a: argparse.Namespace, jobs: list[Job], data: list[workloads.QualityData]) -> dict:
    """Everything the tables show, plus every job's raw result."""
    speed = report.speed_lines(jobs, a.tools, set(a.only))
    memory = report.memory_lines(jobs, a.tools) if "memory" in a.only else []
    levels = [workloads.score_level(d, [j for j in jobs if j.spec.get("test_low") == str(d.test_low)]) for d in data]
    versions = {j.tool: j.result["versions"] for j in jobs if j.result and "versions" in j.result}
    return {
        "quick": a.quick,
        "machine": {**machine(), "gpus": gpus(jobs)},
        "options": {"only": a.only, "tools": a.tools, "budget_s": a.budget, "photons": a.photons},
        "versions": versions,
        "speed": speed,
        "memory": memory,
        "quality": levels,
        "jobs": [vars(j) for j in jobs],
    }


def render(summary: dict, tools: list[str]) -> str:
    """The markdown report: speed and memory tables, then one quality table per photon level."""
    quick = " (smoke run: sizes tiny, numbers meaningless)" if summary["quick"] else ""
    parts = [
        f"# carekit and its peers{quick}",
        "",
        f"Machine: {summary['machine']['cpu']}, "
        f"{summary['machine']['cores']} cores"
        + "".join(f"; GPU: {g}" for g in summary["machine"].get("gpus", []))
        + f". Versions: {json.dumps(summary['versions'])}",
    ]
    if summary["speed"]:
        parts += ["", "## Speed (higher is better)", "", report.tool_table(summary["speed"], tools)]
    if summary["memory"]:
        parts += ["", "## Peak memory of each worker process (lower is better)", ""]
        parts += [report.tool_table(summary["memory"], tools)]
    for level in summary["quality"]:
        budget = summary["options"]["budget_s"]
        parts += ["", f"## {level['title']}: {level['photons']:g} photons peak, {budget:g} s of training each", ""]
        parts += [report.quality_table(level, tools)]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    pythons = {t: Path(sys.executable) for t in a.tools} if a.here else envs.ensure(a.tools, a.venvs)
    warn_if_busy()
    with tempfile.TemporaryDirectory(prefix="carekit-peers-") as d, cpu_lock(exclusive=True):
        folder = Path(d)
        jobs, data = plan(a, folder)
        print(f"{len(jobs)} jobs, one at a time; workers' logs in {folder}", flush=True)
        for i, job in enumerate(jobs):
            run_job(job, pythons[job.tool], folder, i)
        summary = summarise(a, jobs, data)
    text = render(summary, a.tools)
    print("\n" + text)
    RESULTS.mkdir(exist_ok=True)
    full = set(a.only) == set(WORKLOADS) and set(a.tools) == set(TOOLS)
    name = "peers-quick" if a.quick else "peers" if full else "-".join(["peers", *a.only, *a.tools])
    name += f"-{a.label}" if a.label else ""
    (RESULTS / f"{name}.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    (RESULTS / f"{name}.md").write_text(text)
    print(f"wrote {RESULTS / name}.json and .md")


if __name__ == "__main__":
    main()
