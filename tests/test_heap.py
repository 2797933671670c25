import os

import numpy as np
import pytest

from carekit import heap

MB = 2**20


def resident() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(heap.glibc() is None, reason="glibc only")
def test_freed_blocks_stay_for_reuse_inside_and_go_back_to_the_system_after():
    block = np.ones(32 * MB)  # 256 MB, every page touched
    before = resident()
    del block
    assert resident() < before - 200 * MB  # outside: a large block is unmapped when freed
    with heap.reuse_freed_memory():
        block = np.ones(32 * MB)
        held = resident()
        del block
        assert resident() > held - 32 * MB  # inside: it stays in the heap for the next tensor
    assert resident() < held - 200 * MB  # after: the free heap is trimmed


class FakeLibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append((param, value))

    def malloc_trim(self, pad):
        self.calls.append(("trim", pad))


def test_nested_scopes_switch_once_and_restore_once_even_after_an_error(monkeypatch):
    libc = FakeLibc()
    monkeypatch.setattr(heap, "glibc", lambda: libc)
    with pytest.raises(RuntimeError), heap.reuse_freed_memory():
        with heap.reuse_freed_memory():
            assert libc.calls == [(heap.M_MMAP_MAX, 0), (heap.M_TRIM_THRESHOLD, heap.HELD)]
        assert len(libc.calls) == 2  # the inner scope's end restores nothing
        raise RuntimeError
    assert libc.calls[2:] == [
        (heap.M_MMAP_MAX, heap.MMAP_MAX_DEFAULT),
        (heap.M_MMAP_THRESHOLD, heap.MMAP_THRESHOLD_SETTLED),
        (heap.M_TRIM_THRESHOLD, 2 * heap.MMAP_THRESHOLD_SETTLED),
        ("trim", 0),
    ]


def test_reuse_can_be_switched_off(monkeypatch):
    heap.glibc.cache_clear()
    monkeypatch.setenv("CAREKIT_HEAP_REUSE", "0")
    try:
        assert heap.glibc() is None
    finally:
        heap.glibc.cache_clear()
