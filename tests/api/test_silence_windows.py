"""Recurring maintenance windows (silences with a cron schedule): the pure window evaluation
(time zones, daylight-saving days, windows longer than the period), intake honouring it, the
API's field-naming 422s and roles, and the CLI."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from heald import correlate
from heald.correlate.silences import (
    SilenceError,
    create_silence,
    in_effect,
    list_silences,
    next_window,
    parse_recurrence,
    window_at,
)
from heald.models import Signal, utcnow
from heald.store import Store
from tests.api.conftest import api_config, serve
from tests.cli.test_cli import env_for
from tests.conftest import bearer, make_config, make_token, run_heald


@dataclass
class Silence:
    """A silence as a cache would hold it: what ``in_effect`` reads, no database row."""

    starts_at: datetime
    ends_at: datetime
    recurrence: dict[str, Any] | None


SUNDAY_2AM_PARIS = parse_recurrence("0 2 * * 0", 2 * 3600, "Europe/Paris")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_window_is_read_in_its_time_zone() -> None:
    # 2026-03-08 is a Sunday; 02:00 in Paris (CET, +01:00) is 01:00 UTC.
    assert window_at(SUNDAY_2AM_PARIS, at("2026-03-08T00:59:59+00:00")) is None
    assert window_at(SUNDAY_2AM_PARIS, at("2026-03-08T01:00:00+00:00")) == (at("2026-03-08T01:00:00+00:00"),
                                                                             at("2026-03-08T03:00:00+00:00"))
    assert window_at(SUNDAY_2AM_PARIS, at("2026-03-08T02:59:59+00:00")) is not None
    assert window_at(SUNDAY_2AM_PARIS, at("2026-03-08T03:00:00+00:00")) is None  # [start, end)
    assert window_at(SUNDAY_2AM_PARIS, at("2026-03-09T01:30:00+00:00")) is None  # a Monday
    # In summer (CEST, +02:00) the same wall-clock window is 00:00-02:00 UTC.
    assert window_at(SUNDAY_2AM_PARIS, at("2026-07-05T00:30:00+00:00")) is not None
    assert window_at(SUNDAY_2AM_PARIS, at("2026-07-05T02:30:00+00:00")) is None
    # The day the clocks go forward (2026-03-29, 02:00 does not exist in Paris): croniter moves
    # it to 03:00 CEST; the window is still two hours long and still on that Sunday.
    start, end = next_window(SUNDAY_2AM_PARIS, at("2026-03-28T12:00:00+00:00")) or (None, None)
    assert start is not None and end is not None and end - start == timedelta(hours=2)
    assert start.date() == datetime(2026, 3, 29).date()


def test_windows_longer_than_the_period_and_aliases() -> None:
    hourly_90m = parse_recurrence("@hourly", 90 * 60, "UTC")
    # Every instant is in some window; the latest one started is reported.
    assert window_at(hourly_90m, at("2026-01-01T10:20:00+00:00")) == (at("2026-01-01T10:00:00+00:00"),
                                                                      at("2026-01-01T11:30:00+00:00"))
    weekdays = parse_recurrence("30 22 * * 1-5", 3600, "America/New_York")
    assert window_at(weekdays, at("2026-01-06T03:45:00+00:00")) is not None  # Mon 22:45 EST
    assert window_at(weekdays, at("2026-01-04T03:45:00+00:00")) is None  # Sat 22:45 EST


def test_in_effect_is_a_pure_function_of_silence_and_now() -> None:
    period = Silence(at("2026-03-01T00:00:00+00:00"), at("2026-03-15T00:00:00+00:00"), SUNDAY_2AM_PARIS)
    assert in_effect(period, at("2026-03-08T01:30:00+00:00"))
    assert not in_effect(period, at("2026-03-08T04:00:00+00:00"))  # between windows
    assert not in_effect(period, at("2026-03-15T01:30:00+00:00"))  # a window after the period ended
    assert not in_effect(period, at("2026-02-22T01:30:00+00:00"))  # a window before it began
    plain = Silence(period.starts_at, period.ends_at, None)
    assert in_effect(plain, at("2026-03-08T04:00:00+00:00"))
    naive = Silence(datetime(2026, 3, 1), datetime(2026, 3, 15), SUNDAY_2AM_PARIS)  # as SQLite may return them
    assert in_effect(naive, at("2026-03-08T01:30:00+00:00")) and not in_effect(naive, at("2026-03-15T01:30:00+00:00"))
    # Same arguments, same answer, whatever the clock says.
    assert [in_effect(period, at("2026-03-08T01:30:00+00:00")) for _ in range(3)] == [True] * 3


@pytest.mark.parametrize(("schedule", "window", "tz", "field", "text"), [
    ("0 2 * *", 3600, "UTC", "recurrence.schedule", "five fields"),
    ("0 2 * * * *", 3600, "UTC", "recurrence.schedule", "five fields"),  # no seconds field
    ("61 2 * * *", 3600, "UTC", "recurrence.schedule", "five fields"),
    ("@reboot", 3600, "UTC", "recurrence.schedule", "five fields"),
    ("0 0 30 2 *", 3600, "UTC", "recurrence.schedule", "never fires"),
    ("0 2 * * 0", 30, "UTC", "recurrence.window", "1m to 7d"),
    ("0 2 * * 0", 8 * 86400, "UTC", "recurrence.window", "1m to 7d"),
    ("0 2 * * 0", 3600, "Mars/Olympus", "recurrence.timezone", "IANA"),
    ("0 2 * * 0", 3600, "../../etc/passwd", "recurrence.timezone", "IANA"),
])
def test_bad_recurrences_name_the_field(schedule: str, window: int, tz: str, field: str, text: str) -> None:
    with pytest.raises(SilenceError) as exc:
        parse_recurrence(schedule, window, tz)
    assert exc.value.field == field and text in exc.value.message


def _hour_away() -> str:
    """A daily schedule whose one-hour window is twelve hours from now (never in effect now)."""
    return f"0 {(utcnow().hour + 12) % 24} * * *"


def test_intake_silences_only_inside_a_window(tmp_path: Path, store: Store) -> None:
    cfg = make_config(tmp_path)
    now = utcnow()
    outside = create_silence(store, ['service="shop"'], now + timedelta(days=30), created_by="user:alice",
                             comment="nightly backup", recurrence=parse_recurrence(_hour_away(), 3600, "UTC"))
    assert outside["state"] == "pending" and outside["next_window"] is not None
    assert at(outside["next_window"]["starts_at"]) > now
    sig = Signal(source="test", service="shop", summary="down", labels={"alertname": "Down"})
    with store.tx() as s:
        first = correlate.ingest(s, sig, cfg)
    assert first.suppressed_by is None and first.opened  # between windows: heals as usual
    inside = create_silence(store, ['service="cart"'], now + timedelta(days=30), created_by="user:alice",
                            comment="every minute", recurrence=parse_recurrence("* * * * *", 60, "UTC"))
    assert inside["state"] == "active"
    with store.tx() as s:
        muted = correlate.ingest(s, sig.model_copy(update={"service": "cart"}), cfg)
    assert muted.incident_id is None and muted.suppressed_by.startswith(f"silence {inside['id']}: ")
    assert "window at '* * * * *' UTC" in muted.suppressed_by
    assert [x["id"] for x in list_silences(store, "active")] == [inside["id"]]
    created = [e for e in store.audit_entries() if e.event == "silence.created"]
    assert created[0].details["recurrence"] == {"schedule": _hour_away(), "window_seconds": 3600, "timezone": "UTC"}


def test_api_creates_recurring_silences_and_names_bad_fields(tmp_path: Path) -> None:
    with serve(api_config(tmp_path)) as (client, rt):
        body = {"matchers": ['service="svc"'], "duration": "90d", "comment": "weekly maintenance",
                "recurrence": {"schedule": "0 2 * * 0", "window": "2h", "timezone": "Europe/Paris"}}
        r = client.post("/v1/silences", json=body)
        assert r.status_code == 201, r.text
        made = r.json()
        assert made["recurrence"] == {"schedule": "0 2 * * 0", "window_seconds": 7200, "timezone": "Europe/Paris"}
        nxt = made["next_window"]
        assert at(nxt["ends_at"]) - at(nxt["starts_at"]) == timedelta(hours=2)
        assert at(nxt["starts_at"]).astimezone(UTC).weekday() in (5, 6)  # Sunday 02:00 Paris = Sat/Sun UTC
        for change, loc in ((("schedule", "every sunday"), "schedule"), (("window", "forever"), "window"),
                            (("timezone", "Nowhere/Land"), "timezone"), (("extra", 1), "extra")):
            bad = {**body, "recurrence": {**body["recurrence"], change[0]: change[1]}}
            r = client.post("/v1/silences", json=bad)
            assert r.status_code == 422, r.text
            assert loc in json.dumps(r.json()["detail"])
        viewer = make_token(rt.store, "viewer")
        r = client.post("/v1/silences", json=body, headers=bearer(viewer))
        assert r.status_code == 403
        listed = client.get("/v1/silences").json()
        assert [x["id"] for x in listed] == [made["id"]]


def test_cli_adds_a_recurring_silence(tmp_path: Path) -> None:
    env = env_for(tmp_path)
    add = run_heald("silences", "add", 'service="shop"', "--every", "0 2 * * 0", "--window", "2h", "--timezone",
                    "Europe/Paris", "--duration", "30d", "-m", "weekly maintenance", "--json", env=env, cwd=tmp_path)
    assert add.returncode == 0, add.stderr
    assert json.loads(add.stdout)["recurrence"]["timezone"] == "Europe/Paris"
    no_period = run_heald("silences", "add", 'service="shop"', "--every", "@daily", "-m", "x", env=env, cwd=tmp_path)
    assert no_period.returncode == 2 and "--duration" in no_period.stderr
    bad = run_heald("silences", "add", 'service="shop"', "--every", "0 2 * *", "-d", "1d", "-m", "x", env=env,
                    cwd=tmp_path)
    assert bad.returncode == 2 and "--every" in bad.stderr and "five fields" in bad.stderr
    bad_tz = run_heald("silences", "add", 'service="shop"', "--every", "@daily", "--timezone", "Nowhere",
                       "-d", "1d", "-m", "x", env=env, cwd=tmp_path)
    assert bad_tz.returncode == 2 and "--timezone" in bad_tz.stderr
    listing = run_heald("silences", "list", env=env, cwd=tmp_path)
    assert listing.returncode == 0 and "120m at '0 2 * * 0' Europe/Paris" in listing.stdout
