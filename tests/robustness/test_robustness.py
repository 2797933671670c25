"""The robustness suite's fast cases: every bad input, fault and hostile file gets a clear answer.

Each case runs ``carekit.cli.main`` in this process and must end as it expects (see
:mod:`harness`); the table of outcomes is printed at the end of the module. Slow cases (killed
runs, real full disks, large hostile zips, Dask) are in ``benchmarks/robustness.py``.
"""

import pytest
from cases import FAST
from harness import run_case, snapshot, table
from world import build_world

RESULTS = []


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("world"))


@pytest.fixture(scope="module")
def world_hashes(world):
    return snapshot(world.root)


@pytest.fixture(scope="module", autouse=True)
def report(request):
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None and RESULTS:
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            reporter.write_line(table(RESULTS))


def test_at_least_250_distinct_cases():
    from cases import ALL

    assert len(ALL) >= 250, len(ALL)


@pytest.mark.parametrize("case", FAST, ids=lambda c: f"{c.command}: {c.name}")
def test_case(case, world, world_hashes, tmp_path):
    result = run_case(case, world, tmp_path, world_hashes)
    RESULTS.append(result)
    assert result.good, f"{result.outcome} (expected {case.expect}): {result.detail}\n{result.stderr}"
