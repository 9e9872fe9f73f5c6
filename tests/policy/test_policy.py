"""The gate's defaults: risk × confidence → auto, approval, escalate."""

from __future__ import annotations

import pytest

from heald.config import PolicyConfig
from heald.models import DecisionKind, Diagnosis, RemedyCandidate, Risk
from heald.policy import count_approvers, decide, gate, grounded_confidence


def d(conf: float, category: str = "process_down") -> Diagnosis:
    return Diagnosis(category=category, confidence=conf, reasoner="runbook")


@pytest.mark.parametrize(("conf", "risk", "kind", "approvals"), [
    (0.95, Risk.low, DecisionKind.auto, 0),
    (0.90, Risk.low, DecisionKind.auto, 0),
    (0.85, Risk.low, DecisionKind.approval, 1),
    (0.95, Risk.medium, DecisionKind.approval, 1),
    (0.95, Risk.high, DecisionKind.approval, 2),
    (0.95, Risk.critical, DecisionKind.approval, 2),
    (0.69, Risk.low, DecisionKind.escalate, 0),
])
def test_defaults(conf: float, risk: Risk, kind: DecisionKind, approvals: int) -> None:
    dec = decide(d(conf), RemedyCandidate(remedy="restart_process", risk=risk), PolicyConfig(), attempt=1, max_attempts=3)
    assert dec.kind == kind and dec.required_approvals == approvals
    assert dec.reason


def test_unknown_category_and_no_candidate_and_budget_escalate() -> None:
    cand = RemedyCandidate(remedy="restart_process")
    assert decide(d(0.99, "unknown"), cand, PolicyConfig(), attempt=1, max_attempts=3).kind == DecisionKind.escalate
    assert decide(d(0.99), None, PolicyConfig(), attempt=1, max_attempts=3).kind == DecisionKind.escalate
    over = decide(d(0.99), cand, PolicyConfig(), attempt=4, max_attempts=3)
    assert over.kind == DecisionKind.escalate and "budget" in over.reason


# -- environments ------------------------------------------------------------------------------

def test_production_is_stricter_than_development_by_default() -> None:
    policy = PolicyConfig()
    cmd = RemedyCandidate(remedy="run_command", params={"name": "x"}, risk=Risk.low)
    prod = decide(d(0.95), cmd, policy, attempt=1, max_attempts=3, environment="production")
    assert prod.kind == DecisionKind.refuse and "not on the allowlist of environment production" in prod.reason
    dev = decide(d(0.95), cmd, policy, attempt=1, max_attempts=3, environment="development")
    assert dev.kind == DecisionKind.auto
    critical = RemedyCandidate(remedy="restart_process", risk=Risk.critical)
    assert decide(d(0.95), critical, policy, attempt=1, max_attempts=3,
                  environment="production").kind == DecisionKind.refuse
    assert decide(d(0.95), critical, policy, attempt=1, max_attempts=3,
                  environment="development").kind == DecisionKind.approval


def test_environment_keys_override_policy_keys() -> None:
    policy = PolicyConfig.model_validate({
        "auto_max_risk": "medium",
        "environments": {"production": {"allowed_remedies": ["restart_process"]},
                         "staging": {"auto": False}, "lab": {"auto_min_confidence": 0.5, "escalate_below_confidence": 0.4}}})
    medium = RemedyCandidate(remedy="restart_process", risk=Risk.medium)
    # production keeps its built-in auto_max_risk (low) although policy's is medium
    assert decide(d(0.95), medium, policy, attempt=1, max_attempts=3, environment="production").kind == DecisionKind.approval
    assert decide(d(0.95), medium, policy, attempt=1, max_attempts=3, environment="development").kind == DecisionKind.auto
    staging = decide(d(0.99), RemedyCandidate(remedy="restart_process"), policy, attempt=1, max_attempts=3,
                     environment="staging")
    assert staging.kind == DecisionKind.approval and "auto-remediation is off in staging" in staging.reason
    assert decide(d(0.75), medium, policy, attempt=1, max_attempts=3, environment="lab").kind == DecisionKind.auto
    http = RemedyCandidate(remedy="http_request", params={"url": "http://x/"})
    assert decide(d(0.95), http, policy, attempt=1, max_attempts=3, environment="production").kind == DecisionKind.refuse


