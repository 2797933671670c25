"""Thread counts: chosen from the free cores, tuned while work runs, restored afterwards."""

import pytest
import torch

from carekit import threads
from carekit.threads import RETRY, ThreadTuner


class Machine:
    """A fake machine: step time per thread count, changed by the test; a clock steps advance."""

    def __init__(self, times: dict[int, float]) -> None:
        self.times, self.now, self.threads = times, 0.0, None

    def clock(self) -> float:
        return self.now

    def set_threads(self, n: int) -> None:
        self.threads = n

    def run(self, tuner: ThreadTuner, steps: int) -> None:
        for _ in range(steps):
            seconds = self.times[tuner.threads]
            self.now += seconds
            tuner.step(seconds)


def test_a_busy_core_sends_training_to_one_thread_and_back_when_it_frees():
    machine = Machine({2: 0.25, 1: 0.45})  # idle: two threads are faster
    tuner = ThreadTuner(2, 2, window=4, set_threads=machine.set_threads, clock=machine.clock)
    machine.run(tuner, 40)
    assert tuner.threads == 2 and machine.threads is None  # nothing to change
    machine.times = {2: 0.85, 1: 0.47}  # another process takes a core: two threads wait for each other
    machine.run(tuner, 12)
    assert tuner.threads == 1 and machine.threads == 1
    machine.run(tuner, int(RETRY / 0.47) + 12)  # a retry of two threads fails: still busy
    assert tuner.threads == 1
    machine.times = {2: 0.25, 1: 0.45}  # the other process ends
    machine.run(tuner, int(8 * RETRY / 0.45) + 20)
    assert tuner.threads == 2 and machine.threads == 2


def test_steady_steps_never_switch_threads():
    machine = Machine({2: 0.2, 1: 0.4})
    tuner = ThreadTuner(2, 2, set_threads=machine.set_threads, clock=machine.clock)
    machine.run(tuner, 500)
    assert tuner.changes == []


def test_a_slowdown_that_fewer_threads_do_not_cure_keeps_the_threads():
    machine = Machine({2: 0.2, 1: 0.4})
    tuner = ThreadTuner(2, 2, window=4, set_threads=machine.set_threads, clock=machine.clock)
    machine.run(tuner, 20)
    machine.times = {2: 0.5, 1: 1.0}  # everything slower (e.g. a hotter CPU): one thread does not help
    machine.run(tuner, 40)
    assert tuner.threads == 2
    assert len(tuner.changes) == 2  # one trial of a single thread, undone, and no more


def test_scope_starts_with_the_free_cores_and_restores_torch(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(threads, "free_cores", lambda usable: 1)
    monkeypatch.setattr(threads, "_measured", None)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    seen = []
    monkeypatch.setattr(torch, "set_num_threads", seen.append)
    with threads.scope() as tuner:
        assert seen[-1] == 1 and tuner is not None and tuner.limit == 2
        with threads.scope() as inner:
            assert inner is tuner  # nested scopes share the outer one's work
    assert seen[-1] == 2
    with threads.scope(shared_cores=True):
        assert seen[-1] == 2  # prediction starts with every core
    with threads.scope(shared_cores=True, tune=False) as untuned:
        assert seen[-1] == 2 and untuned is None  # a resumable restore keeps its threads whatever the load


@pytest.mark.parametrize("value", ["1", "3"])
def test_carekit_threads_fixes_the_count_without_tuning(monkeypatch, value):
    monkeypatch.setenv("CAREKIT_THREADS", value)
    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    seen = []
    monkeypatch.setattr(torch, "set_num_threads", seen.append)
    with threads.scope() as tuner:
        assert tuner is None and seen[-1] == int(value)
