"""Signals first: during a burst of signals, the healings' steps wait, then take turns.

Storing a signal is what a sender waits for (Alertmanager, a webhook, a probe: their requests
time out and are sent again), and a burst of signals is when most incidents open — so that is
when the most healings run. Every healing step is Python code holding the interpreter's lock
for milliseconds at a time (the store's reads, DBOS's checkpoints): with the healings of 500
new incidents running, a webhook message of 100 duplicates that takes 25 ms alone took 0.5–0.7 s
(``bench/ingest.py``, SQLite, batch 100), and even one healing running beside it doubles it.

:class:`SignalsFirst` keeps the two apart: :meth:`SignalsFirst.ingesting` marks each transaction
that stores signals (the one place both :meth:`heald.engine.Runtime.ingest_many` and
``ingest_delivery`` commit them), and every healing step (:func:`yields_to_signals`, applied by
:func:`heald.engine.dbos_steps.healing_step`) and every enqueue of a new healing goes through
:meth:`SignalsFirst.healing_turn`: at once outside a burst; during one, held for its first
``healing.signals_first_seconds`` (as Alertmanager's group_wait holds notifications while a
group fills: the incidents diagnosed after the burst see all its signals), then one after
another with at most half of the time (:data:`HEALING_SHARE`) — a flood of signals slows the
healings down, it never stops them.
The store's write gate does the same for the write lock (:func:`heald.store.db.urgent_writes`).
What is not a step — DBOS starting a workflow, recording a sleep or a message — is not held.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


#: Seconds after the last stored message during which signals still count as arriving (a
#: sender's next message comes within milliseconds of its last answer).
QUIET_SECONDS = 0.1
#: While signals arrive past the hold, a healing step starts when the one before it ended or has
#: run this long (so a step that waits — a remedy, a verification, a model's answer — holds the
#: others back no longer).
TURN_SECONDS = 0.05
#: While signals arrive past the hold, the healings' steps get at most this share of the time: a
#: step that used c seconds of CPU on its thread is followed by a pause of c × (1 / share − 1)
#: before the next one starts (a step that waits uses little CPU and is followed by a short pause).
HEALING_SHARE = 0.5


class SignalsFirst:
    """The gate between storing signals and running healings' steps in one process.

    A *burst* starts with a message stored after ``QUIET_SECONDS`` without one and lasts until
    ``QUIET_SECONDS`` pass without one. For its first ``hold_seconds`` healing steps wait; after
    that they run one after another, in the order they came, each starting when the one before
    it ended or ran ``turn_seconds`` and, after a step that used CPU, after a pause that keeps
    the steps' share of the time to :data:`HEALING_SHARE`. ``hold_seconds`` 0 turns the gate
    off (steps always run at once). Thread-safe; a step run inside another's turn runs at once."""

    def __init__(self, hold_seconds: float, *, quiet_seconds: float = QUIET_SECONDS,
                 turn_seconds: float = TURN_SECONDS) -> None:
        for name, value in (("hold_seconds", hold_seconds), ("quiet_seconds", quiet_seconds),
                            ("turn_seconds", turn_seconds)):
            if value < 0:
                raise ValueError(f"{name}: expected >= 0, got {value}")
        self.hold_seconds, self.quiet_seconds, self.turn_seconds = hold_seconds, quiet_seconds, turn_seconds
        self._lock = threading.Lock()
        self._ingesting = 0
        self._last = float("-inf")  # time.monotonic() when the last stored message ended
        self._burst_start = float("-inf")
        self._waiters: deque[threading.Event] = deque()  # FIFO; the first one's event is set
        self._holder: object | None = None  # the step running in turn, since _held_since
        self._held_since = 0.0
        self._freed = threading.Event()  # set when the holder ends
        self._next_turn = float("-inf")  # time.monotonic() before which no step takes a turn (the share)
        self._mine = threading.local()  # .held: this thread's step holds the turn
        self.waited = 0  # blocks that waited for their turn (or for the burst to end)

    @contextlib.contextmanager
    def ingesting(self) -> Iterator[None]:
        """Mark the stretch in which a message's signals are stored (nests)."""
        with self._lock:
            now = time.monotonic()
            if not self._busy(now):
                self._burst_start = now
            self._ingesting += 1
        try:
            yield
        finally:
            with self._lock:
                self._ingesting -= 1
                self._last = time.monotonic()

    def busy(self) -> bool:
        """True during a burst: while a message is being stored or one was within ``quiet_seconds``."""
        return self._busy(time.monotonic())

    def _busy(self, now: float) -> bool:
        if self.hold_seconds <= 0:
            return False
        return self._ingesting > 0 or now - self._last < self.quiet_seconds

    @contextlib.contextmanager
    def healing_turn(self) -> Iterator[None]:
        """Run the block (a healing step, an enqueue) at once outside a burst; during one, after
        its first ``hold_seconds`` and in turn (see the class)."""
        if not self.busy() or getattr(self._mine, "held", False):  # free, or a step inside a step
            yield
            return
        token = self._take_turn()
        if token is None:  # the burst ended while it waited
            yield
            return
        self._mine.held = True
        cpu0 = time.thread_time()
        try:
            yield
        finally:
            self._mine.held = False
            cpu = time.thread_time() - cpu0
            with self._lock:
                self._next_turn = max(self._next_turn, time.monotonic() + cpu * (1 / HEALING_SHARE - 1))
                if self._holder is token:
                    self._holder = None
                    self._freed.set()

    def _take_turn(self) -> object | None:
        """Wait for this thread's turn; returns its token (None: the burst ended)."""
        me = threading.Event()
        with self._lock:
            self._waiters.append(me)
            if len(self._waiters) == 1:
                me.set()
        me.wait()  # until the ones before it have gone
        while True:
            with self._lock:
                now = time.monotonic()
                free = not self._busy(now)
                held = self._holder is not None and now - self._held_since < self.turn_seconds
                if free or (now >= max(self._burst_start + self.hold_seconds, self._next_turn) and not held):
                    self._waiters.popleft()
                    if self._waiters:
                        self._waiters[0].set()
                    self.waited += 1
                    if free:
                        return None
                    self._holder, self._held_since = object(), now
                    self._freed.clear()
                    return self._holder
            # the first in line looks again (the others sleep)
            self._freed.wait(min(self.turn_seconds, max(0.001, self._next_turn - time.monotonic())))


#: The gate of the process's running Runtime (None: no Runtime, steps run at once); set by
#: :meth:`heald.engine.Runtime.start`, cleared by its stop.
current: SignalsFirst | None = None


def yields_to_signals(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorate a healing step (above ``@DBOS.step()``, so that DBOS's checkpoint of it is
    inside too) to run in :meth:`SignalsFirst.healing_turn` of the running Runtime's gate."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> R:
        gate = current
        if gate is None:
            return fn(*args, **kwargs)
        with gate.healing_turn():
            return fn(*args, **kwargs)

    return wrapper