@pytest.mark.parametrize(("data", "field", "expected"), [
    ({"allowed_remedies": ["reboot_the_world"]}, "allowed_remedies", "unknown remedies ['reboot_the_world']"),
    ({"environments": {"production": {"allowed_remedies": ["nope"]}}}, "environments.production.allowed_remedies",
     "unknown remedies"),
    ({"environments": {"dev": {"escalate_below_confidence": 0.95}}}, "", "environments.dev: escalate_below_confidence"),
    ({"budgets": {"cooldown_seconds": -1}}, "budgets.cooldown_seconds", "greater than or equal to 0"),
    ({"budgets": {"rate_limit_global": {"max_actions": 0, "window_seconds": 60}}},
     "budgets.rate_limit_global.max_actions", "greater than or equal to 1"),
    ({"budgets": {"rate_limit_per_target": {"max_actions": 3}}}, "budgets.rate_limit_per_target.window_seconds",
     "required key is missing"),
    ({"budgets": {"breaker_failures": 0}}, "budgets.breaker_failures", "greater than or equal to 1"),
    ({"budgets": {"lease_secs": 5}}, "budgets.lease_secs", "unknown key"),
])
def test_bad_policy_config_names_the_field(tmp_path, data, field, expected) -> None:  # type: ignore[no-untyped-def]
    import yaml

    from heald.config import ConfigError, load_config
    from heald.remedies import CATALOG

    path = tmp_path / "heald.yaml"
    path.write_text(yaml.safe_dump({"policy": data}))
    with pytest.raises(ConfigError) as exc:
        load_config(path, remedies=CATALOG)
    text = str(exc.value)
    assert f"policy.{field}".rstrip(".") in text and expected in text, text


# -- a model's finding (issue 11 item 5) ---------------------------------------------------------

class NoBudgets:
    """Gate facts with nothing blocking (to test the decision rules alone)."""

    def target(self, candidate: RemedyCandidate) -> str:
        return f"service:{candidate.params.get('service', '?')}"

    def heald_itself(self, candidate: RemedyCandidate, target: str) -> None:
        return None

    def about_heald(self) -> None:
        return None

    def cooldown(self, target: str, remedy: str) -> None:
        return None

    def target_rate_limited(self, target: str) -> None:
        return None

    def global_rate_limited(self) -> None:
        return None

    def breaker_open(self, target: str) -> None:
        return None

    def silenced(self) -> None:
        return None


@pytest.mark.parametrize("candidate", [
    # the category runbook attached because its category equals the LLM's
    RemedyCandidate(remedy="restart_process", params={"service": "shop"}, risk=Risk.low, runbook="category-process-down"),
    # the model's own proposal, given the runbook's risk because a runbook offers exactly it
    RemedyCandidate(remedy="restart_process", params={"service": "shop"}, risk=Risk.low, runbook="process-down"),
])
def test_a_finding_of_the_llm_alone_never_acts_by_itself(candidate: RemedyCandidate) -> None:
    llm_alone = Diagnosis(category="process_down", confidence=1.0, reasoner="llm", runbook=candidate.runbook)
    for decision in (decide(llm_alone, candidate, PolicyConfig(), attempt=1, max_attempts=3),
                     gate(llm_alone, [candidate], PolicyConfig(), NoBudgets(), attempt=1, max_attempts=3).decision):
        assert decision.kind == DecisionKind.approval and decision.required_approvals == 1
        assert "rests on the llm reasoner alone" in decision.reason
    assert grounded_confidence(llm_alone) is None
    # the same with a policy that trusts everything: still a human
    lax = PolicyConfig(auto_min_confidence=0.0, escalate_below_confidence=0.0, auto_max_risk=Risk.critical)
    assert decide(llm_alone, candidate, lax, attempt=1, max_attempts=3).kind == DecisionKind.approval
    # an unsure model alone escalates, as any unsure finding does
    unsure = llm_alone.model_copy(update={"confidence": 0.5})
    assert decide(unsure, candidate, PolicyConfig(), attempt=1, max_attempts=3).kind == DecisionKind.escalate


def test_the_llm_confidence_never_raises_the_deterministic_one() -> None:
    cand = RemedyCandidate(remedy="restart_process", params={"service": "shop"}, risk=Risk.low)
    backed = Diagnosis(category="process_down", confidence=1.0, reasoner="llm", deterministic_confidence=0.8)
    assert grounded_confidence(backed) == 0.8
    dec = decide(backed, cand, PolicyConfig(), attempt=1, max_attempts=3)
    assert dec.kind == DecisionKind.approval and "confidence 0.80 (the deterministic reasoners'" in dec.reason
    strong = backed.model_copy(update={"deterministic_confidence": 0.95})
    assert decide(strong, cand, PolicyConfig(), attempt=1, max_attempts=3).kind == DecisionKind.auto
    # a deterministic reasoner's own finding is acted on at its own confidence
    assert grounded_confidence(Diagnosis(category="process_down", confidence=0.93, reasoner="kb")) == 0.93


def test_approvals_count_once_per_human() -> None:
    votes = [{"approver": a, "verdict": v} for a, v in
             [("alice", "approve"), ("bob2", "approve"), ("alice", "approve"), ("dave", "approve"), ("eve", "reject")]]
    humans = count_approvers(votes, {"alice": "alice", "bob2": "alice", "dave": "dave"})
    assert humans == {"alice": ["alice", "bob2"], "dave": ["dave"]}
    assert count_approvers(votes[:2], {}) == {"alice": ["alice"], "bob2": ["bob2"]}  # no tokens: names are humans
