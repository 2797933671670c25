"""What this machine gives the process: CPU features, cores, memory, and how busy it is.

Nothing here assumes a CPU feature: flags are read from ``/proc/cpuinfo`` where there is one,
cores from the affinity mask and the cgroup CPU quota a container or cluster job runs under,
memory from the tightest cgroup limit, and the load of *other* processes from the CPU time they
took over a short interval. Every reader takes its source as an argument, so tests can hand it
any machine.
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import psutil

CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_MEMORY = {"v2": ("memory.max", "memory.current"), "v1": ("memory.limit_in_bytes", "memory.usage_in_bytes")}
UNLIMITED = 2**60  # cgroup v1 writes "no limit" as a number near 2**63
NATIVE_BF16_X86 = ("avx512_bf16", "amx_bf16")  # oneDNN's bfloat16 kernels; without them it emulates


@dataclass(frozen=True)
class Cpu:
    """The processor as the OS describes it. ``flags`` is None where the OS does not list them."""

    model: str
    arch: str
    flags: frozenset[str] | None

    def native_bf16(self) -> bool | None:
        """True where bfloat16 arithmetic is native, False where it would be emulated, None if unknown.

        On x86, oneDNN runs bfloat16 natively with AVX-512 BF16 or AMX; on any other AVX-512 CPU
        it emulates it (slower than float32). Elsewhere the flags do not settle it.
        """
        if self.flags is None or self.arch not in ("x86_64", "AMD64", "i686"):
            return None
        return any(f in self.flags for f in NATIVE_BF16_X86)


def parse_cpuinfo(text: str, arch: str) -> Cpu:
    """A :class:`Cpu` from the text of ``/proc/cpuinfo`` (x86 ``flags``, Arm ``Features``)."""
    model, flags = None, None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if model is None and key in ("model name", "hardware", "cpu model"):
            model = value.strip()
        elif flags is None and key in ("flags", "features"):
            flags = frozenset(value.split())
    return Cpu(model or platform.processor() or arch, arch, flags)


@lru_cache(maxsize=1)
def this_cpu() -> Cpu:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return Cpu(platform.processor() or platform.machine(), platform.machine(), None)
    return parse_cpuinfo(text, platform.machine())


# -- cgroups: memory and CPU limits of this process ---------------------------------------------
def cgroup_dirs(root: Path, membership: str, controller: str) -> Iterator[tuple[str, Path]]:
    """``(version, folder)`` of every cgroup of ``controller`` that holds this process, innermost
    first up to the hierarchy's root (cgroup v2 at ``root`` or under ``unified``; v1 under
    ``root/<controller>``). ``membership`` is the text of ``/proc/self/cgroup``."""
    for line in membership.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            version, base = "v2", root if (root / "cgroup.controllers").exists() else root / "unified"
        elif controller in controllers.split(","):
            version, base = "v1", root / controller
        else:
            continue
        folder = base / path.strip("/")
        for d in (folder, *folder.parents):
            yield version, d
            if d == base:
                break


def membership_text(membership: str | None) -> str:
    if membership is not None:
        return membership
    try:
        return Path("/proc/self/cgroup").read_text()
    except OSError:
        return ""


def cgroup_headroom(root: Path, membership: str) -> int | None:
    """Bytes left under the tightest memory limit of this process's cgroups and their parents
    (None: no limit)."""
    headroom = None
    for version, d in cgroup_dirs(root, membership, "memory"):
        limit_file, usage_file = CGROUP_MEMORY[version]
        try:
            limit = (d / limit_file).read_text().strip()
            limited = limit != "max" and int(limit) < UNLIMITED
            left = max(0, int(limit) - int((d / usage_file).read_text())) if limited else None
        except (OSError, ValueError):
            left = None
        if left is not None:
            headroom = left if headroom is None else min(headroom, left)
    return headroom


def available_memory(root: Path = CGROUP_ROOT, membership: str | None = None) -> int:
    """Bytes this process can still allocate: the system's available memory, within its cgroups' limits.

    A job on a shared cluster node sees the whole node's free memory but may use only its own limit.
    """
    free = psutil.virtual_memory().available
    headroom = cgroup_headroom(root, membership_text(membership))
    return free if headroom is None else min(free, headroom)


def cpu_quota(root: Path = CGROUP_ROOT, membership: str | None = None) -> float | None:
    """CPUs' worth of time the tightest cgroup CPU quota allows (``cpu.max`` or ``cfs_quota_us``), None if
    unlimited: a container started with ``--cpus 2`` or a SLURM job with two CPUs gets 2.0."""
    quota = None
    for version, d in cgroup_dirs(root, membership_text(membership), "cpu"):
        try:
            if version == "v2":
                limit, period = (d / "cpu.max").read_text().split()[:2]
            else:
                limit, period = (d / "cpu.cfs_quota_us").read_text(), (d / "cpu.cfs_period_us").read_text()
            cpus = None if limit.strip() in ("max", "-1") else int(limit) / int(period)
        except (OSError, ValueError, ZeroDivisionError):
            cpus = None
        if cpus is not None and cpus > 0:
            quota = cpus if quota is None else min(quota, cpus)
    return quota


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def usable_cores(cpus: int | None = None, quota: float | None = None) -> int:
    """Cores this process may use: its affinity mask, within its cgroup quota (rounded up)."""
    cpus = len(allowed_cpus()) if cpus is None else cpus
    quota = cpu_quota() if quota is None else quota
    return max(1, min(cpus, math.ceil(quota - 1e-9)) if quota else cpus)


def others_load(interval: float = 0.1) -> float:
    """CPUs' worth of time *other* processes took on this process's CPUs over ``interval`` seconds."""
    cpus = allowed_cpus()
    me = psutil.Process()
    before, mine = psutil.cpu_times(percpu=True), me.cpu_times()
    time.sleep(interval)
    after, mine_after = psutil.cpu_times(percpu=True), me.cpu_times()
    busy = 0.0
    for i in cpus:
        if i < len(before) and i < len(after):
            total = sum(after[i]) - sum(before[i])
            busy += max(0.0, total - (idle_time(after[i]) - idle_time(before[i]))) / total if total > 0 else 0.0
    own = (mine_after.user + mine_after.system - mine.user - mine.system) / interval
    return max(0.0, busy - own)


def idle_time(times) -> float:
    return times.idle + getattr(times, "iowait", 0.0)


def free_cores(usable: int | None = None, load: float | None = None) -> int:
    """Cores not kept busy by other processes right now (at least one)."""
    usable = usable_cores() if usable is None else usable
    load = others_load() if load is None else load
    return max(1, min(usable, usable - int(load + 0.5)))


def cache_dir() -> Path:
    """Where carekit keeps what it measured on this machine (``CAREKIT_CACHE``, else the user's cache)."""
    if os.environ.get("CAREKIT_CACHE"):
        return Path(os.environ["CAREKIT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "carekit"
