"""Signals first (:mod:`heald.engine.signals_first`): during a burst of signals the healings'
steps wait for its first ``healing.signals_first_seconds``, then take turns; outside a burst
they run at once. The gate alone with real threads, then a real Runtime on SQLite."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from heald.engine.signals_first import SignalsFirst
from heald.models import IncidentState, Signal
from tests.conftest import make_config, wait_for


@contextmanager
def burst(gate: SignalsFirst, seconds: float, every: float = 0.01) -> Iterator[list[float]]:
    """Messages stored back to back on another thread for ``seconds``; yields a list that holds
    the monotonic time the last one ended once the block's thread joined it."""
    ended: list[float] = []
    started = threading.Event()

    def send() -> None:
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            with gate.ingesting():
                started.set()
                time.sleep(every / 2)
            time.sleep(every / 2)
        ended.append(time.monotonic())

    t = threading.Thread(target=send)
    t.start()
    started.wait(5)
    try:
        yield ended
    finally:
        t.join()


def run_all(threads: list[threading.Thread], timeout: float) -> None:
    """Start ``threads``, then join each (at most ``timeout`` seconds apiece)."""
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)


def test_outside_a_burst_a_step_runs_at_once() -> None:
    gate = SignalsFirst(5.0)
    t0 = time.monotonic()
    with gate.healing_turn():
        pass
    assert time.monotonic() - t0 < 0.05 and gate.waited == 0
    with gate.ingesting():
        pass
    time.sleep(0.15)  # past the quiet time: the burst is over
    with gate.healing_turn():
        assert not gate.busy()


def test_a_step_waits_for_the_burst_to_end_within_the_hold() -> None:
    gate = SignalsFirst(5.0)
    ran: list[float] = []

    def step() -> None:
        with gate.healing_turn():
            ran.append(time.monotonic())

    with burst(gate, 0.6) as ended:
        time.sleep(0.05)
        steps = [threading.Thread(target=step) for _ in range(5)]
        for t in steps:
            t.start()
        time.sleep(0.3)
        assert ran == []  # held while messages are stored
    for t in steps:
        t.join(5)
    assert len(ran) == 5 and min(ran) >= ended[0]  # each ran only after the last message
    assert gate.waited == 5


def test_a_long_burst_delays_steps_by_the_hold_then_they_take_turns() -> None:
    gate = SignalsFirst(0.3, turn_seconds=0.05)
    running, peak, ran = [0], [0], []
    lock = threading.Lock()

    def step() -> None:
        with gate.healing_turn():
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            time.sleep(0.01)
            with lock:
                running[0] -= 1
                ran.append(time.monotonic())

    t0 = time.monotonic()
    with burst(gate, 2.0) as ended:
        run_all([threading.Thread(target=step) for _ in range(20)], 5)
    assert len(ran) == 20
    assert min(ran) - t0 >= 0.3  # the hold
    assert max(ran) < ended[0]  # never stopped: all ran while the burst went on
    assert peak[0] == 1  # one at a time


def test_a_step_that_waits_holds_the_next_one_back_a_turn_at_most() -> None:
    gate = SignalsFirst(0.0001, turn_seconds=0.05)
    started: list[float] = []

    def slow() -> None:
        with gate.healing_turn():
            started.append(time.monotonic())
            time.sleep(1.0)  # a verification polling its target

    def quick() -> None:
        with gate.healing_turn():
            started.append(time.monotonic())

    with burst(gate, 1.5):
        time.sleep(0.05)
        a = threading.Thread(target=slow)
        a.start()
        time.sleep(0.02)
        b = threading.Thread(target=quick)
        b.start()
        b.join(5)
        a.join(5)
    assert len(started) == 2 and started[1] - started[0] < 0.5


