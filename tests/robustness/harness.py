"""Run carekit's command line on a case (a bad input, a fault, a hostile file) and classify what happened.

Each case builds what it needs in its own folder, then ``carekit.cli.main`` runs in this process
(a subprocess would pay torch's import for every case). The outcome is the worst that applies:

- ``data lost``: a file that existed before (an input, a model, the shared world) changed;
- ``traceback``: an exception escaped, or stderr shows a traceback;
- ``silent wrong``: exit status 0 where an error or a warning was due, or a result holds NaN/Inf;
- ``leftover partial``: a ``*.partial*`` file or folder remains;
- ``unclear message``: exit status 2 but not exactly one line ``carekit: error: ...`` matching
  the case's pattern, or an exit status other than 0, 2 and 130;
- ``refused``: an error where the case expects success (a false alarm);
- else ``clear error``, ``warned``, ``ok`` or ``interrupted``, as the case expects.

Used by ``tests/robustness`` (fast cases) and ``benchmarks/robustness.py`` (all cases).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import shutil
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import tifffile

GOOD = ("clear error", "warned", "ok", "interrupted")
BAD = ("data lost", "traceback", "silent wrong", "leftover partial", "unclear message", "refused")


@dataclass
class Case:
    """One thing a careful tester would try.

    ``make(world, folder)`` builds the case's files in ``folder`` and returns the command line;
    ``expect`` is ``"error"`` (exit 2, one line matching ``match``), ``"warn"`` (exit 0 and a
    ``carekit: warning:`` line matching ``match``), ``"ok"`` (exit 0) or ``"interrupted"`` (exit
    130); ``fault`` is a context manager factory active during the run (a full disk, a signal);
    ``changes`` names files in ``folder`` the run may replace or remove on purpose (patterns: ``m/*``);
    ``keep_partial`` allows an
    unfinished OME-Zarr ``.partial`` folder that a rerun resumes. ``runner`` replaces the in-process
    call (slow cases run subprocesses, kill them, compare results); a ``problem`` it returns makes
    the outcome ``silent wrong``.
    """

    name: str
    command: str
    kind: str  # "bad input", "fault" or "hostile"
    make: Callable[..., list[str]]
    expect: str = "error"
    match: str = ""
    fault: Callable[[], contextlib.AbstractContextManager] | None = None
    changes: tuple[str, ...] = ()
    keep_partial: bool = False
    slow: bool = False
    runner: Callable[..., tuple] | None = None  # (world, folder, argv) -> (code, stderr, stdout, problem)


@dataclass
class Result:
    case: Case
    outcome: str
    code: int | None
    stderr: str
    detail: str = ""

    @property
    def good(self) -> bool:
        return self.outcome in GOOD and self.outcome == expected_outcome(self.case)


def expected_outcome(case: Case) -> str:
    return {"error": "clear error", "warn": "warned", "ok": "ok", "interrupted": "interrupted"}[case.expect]


def snapshot(root: Path) -> dict[str, str]:
    """A hash of every file below ``root``, by relative path."""
    out = {}
    for f in sorted(root.rglob("*")):
        if f.is_file() and not f.is_symlink():
            out[str(f.relative_to(root))] = hashlib.sha1(f.read_bytes()).hexdigest()
    return out


def partials(*roots: Path) -> list[Path]:
    return [f for root in roots for f in root.rglob("*") if ".partial" in f.name]


def nonfinite_outputs(folder: Path, before: dict[str, str]) -> list[str]:
    """New or changed TIFF and OME-Zarr results under ``folder`` that hold NaN or Inf."""
    bad = []
    for f in sorted(folder.rglob("*")):
        rel = str(f.relative_to(folder))
        try:
            if f.is_file() and f.suffix.lower() in (".tif", ".tiff") and before.get(rel) != file_hash(f):
                data = tifffile.imread(f)
            elif f.is_dir() and f.suffix == ".zarr" and rel not in before and (f / "0").exists():
                import zarr

                data = zarr.open_array(str(f / "0"), mode="r")[...]
            else:
                continue
        except Exception as e:  # an unreadable result is a wrong one
            bad.append(f"{rel} ({type(e).__name__})")
            continue
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            bad.append(rel)
    return bad


def file_hash(f: Path) -> str:
    return hashlib.sha1(f.read_bytes()).hexdigest()


def strict_json(text: str) -> bool:
    """True where ``text`` is JSON lines without NaN or Infinity (which are not JSON)."""

    def refuse(token: str):
        raise ValueError(token)

    try:
        for line in text.strip().splitlines():
            if line.startswith("{"):
                json.loads(line, parse_constant=refuse)
    except ValueError:
        return False
    return True


def run_case(case: Case, world, folder: Path, world_before: dict[str, str] | None = None) -> Result:
    """Run ``case`` in ``folder`` (``world``: the shared models and images, never to change)."""
    from carekit.cli import main

    folder.mkdir(parents=True, exist_ok=True)
    argv = [str(a) for a in case.make(world, folder)]
    before = snapshot(folder)
    world_before = world_before if world_before is not None else snapshot(world.root)
    if case.runner is not None:
        code, stderr, stdout, problem = case.runner(world, folder, argv)
        result = classify(case, folder, world, before, world_before, code, stderr, stdout, "")
        if problem and result.outcome not in ("data lost", "traceback"):
            return Result(case, "silent wrong", code, stderr, problem)
        return result
    out, err = io.StringIO(), io.StringIO()
    code, escaped = None, ""
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            with case.fault() if case.fault else contextlib.nullcontext():
                code = main(argv)
        except SystemExit as e:  # argparse's exit (older carekit): a status, not a traceback
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:  # anything else escaping main is a traceback the user would see
            escaped = traceback.format_exc()
    return classify(case, folder, world, before, world_before, code, err.getvalue(), out.getvalue(), escaped)


def classify(case, folder, world, before, world_before, code, stderr, stdout, escaped) -> Result:
    def result(outcome: str, detail: str = "") -> Result:
        return Result(case, outcome, code, stderr, detail)

    after = snapshot(folder)
    changed = [k for k, v in before.items() if after.get(k) != v and not any(fnmatch(k, c) for c in case.changes)]
    changed += [f"world/{k}" for k, v in world_before.items() if file_hash_or_none(world.root / k) != v]
    if changed:
        return result("data lost", ", ".join(changed[:3]))
    if escaped or "Traceback" in stderr:
        return result("traceback", (escaped or stderr).strip().splitlines()[-1])
    left = [p for p in partials(folder, world.root) if not (case.keep_partial and p.suffix == ".partial")]
    lines = [line for line in stderr.splitlines() if line.strip()]
    warnings = [line for line in lines if line.startswith("carekit: warning: ")]
    if code == 0:
        wrong = nonfinite_outputs(folder, before)
        if case.command == "evaluate" and not strict_json(stdout):
            wrong.append("stdout is not strict JSON")
        if wrong:
            return result("silent wrong", ", ".join(wrong[:3]))
        if case.expect == "error":
            return result("silent wrong", "exit status 0 where an error was due")
        if case.expect == "warn" and not any(re.search(case.match, w) for w in warnings):
            return result("silent wrong", "no warning matching " + case.match)
    if left:
        return result("leftover partial", ", ".join(str(p.relative_to(p.parents[1])) for p in left[:3]))
    if code == 0:
        return result("warned" if case.expect == "warn" else "ok")
    if code == 130:
        return result("interrupted" if case.expect == "interrupted" else "unclear message", "exit status 130")
    if code != 2:
        return result("unclear message", f"exit status {code}")
    errors = [line for line in lines if line.startswith("carekit: error: ")]
    if len(errors) != 1 or len(errors) + len(warnings) != len(lines) or lines[-1] != errors[0]:
        return result("unclear message", f"{len(lines)} stderr lines: " + " | ".join(lines)[:300])
    if case.expect != "error":
        return result("refused", errors[0])
    if case.match and not re.search(case.match, errors[0], re.IGNORECASE):
        return result("unclear message", f"{errors[0]!r} does not match {case.match!r}")
    return result("clear error")


def file_hash_or_none(f: Path) -> str | None:
    return file_hash(f) if f.is_file() else None


def run_isolated(case: Case, world, folder: Path, world_before: dict[str, str], memory: int, timeout: float) -> Result:
    """:func:`run_case` in a forked child limited to ``memory`` bytes of address space and ``timeout``
    seconds, so that a case that would exhaust the machine (as some do on older carekit) ends as a
    ``traceback`` (killed) instead of ending the run."""
    import os
    import pickle
    import resource
    import select
    import signal

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: run, report, leave without cleanup handlers
        os.close(read)
        try:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
            r = run_case(case, world, folder, world_before)
            payload = (r.outcome, r.code, r.stderr, r.detail)
        except BaseException as e:
            payload = ("traceback", None, "", f"{type(e).__name__}: {e}"[:300])
        with os.fdopen(write, "wb") as f:
            f.write(pickle.dumps(payload))
        os._exit(0)
    os.close(write)
    ready, _, _ = select.select([read], [], [], timeout)
    data = b""
    if ready:
        with os.fdopen(read, "rb") as f:
            data = f.read()
    else:
        os.kill(pid, signal.SIGKILL)
        os.close(read)
    _, status = os.waitpid(pid, 0)
    if data:
        return Result(case, *pickle.loads(data))
    why = f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"no answer in {timeout:.0f} s"
    return Result(case, "traceback", None, "", why + " (the machine's memory or time ran out)")


def run_all(cases: list[Case], world, root: Path, on_result: Callable[[Result], None] | None = None,
            isolate: tuple[int, float] | None = None) -> list[Result]:  # fmt: skip
    """Run every case in its own folder below ``root`` (``isolate``: in forked children with this
    memory limit in bytes and time limit in seconds, see :func:`run_isolated`)."""
    world_before = snapshot(world.root)
    pristine = root / ".pristine-world"
    shutil.copytree(world.root, pristine, symlinks=True)
    results = []
    for i, case in enumerate(cases):
        folder = root / f"{i:03d}-{safe(case.name)}"
        if isolate is not None:
            r = run_isolated(case, world, folder, world_before, *isolate)
        else:
            r = run_case(case, world, folder, world_before)
        results.append(r)
        if snapshot(world.root) != world_before:  # a case destroyed shared data: later cases get it back
            shutil.rmtree(world.root)
            shutil.copytree(pristine, world.root, symlinks=True)
        if on_result is not None:
            on_result(r)
    return results


def safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)[:60]


def table(results: list[Result]) -> str:
    """Outcomes per command, the totals, and every case that went wrong."""
    commands = sorted({r.case.command for r in results})
    columns = [*GOOD, *BAD]
    counts = Counter((r.case.command, r.outcome) for r in results)
    width = max(len(c) for c in [*commands, "command"])
    head = f"{'command':<{width}} " + " ".join(f"{c:>{max(len(c), 5)}}" for c in columns) + "  cases"
    rows = [head, "-" * len(head)]
    for cmd in [*commands, "all"]:
        n = [sum(counts[(c, o)] for c in commands) if cmd == "all" else counts[(cmd, o)] for o in columns]
        rows.append(f"{cmd:<{width}} " + " ".join(f"{v:>{max(len(c), 5)}}" for v, c in zip(n, columns, strict=True))
                    + f"  {sum(n):>5}")  # fmt: skip
    kinds = Counter(r.case.kind for r in results)
    total = Counter(r.outcome for r in results)
    rows.append("")
    rows.append(f"{len(results)} cases ({', '.join(f'{v} {k}' for k, v in sorted(kinds.items()))}): "
                f"{total['clear error']} clear errors, {total['warned']} warnings, {total['ok']} ok, "
                f"{total['interrupted']} interrupted; {total['traceback']} tracebacks, {total['silent wrong']} "
                f"silent wrong results, {total['data lost']} data lost, {total['leftover partial']} leftover "
                f"partial files, {total['unclear message']} unclear messages, {total['refused']} refused")  # fmt: skip
    for r in results:
        if not r.good:
            rows.append(f"  {r.case.command} / {r.case.name}: {r.outcome} (expected "
                        f"{expected_outcome(r.case)}) {r.detail}")  # fmt: skip
    return "\n".join(rows)


@contextlib.contextmanager
def patched(target: str, replacement) -> Iterator[None]:
    """``target`` ("module.attr" or "module.Class.attr") replaced during the block."""
    from unittest import mock

    with mock.patch(target, replacement):
        yield
