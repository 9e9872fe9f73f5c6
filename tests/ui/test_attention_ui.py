"""The dashboard and an incident that needs attention: the overview counts it open and lists it,
its page offers retry / acknowledge / resolve to role approver, each a form with CSRF,
audited with the signed-in identity."""

from __future__ import annotations

import re

from heald.models import IncidentState, OutcomeResult
from tests.ui.conftest import Dashboard
from tests.ui.test_http import browser, csrf_of


def open_total(html: str) -> int:
    match = re.search(r'<dd id="open-total">(\d+)</dd>', html)
    assert match, "no open-incidents figure on the overview"
    return int(match.group(1))


def test_needs_attention_on_the_overview_and_the_forms(dashboard: Dashboard) -> None:
    rt = dashboard.rt
    inc = dashboard.send_signal()
    dashboard.wait_state(inc, "awaiting_approval")
    viewer, approver = browser(dashboard, "viewer"), browser(dashboard, "approver")
    page = approver.get(f"/incidents/{inc}").text
    token = csrf_of(page)
    r = approver.post(f"/incidents/{inc}/verdict", data={"verdict": "reject", "csrf": token, "comment": "no"})
    assert r.status_code == 303
    dashboard.wait_state(inc, "needs_attention")  # the signal still fires: handed over, not closed

    overview = viewer.get("/").text
    assert open_total(overview) == 1, "a target that is down is an open incident"
    assert f'id="attention-{inc}"' in overview and "rejected by approver-user: no" in overview

    as_viewer = viewer.get(f"/incidents/{inc}").text
    assert 'id="attention"' in as_viewer and 'value="retry"' not in as_viewer and "needs role approver" in as_viewer
    page = approver.get(f"/incidents/{inc}").text
    for action in ("retry", "ack", "resolve"):
        assert f'name="action" value="{action}"' in page

    def act(client, action: str, **extra: str):  # type: ignore[no-untyped-def]
        return client.post(f"/incidents/{inc}/act", data={"action": action, "csrf": token, **extra})

    assert approver.post(f"/incidents/{inc}/act", data={"action": "ack"}).status_code == 403  # no CSRF token
    denied = viewer.post(f"/incidents/{inc}/act", data={"action": "ack", "csrf": csrf_of(viewer.get("/").text)})
    assert denied.status_code == 403 and "needs role approver" in denied.text
    cross = approver.post(f"/incidents/{inc}/act", data={"action": "ack", "csrf": token},
                          headers={"Origin": "http://evil.example"})
    assert cross.status_code == 403
    bad = act(approver, "reboot")
    assert bad.status_code == 422 and "action: expected one of retry, ack, resolve" in bad.text
    long = act(approver, "ack", comment="x" * 5001)
    assert long.status_code == 422 and "comment: at most 5000" in long.text
    bare = act(approver, "resolve")
    assert bare.status_code == 422 and "comment: required" in bare.text
    assert [e for e in rt.store.audit_entries(incident_id=inc) if e.event == "incident.acknowledged"] == []
    ok = act(approver, "ack", comment="on it")
    assert ok.status_code == 303 and ok.headers["location"] == f"/incidents/{inc}?notice=ack"
    assert dashboard.state(inc) == "needs_attention"

    acks = [e for e in rt.store.audit_entries(incident_id=inc) if e.event == "incident.acknowledged"]
    assert [e.actor for e in acks] == ["user:approver-user"]
    assert 'id="acked"' in approver.get(f"/incidents/{inc}").text

    retried = act(approver, "retry", comment="the disk is free now")
    assert retried.status_code == 303 and retried.headers["location"] == f"/incidents/{inc}?notice=retry"
    dashboard.wait_state(inc, "awaiting_approval")  # healing again: the gate asks for an approval once more
    stale = act(approver, "retry")
    assert stale.status_code == 409 and "awaiting_approval" in stale.text

    hx = approver.post(f"/incidents/{inc}/act", data={"action": "resolve", "csrf": token, "comment": "done by hand"},
                       headers={"HX-Request": "true"})
    assert hx.status_code == 200 and "Resolved by you" in hx.text and "<html" not in hx.text
    done = rt.store.get_incident(inc)
    assert done.state == IncidentState.resolved and done.closed_reason == "resolved by user:approver-user: done by hand"
    assert [o.result for o in rt.store.outcomes(incident_id=inc) if o.attempt == 0] == [OutcomeResult.resolved_by_human]
    humans = {(e.details.get("human_action"), e.actor) for e in rt.store.audit_entries(incident_id=inc)
              if e.details.get("human_action")}
    assert humans == {("acknowledge", "user:approver-user"), ("retry", "user:approver-user"),
                      ("resolve", "user:approver-user")}
    assert open_total(viewer.get("/").text) == 0
    assert 'name="action"' not in approver.get(f"/incidents/{inc}").text  # nothing to act on once it ended
