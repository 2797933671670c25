"""The whole robustness suite: every bad-input, fault and hostile-file case, the slow ones too.

The fast cases also run in the test suite (``tests/robustness``); the slow ones here kill training
and OME-Zarr runs with ``kill -9`` and SIGTERM (and check that the resumed result is bit-identical
to an uninterrupted run), fill a real small filesystem during prediction and training, open a zip
with a 2 GiB member, and break Dask runs. Prints the table of outcomes per command and the counts;
exits 1 if any case ended badly.

    python benchmarks/robustness.py                 # all cases
    python benchmarks/robustness.py --fast          # the test suite's cases only
    python benchmarks/robustness.py --only zarr     # cases whose command or name contains "zarr"
    python benchmarks/robustness.py --json benchmarks/results/robustness.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "robustness"))

from cases import ALL, FAST
from harness import run_all, table
from world import build_world, world_at


def make_world(root: Path, separately: bool):
    """The shared world; built in another process where cases run in forked children (a child forked
    from a process whose OpenMP threads ran would deadlock)."""
    if not separately:
        return build_world(root)
    here = Path(__file__).resolve().parents[1] / "tests" / "robustness"
    code = (
        "import sys, pathlib; sys.path.insert(0, sys.argv[2]); import world; "
        "world.build_world(pathlib.Path(sys.argv[1]))"
    )
    subprocess.run([sys.executable, "-c", code, str(root), str(here)], check=True)
    return world_at(root)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fast", action="store_true", help="only the cases the test suite runs")
    ap.add_argument("--only", help="cases whose command or name contains this text")
    ap.add_argument("--json", help="write every case's outcome here")
    ap.add_argument("--verbose", action="store_true", help="print each case as it ends")
    ap.add_argument("--isolate", type=float, metavar="GB",
                    help="run each case in a forked child limited to this much memory, so that a case that "
                    "exhausts the machine is counted rather than ending the run")  # fmt: skip
    ap.add_argument("--timeout", type=float, default=600, help="with --isolate: seconds a case may take (600)")
    args = ap.parse_args()
    cases = FAST if args.fast else ALL
    if args.only:
        cases = [c for c in cases if args.only in c.command or args.only in c.name]
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="carekit-robustness-") as tmp:
        world = make_world(Path(tmp) / "world", separately=bool(args.isolate))

        def show(r) -> None:
            if args.verbose or not r.good:
                print(f"{r.outcome:>16}  {r.case.command}: {r.case.name}  {r.detail}", flush=True)

        isolate = (int(args.isolate * 2**30), args.timeout) if args.isolate else None
        results = run_all(cases, world, Path(tmp) / "cases", on_result=show, isolate=isolate)
    print(table(results))
    print(f"{len(results)} cases in {time.monotonic() - start:.0f} s on {platform.processor() or platform.machine()}")
    if args.json:
        keys = ("command", "name", "kind", "expect", "slow")
        rows = [{**{k: getattr(r.case, k) for k in keys}, "outcome": r.outcome, "code": r.code, "detail": r.detail}
                for r in results]  # fmt: skip
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0 if all(r.good for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
