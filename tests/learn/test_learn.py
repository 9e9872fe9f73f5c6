"""Learning from outcomes: Beta posteriors per (category, remedy) from a real store, and the
plan's Thompson-sampling ranking moving as outcomes arrive."""

from __future__ import annotations

import json
import random
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from heald import correlate
from heald.diagnose import Finding
from heald.diagnose.runbooks import load_runbooks
from heald.learn import Posterior, learned, learned_rows, success_rates
from heald.models import Action, Diagnosis, Outcome, OutcomeResult, Signal, Verification, utcnow
from heald.plan import candidate_key, make_plan
from heald.store import Store
from tests.conftest import make_config, run_heald

CATEGORY = "svc_broken"


def runbook_finding(tmp_path: Path) -> Finding:
    """A finding for ``svc_broken`` whose runbook lists restart_process first, run_command second."""
    p = tmp_path / "rb.yaml"
    p.write_text(textwrap.dedent("""
        runbooks:
          - name: svc-broken
            match: {labels: ['alertname="SvcBroken"']}
            diagnosis: {category: svc_broken, confidence: 0.95}
            remedies:
              - {remedy: restart_process, risk: low, params: {service: "${service}"}}
              - {remedy: run_command, risk: low, params: {name: flush-cache}}
    """))
    [rb] = load_runbooks([p], include_defaults=False)
    return Finding(diagnosis=Diagnosis(category=CATEGORY, confidence=0.95, reasoner="runbook", runbook=rb.name), runbook=rb)


def alert(service: str = "svc") -> Signal:
    return Signal(source="test", service=service, summary=f"{service} broken",
                  labels={"alertname": "SvcBroken", "service": service})


def open_incident(store: Store, tmp_path: Path, service: str) -> int:
    with store.tx() as s:
        r = correlate.ingest(s, alert(service), make_config(tmp_path))
    assert r.incident_id is not None
    return r.incident_id


def verified_action(store: Store, incident_id: int, remedy: str, attempt: int = 1, passed: bool = True) -> int:
    """An action of ``remedy`` at ``attempt`` and a verification of it (``passed``) after it:
    what a healed attempt needs to count (:func:`heald.learn.verified_heals`)."""
    found = [a for a in store.actions_for(incident_id) if a.attempt == attempt and a.remedy == remedy]
    if found:
        action = found[0]
    else:
        action, _ = store.begin_action(Action(incident_id=incident_id, attempt=attempt, remedy=remedy, params={},
                                              idempotency_key=f"learn-{incident_id}-{attempt}-{remedy}"))
    assert action.id is not None
    store.add_verification(Verification(incident_id=incident_id, action_id=action.id, passed=passed,
                                        started_at=utcnow(), finished_at=utcnow()))
    return action.id


def record(store: Store, incident_id: int, remedy: str, result: OutcomeResult, n: int = 1, attempt: int = 1) -> None:
    if result == OutcomeResult.healed and attempt > 0 and not any(
            a.attempt == attempt and a.remedy == remedy for a in store.actions_for(incident_id)):
        verified_action(store, incident_id, remedy, attempt)
    for _ in range(n):
        store.add_outcome(Outcome(incident_id=incident_id, category=CATEGORY, remedy=remedy, result=result, attempt=attempt))


def first_share(store: Store, finding: Finding, remedy: str, draws: int = 1000, seed: int = 7,
                tried: frozenset[str] = frozenset()) -> float:
    """How often ``remedy`` is ranked first over ``draws`` plans with one seeded RNG."""
    rng = random.Random(seed)
    rates = success_rates(store, CATEGORY)
    firsts = Counter(make_plan(1, finding, [alert()], set(tried), rates, rng=rng).plan.candidates[0].remedy
                     for _ in range(draws))
    return firsts[remedy] / draws


@pytest.fixture
def sqlite_store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = Store(f"sqlite:///{tmp_path / 'heald.db'}")
    s.migrate()
    yield s
    s.close()


def test_posteriors_count_attempts_not_incident_totals(store: Store, tmp_path: Path) -> None:
    inc = open_incident(store, tmp_path, "svc")
    record(store, inc, "restart_process", OutcomeResult.healed, 3)
    record(store, inc, "restart_process", OutcomeResult.not_healed, 1)
    record(store, inc, "restart_process", OutcomeResult.rolled_back, 1)  # undone: a failure too
    record(store, inc, "run_command", OutcomeResult.healed, 1, attempt=0)  # the incident as a whole: not counted
    store.add_outcome(Outcome(incident_id=inc, category="other", remedy="cleanup_path",
                              result=OutcomeResult.not_healed, attempt=1))
    rates = success_rates(store, CATEGORY)
    assert rates == {"restart_process": Posterior(successes=3, failures=2)}
    assert rates["restart_process"].mean == pytest.approx(4 / 7)
    assert set(learned(store)) == {CATEGORY, "other"}
    rows = learned_rows(store)
    assert [(r["category"], r["remedy"], r["successes"], r["failures"]) for r in rows] == [
        ("other", "cleanup_path", 0, 1), (CATEGORY, "restart_process", 3, 2)]
    assert rows[1]["alpha"] == 4 and rows[1]["beta"] == 3
    assert learned_rows(store, "other") == [rows[0]]


