"""The coalescer's early start of a batch that went quiet (`quiet_s`), and its bounds."""

from __future__ import annotations

from bridge.coalescer import Coalescer
from tests.test_bridge_coalescer import REPO_A, REPO_B, event, message


def test_a_quiet_batch_starts_before_its_window() -> None:
    coalescer = Coalescer(window_s=1.0, max_events=100, quiet_s=0.25)
    coalescer.add(REPO_A, message(1), [event("x")], now=0.0)
    assert coalescer.due(now=0.2) == []
    [batch] = coalescer.due(now=0.25)
    assert batch.keys == ["cvmfs/x"]


def test_a_steady_stream_fills_the_whole_window() -> None:
    coalescer = Coalescer(window_s=1.0, max_events=100, quiet_s=0.25)
    for tag in range(10):  # one event every 0.1 s: never quiet for 0.25 s
        coalescer.add(REPO_A, message(tag), [event(f"k{tag}")], now=tag / 10)
        assert coalescer.due(now=tag / 10 + 0.05) == []
    [batch] = coalescer.due(now=1.0)  # the window bounds the wait, quiet or not
    assert len(batch.events) == 10


def test_quiet_is_per_repository() -> None:
    coalescer = Coalescer(window_s=1.0, max_events=100, quiet_s=0.25)
    coalescer.add(REPO_A, message(1), [event("x")], now=0.0)
    coalescer.add(REPO_B, message(2), [event("y")], now=0.2)
    coalescer.add(REPO_A, message(3), [event("z")], now=0.3)
    [b] = coalescer.due(now=0.45)
    assert b.target == REPO_B
    assert coalescer.due(now=0.5) == []
    [a] = coalescer.due(now=0.55)
    assert a.target == REPO_A
    assert a.keys == ["cvmfs/x", "cvmfs/z"]


def test_without_quiet_only_the_window_and_the_count_start_a_batch() -> None:
    coalescer = Coalescer(window_s=1.0, max_events=100)
    coalescer.add(REPO_A, message(1), [event("x")], now=0.0)
    assert coalescer.due(now=0.99) == []
    assert len(coalescer.due(now=1.0)) == 1
