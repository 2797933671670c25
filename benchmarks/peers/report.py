"""Tables from the finished jobs: speed and memory with carekit / peer ratios, quality per photon level."""

from __future__ import annotations

from collections.abc import Callable

from workloads import Job

PEERS = ("csbdeep", "careamics")
# per workload: (unit shown, result key); higher is better for all of them
SPEED_METRICS = {
    "throughput": [("steps/s", "steps_per_s"), ("Mpx/s", "mpx_per_s")],
    "predict": [("Mpx/s", "mpx_per_s")],
}


def markdown(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table (also what the console shows)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def cell(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def value_of(job: Job | None, key: str) -> float | None:
    if job is None or job.result is None or "error" in job.result:
        return None
    return job.result.get(key)


def by_row(jobs: list[Job], workloads: set[str]) -> dict[str, dict[str, Job]]:
    """Jobs grouped as ``{row label: {tool: job}}`` in the order they ran."""
    rows: dict[str, dict[str, Job]] = {}
    for j in jobs:
        if j.workload in workloads:
            rows.setdefault(j.row, {})[j.tool] = j
    return rows


def ratio_line(label: str, jobs: dict[str, Job], tools: list[str], get: Callable[[Job | None], float | None]) -> dict:
    """One line: every tool's value and carekit's ratio to each peer."""
    values = {t: get(jobs.get(t)) for t in tools}
    failed = [t for t in tools if jobs.get(t) and jobs[t].result and "error" in jobs[t].result]
    ours = values.get("carekit")
    ratios = {p: ours / values[p] if ours and values.get(p) else None for p in PEERS if p in tools}
    return {"row": label, "values": values, "ratios": ratios, "failed": failed}


def speed_lines(jobs: list[Job], tools: list[str], workloads: set[str]) -> list[dict]:
    """Training steps/s and Mpx/s, prediction Mpx/s (higher is better)."""
    lines = []
    for workload, metrics in SPEED_METRICS.items():
        if workload in workloads:
            for row, per_tool in by_row(jobs, {workload}).items():
                for unit, key in metrics:
                    lines.append(ratio_line(f"{row}: {unit}", per_tool, tools, lambda j, k=key: value_of(j, k)))
    return lines


def memory_lines(jobs: list[Job], tools: list[str]) -> list[dict]:
    """Peak resident memory (MB) of every worker process that ran, and on a GPU its peak allocated
    memory (lower is better).

    Child processes (CAREamics' data loader) are forks that share most pages with the worker, so
    their peaks are kept in the JSON (``children_peak_rss_mb``) but not added here.
    """
    rows: dict[str, dict[str, Job]] = {}
    for j in jobs:
        rows.setdefault(f"{j.workload}, {j.row}" if j.workload in ("quality", "n2v") else j.row, {})[j.tool] = j
    lines = [ratio_line(f"{r}: peak MB", per, tools, lambda j: value_of(j, "peak_rss_mb")) for r, per in rows.items()]
    gpu = [ratio_line(f"{r}: GPU peak MB", per, tools, lambda j: value_of(j, "gpu_peak_mb")) for r, per in rows.items()]
    return lines + [g for g in gpu if any(v is not None for v in g["values"].values())]


def tool_table(lines: list[dict], tools: list[str]) -> str:
    peers = [p for p in PEERS if p in tools and "carekit" in tools]
    header = ["", *tools, *[f"carekit / {p}" for p in peers]]
    rows = []
    for line in lines:
        values = [("failed" if t in line["failed"] else cell(line["values"][t])) for t in tools]
        rows.append([line["row"], *values, *[cell(line["ratios"].get(p)) for p in peers]])
    return markdown(header, rows)


def quality_table(level: dict, tools: list[str]) -> str:
    """Methods as rows (input, NLM, each tool), then carekit's PSNR gain over each peer."""
    header = ["method", "PSNR (dB)", "SSIM", "NRMSE", "training steps"]
    rows = []
    for name, s in level["scores"].items():
        if "error" in s:
            rows.append([name, "failed", "", "", ""])
            continue
        rows.append([name, cell(s["psnr"]), cell(s["ssim"], 3), cell(s["nrmse"], 4), s.get("steps", "")])
    for key, label in (("gain_db", "carekit"), ("tta_gain_db", "carekit tta")):
        for p in PEERS:
            gain = level.get(key, {}).get(p)
            if gain is not None:
                rows.append([f"{label} − {p} (dB)", cell(gain), "", "", ""])
    for label, gain in level.get("nlm_gain_db", {}).items():
        rows.append([f"{label} − NLM (dB)", cell(gain), "", "", ""])
    gap = level.get("float32_gap_db")
    if gap is not None:
        rows.append(["carekit float32 − default (dB)", cell(gap, 3), "", "", ""])
    for peer, seconds in level.get("carekit_seconds_to_peer", {}).items():
        reached = f"{seconds:g} s" if seconds is not None else "not within the budgets tried"
        rows.append([f"carekit's training time to {peer}'s PSNR", reached, "", "", ""])
    return markdown(header, [[str(c) for c in r] for r in rows])