def test_without_history_the_runbook_order_holds_and_no_score_is_drawn(sqlite_store: Store, tmp_path: Path) -> None:
    finding = runbook_finding(tmp_path)
    for seed in range(20):
        plan = make_plan(1, finding, [alert()], set(), {}, rng=random.Random(seed)).plan
        assert [c.remedy for c in plan.candidates] == ["restart_process", "run_command"]
        assert all(c.score is None and c.success_rate is None for c in plan.candidates)


def test_a_remedy_that_keeps_failing_falls_below_its_alternative(sqlite_store: Store, tmp_path: Path) -> None:
    finding = runbook_finding(tmp_path)
    inc = open_incident(sqlite_store, tmp_path, "svc")
    record(sqlite_store, inc, "restart_process", OutcomeResult.healed, 3)
    before = first_share(sqlite_store, finding, "restart_process")
    assert before == 1.0  # it works (Beta(4, 1)): an untried alternative is not gambled on
    plan = make_plan(1, finding, [alert()], set(), success_rates(sqlite_store, CATEGORY), rng=random.Random(1)).plan
    assert [(c.remedy, c.score is None) for c in plan.candidates] == [("restart_process", False), ("run_command", True)]
    record(sqlite_store, inc, "restart_process", OutcomeResult.not_healed, 8)
    after_failures = first_share(sqlite_store, finding, "restart_process")
    assert after_failures < 0.2  # Beta(4, 9) draws above the untried one's prior mean 0.5 about 7 % of the time
    record(sqlite_store, inc, "run_command", OutcomeResult.healed, 3)
    after_alternative_healed = first_share(sqlite_store, finding, "restart_process")
    assert after_alternative_healed < 0.1  # Beta(4, 9) against Beta(4, 1)
    assert before > after_failures > after_alternative_healed

    plan = make_plan(1, finding, [alert()], set(), success_rates(sqlite_store, CATEGORY), rng=random.Random(1)).plan
    assert all(c.score is not None and 0 <= c.score <= 1 for c in plan.candidates)
    assert plan.candidates[0].score >= plan.candidates[1].score  # type: ignore[operator]
    by_remedy = {c.remedy: c for c in plan.candidates}
    assert by_remedy["restart_process"].samples == 11 and by_remedy["restart_process"].success_rate == pytest.approx(4 / 13)
    assert by_remedy["run_command"].samples == 3 and by_remedy["run_command"].success_rate == pytest.approx(4 / 5)


def test_not_yet_tried_on_this_incident_stays_first(sqlite_store: Store, tmp_path: Path) -> None:
    finding = runbook_finding(tmp_path)
    inc = open_incident(sqlite_store, tmp_path, "svc")
    record(sqlite_store, inc, "run_command", OutcomeResult.healed, 20)
    record(sqlite_store, inc, "restart_process", OutcomeResult.not_healed, 20)
    tried = frozenset({candidate_key("run_command", {"name": "flush-cache"})})
    assert first_share(sqlite_store, finding, "restart_process", draws=200, tried=tried) == 1.0
    assert first_share(sqlite_store, finding, "run_command", draws=200) > 0.99


def test_the_same_seed_gives_the_same_ranking(sqlite_store: Store, tmp_path: Path) -> None:
    finding = runbook_finding(tmp_path)
    inc = open_incident(sqlite_store, tmp_path, "svc")
    record(sqlite_store, inc, "restart_process", OutcomeResult.healed, 1)
    record(sqlite_store, inc, "run_command", OutcomeResult.healed, 1)
    rates = success_rates(sqlite_store, CATEGORY)

    def scores(seed: int) -> list[tuple[str, float | None]]:
        return [(c.remedy, c.score) for c in make_plan(1, finding, [alert()], set(), rates, rng=random.Random(seed)).plan.candidates]

    assert scores(3) == scores(3)
    assert len({tuple(scores(s)) for s in range(10)}) > 1  # the draws do vary with the seed


def test_simulated_outcomes_the_plan_learns_which_remedy_heals(sqlite_store: Store, tmp_path: Path) -> None:
    """A bandit run on the real store: restart_process heals 15 % of the time, run_command
    85 %. Each round the plan's first candidate is applied and its outcome recorded."""
    finding = runbook_finding(tmp_path)
    truth = {"restart_process": 0.15, "run_command": 0.85}
    world, rng = random.Random(11), random.Random(12)
    chosen = []
    for i in range(60):
        inc = open_incident(sqlite_store, tmp_path, f"svc-{i}")
        plan = make_plan(inc, finding, [alert()], set(), success_rates(sqlite_store, CATEGORY), rng=rng).plan
        remedy = plan.candidates[0].remedy
        chosen.append(remedy)
        healed = world.random() < truth[remedy]
        record(sqlite_store, inc, remedy, OutcomeResult.healed if healed else OutcomeResult.not_healed)
    assert chosen[0] == "restart_process"  # no history: the runbook's order
    assert Counter(chosen[-20:])["run_command"] >= 17
    rates = success_rates(sqlite_store, CATEGORY)
    assert rates["run_command"].mean > 0.6 > 0.4 > rates["restart_process"].mean


