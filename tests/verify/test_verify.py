"""Verification over a stabilization window."""

from __future__ import annotations

import itertools

from heald.models import CheckResult, utcnow
from heald.verify import verify


def scripted(outcomes):  # type: ignore[no-untyped-def]
    it = iter(outcomes)

    def check() -> CheckResult:
        ok = next(it, True)
        return CheckResult(name="c", ok=ok, detail="ok" if ok else "down", at=utcnow())
    return check


def test_passes_after_stable_window_and_recovered_at_is_streak_start() -> None:
    v = verify(1, [scripted([False, False, True, True, True, True])], stabilization=0.1, interval=0.03, timeout=5)
    assert v.passed and v.recovered_at is not None
    first_ok = next(c for c in v.checks if c.ok)
    assert v.recovered_at == first_ok.at


def test_flap_restarts_the_window() -> None:
    flapping = itertools.cycle([True, True, False])
    v = verify(1, [lambda: CheckResult(name="c", ok=next(flapping), at=utcnow())], stabilization=0.2, interval=0.03, timeout=1)
    assert not v.passed and "not stable" in v.reason and "c: " in v.reason


def test_a_raising_check_fails_with_its_reason() -> None:
    def boom() -> CheckResult:
        raise RuntimeError("no route")
    v = verify(1, [boom], stabilization=0.0, interval=0.01, timeout=0.05)
    assert not v.passed and "no route" in v.reason