def test_steps_take_their_turns_in_the_order_they_came() -> None:
    gate = SignalsFirst(0.2)
    order: list[int] = []

    def step(i: int) -> None:
        with gate.healing_turn():
            order.append(i)

    with burst(gate, 0.8):
        threads = []
        for i in range(8):
            threads.append(t := threading.Thread(target=step, args=(i,)))
            t.start()
            time.sleep(0.01)
        for t in threads:
            t.join(5)
    assert order == list(range(8))


def test_a_step_inside_a_step_does_not_wait_for_itself() -> None:
    gate = SignalsFirst(0.0001)
    done = threading.Event()

    def outer() -> None:
        with gate.healing_turn(), gate.healing_turn():
            done.set()

    with burst(gate, 0.5):
        time.sleep(0.05)
        t = threading.Thread(target=outer)
        t.start()
        t.join(2)
    assert done.is_set()


def test_hold_zero_turns_the_gate_off_and_negatives_are_refused() -> None:
    gate = SignalsFirst(0.0)
    with gate.ingesting():
        t0 = time.monotonic()
        with gate.healing_turn():
            pass
        assert time.monotonic() - t0 < 0.05 and not gate.busy()
    with pytest.raises(ValueError, match="hold_seconds"):
        SignalsFirst(-1)


# -- a real Runtime -------------------------------------------------------------------------------
def _storm(rt, seconds: float) -> tuple[int, list[IncidentState]]:
    """One alert, then its duplicates every 20 ms for ``seconds`` (as Alertmanager re-sends a
    firing group); returns the incident and its states seen between two messages."""
    alert = Signal(source="alertmanager", service="web", labels={"alertname": "Mystery"}, fingerprint="fp-storm")
    inc = rt.ingest(alert).incident_id
    assert inc is not None
    seen = []
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        assert rt.ingest(alert).incident_id == inc
        seen.append(rt.store.get_incident(inc).state)
        time.sleep(0.02)
    return inc, seen


def test_an_incident_opened_in_a_burst_is_diagnosed_after_it(tmp_path: Path, start_runtime) -> None:
    cfg = make_config(tmp_path, services={"web": {}}, healing={"group_wait_seconds": 0, "signals_first_seconds": 10})
    rt = start_runtime(cfg, run_probes=False)
    inc, seen = _storm(rt, 2.0)
    assert set(seen) == {IncidentState.observing}  # nothing diagnosed while the burst is stored …
    # … and right after it (nothing recognises "Mystery": it is handed to a human)
    wait_for(lambda: rt.store.get_incident(inc).state == IncidentState.needs_attention, timeout=15,
             what="the incident to be diagnosed once the burst ended")
    assert len(rt.store.signals_for(inc)) >= 50  # the diagnosis saw the whole burst


def test_a_burst_longer_than_the_hold_does_not_stop_healing(tmp_path: Path, start_runtime) -> None:
    cfg = make_config(tmp_path, services={"web": {}}, healing={"group_wait_seconds": 0, "signals_first_seconds": 0.3})
    rt = start_runtime(cfg, run_probes=False)
    _, seen = _storm(rt, 4.0)
    assert IncidentState.needs_attention in seen  # healed during the burst, once its hold was over


def test_past_the_hold_the_steps_get_at_most_half_of_the_time() -> None:
    gate = SignalsFirst(0.1)
    spans: list[tuple[float, float, float]] = []  # (start, end, the step's CPU seconds)

    def step() -> None:
        with gate.healing_turn():
            t0, c0 = time.monotonic(), time.thread_time()
            while time.thread_time() - c0 < 0.03:  # a step that computes for 30 ms
                pass
            spans.append((t0, time.monotonic(), time.thread_time() - c0))

    with burst(gate, 3.0) as ended:
        run_all([threading.Thread(target=step) for _ in range(6)], 10)
    assert len(spans) == 6 and max(end for _, end, _ in spans) < ended[0]  # all ran during the burst
    spans.sort()
    for (_, end, cpu), (start, _, _) in zip(spans, spans[1:], strict=False):
        assert start - end >= cpu * 0.9  # a pause as long as the CPU the step before used