def test_heald_learn_shows_the_learned_rates(sqlite_store: Store, tmp_path: Path) -> None:
    inc = open_incident(sqlite_store, tmp_path, "svc")
    record(sqlite_store, inc, "restart_process", OutcomeResult.healed, 2)
    record(sqlite_store, inc, "restart_process", OutcomeResult.not_healed, 1)
    record(sqlite_store, inc, "run_command", OutcomeResult.not_healed, 2)
    env = {"HEALD_DATABASE_URL": str(sqlite_store.engine.url), "HEALD_STATE_DIR": str(tmp_path / "state"), "HEALD_CONFIG": ""}
    r = run_heald("learn", "--json", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [(x["remedy"], x["successes"], x["failures"]) for x in rows] == [("restart_process", 2, 1), ("run_command", 0, 2)]
    assert rows[0]["success_rate"] == pytest.approx(0.6)
    human = run_heald("learn", env=env, cwd=tmp_path)
    assert human.returncode == 0, human.stderr
    assert "restart_process" in human.stdout and "60%" in human.stdout and "25%" in human.stdout
    none = run_heald("learn", "--category", "nothing_here", env=env, cwd=tmp_path)
    assert none.returncode == 0 and "no outcomes recorded yet" in none.stdout


def test_learning_over_the_api(tmp_path: Path, start_runtime) -> None:  # type: ignore[no-untyped-def]
    import httpx

    from tests.conftest import serving
    from tests.engine.test_workflow import sleeper_config

    rt = start_runtime(sleeper_config(tmp_path, confidence=0.5), run_probes=False)
    inc = open_incident(rt.store, tmp_path, "svc")
    record(rt.store, inc, "run_command", OutcomeResult.healed, 4)
    record(rt.store, inc, "restart_process", OutcomeResult.rolled_back, 2)
    verified_action(rt.store, inc, "cleanup_path")
    rt.store.add_outcome(Outcome(incident_id=inc, category="disk_full", remedy="cleanup_path",
                                 result=OutcomeResult.healed, attempt=1))
    with serving(rt, "viewer") as client:
        r = client.get("/v1/learning")
        assert r.status_code == 200, r.text
        assert [(x["category"], x["remedy"], x["successes"], x["failures"]) for x in r.json()] == [
            ("disk_full", "cleanup_path", 1, 0), (CATEGORY, "run_command", 4, 0), (CATEGORY, "restart_process", 0, 2)]
        only = client.get("/v1/learning", params={"category": CATEGORY}).json()
        assert {x["category"] for x in only} == {CATEGORY} and only[0]["success_rate"] == pytest.approx(5 / 6)
        assert httpx.get(f"{client.base_url}/v1/learning").status_code == 401
        assert client.get("/v1/learning", params={"category": "x" * 101}).status_code == 422


def test_only_verified_heals_count(store: Store, tmp_path: Path) -> None:
    """A heal is credited to a remedy only when a verification of that very action passed after
    it: a "healed" that no verification backs (the target happened to be up), or backed by the
    verification of another attempt's action, counts for nothing; a target that recovered on its
    own after a failed remedy counts as no heal either (issue 12 item 8)."""
    inc = open_incident(store, tmp_path, "svc")
    verified_action(store, inc, "restart_process", attempt=1, passed=False)
    record(store, inc, "restart_process", OutcomeResult.not_healed, attempt=1)
    store.add_outcome(Outcome(incident_id=inc, category=CATEGORY, remedy="restart_process",
                              result=OutcomeResult.healed, attempt=1))  # its verification failed
    store.begin_action(Action(incident_id=inc, attempt=2, remedy="run_command", params={}, idempotency_key="a2"))
    store.add_outcome(Outcome(incident_id=inc, category=CATEGORY, remedy="run_command",
                              result=OutcomeResult.healed, attempt=2))  # no verification at all
    store.add_outcome(Outcome(incident_id=inc, category=CATEGORY, remedy="restart_process",
                              result=OutcomeResult.recovered_unaided, attempt=0))
    assert success_rates(store, CATEGORY) == {"restart_process": Posterior(successes=0, failures=1)}
    verified_action(store, inc, "run_command", attempt=2)  # now a passed verification backs attempt 2
    assert success_rates(store, CATEGORY)["run_command"] == Posterior(successes=1, failures=0)
