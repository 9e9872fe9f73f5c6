"""``heald eval diagnosis``: the shipped case set, its figures, bad case files, an LLM run
against a local OpenAI-compatible server, and cases the classifiers were not written against."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from heald.diagnose.categories import CATEGORIES
from heald.diagnose.runbooks import load_runbooks
from heald.evaluate import default_case_files, evaluate, load_cases, reasoners_for
from heald.yamlfile import YamlFileError
from tests.conftest import run_heald
from tests.diagnose.fake_openai import FakeOpenAI

HOLDOUT = Path(__file__).parent / "holdout_cases.yaml"


def test_shipped_set_covers_service_and_ci_faults() -> None:
    cases = load_cases(default_case_files())
    assert len(cases) >= 60
    assert {c.area for c in cases} == {"service", "ci"}
    covered = {c.expect.category for c in cases}
    assert set(CATEGORIES) - covered == set(), set(CATEGORIES) - covered
    assert all(c.expect.category in CATEGORIES for c in cases)


@pytest.mark.parametrize("files", [pytest.param("shipped", id="shipped"), pytest.param("holdout", id="holdout")])
def test_deterministic_reasoners_meet_the_target(files: str) -> None:
    rbs = load_runbooks([])
    cases = load_cases(default_case_files() if files == "shipped" else [HOLDOUT])
    results, summary = evaluate(cases, reasoners_for("deterministic", rbs, None), rbs)
    misses = [(r.id, r.expected, r.predicted) for r in results if not r.correct]
    assert summary["accuracy"] >= 0.95, misses
    assert summary["brier"] < 0.1
    assert all(0 <= r.confidence <= 1 for r in results)


def test_cli_prints_the_table_and_json(tmp_path: Path) -> None:
    r = run_heald("eval", "diagnosis", "--min-accuracy", "0.95", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "accuracy per" not in r.stdout and "Brier score" in r.stdout and "disk_full" in r.stdout
    r = run_heald("eval", "diagnosis", "--json", "--reasoner", "kb", cwd=tmp_path)
    data = json.loads(r.stdout)
    s = data["summary"]
    assert s["reasoner"] == "kb" and s["cases"] == len(data["cases"]) >= 60
    assert set(s) >= {"accuracy", "brier", "ece", "categories", "remedy", "latency_s", "cost_usd"}
    assert s["categories"]["disk_full"]["cases"] >= 3
    assert run_heald("eval", "diagnosis", "--min-accuracy", "1.0", "--reasoner", "runbook",
                     cwd=tmp_path).returncode == 1


def test_bad_case_file_names_file_line_and_key(tmp_path: Path) -> None:
    p = tmp_path / "cases.yaml"
    p.write_text("cases:\n  - id: a\n    area: service\n    log: x\n    expect: {categry: disk_full}\n"
                 "  - id: b\n    area: mobile\n    expect: {category: x}\n")
    with pytest.raises(YamlFileError) as e:
        load_cases([p])
    msg = str(e.value)
    assert f"{p}:5: cases.0.expect.categry: unknown key" in msg and f"{p}:7: cases.1.area" in msg
    r = run_heald("eval", "diagnosis", "--cases", str(p), cwd=tmp_path)
    assert r.returncode == 2 and f"{p}:5" in r.stderr
    r = run_heald("eval", "diagnosis", "--reasoner", "oracle", cwd=tmp_path)
    assert r.returncode == 2 and "--reasoner" in r.stderr


def test_llm_eval_reports_latency_and_cost(tmp_path: Path) -> None:
    # A model that answers with the knowledge base's first hint (so the figures are predictable).
    def model(body: dict) -> tuple[int, str, float]:
        doc = json.loads(body["messages"][1]["content"])
        hints = doc["data"]["signature_hints"]
        category = hints[0]["category"] if hints else "unknown"
        return 200, json.dumps({"category": category, "root_cause": "from the hints", "reasoning_steps": ["hint"],
                                "confidence": 0.8, "evidence": [], "remedies": []}), 0.01

    server = FakeOpenAI(model)
    try:
        cfg = tmp_path / "heald.yaml"
        cfg.write_text(f"llm: {{base_url: '{server.url}', model: test-model, api_key: k, "
                       f"input_cost_per_million: 3.0, output_cost_per_million: 15.0}}\n")
        cases = tmp_path / "cases.yaml"
        cases.write_text("cases:\n"
                         "  - {id: a, area: service, service: shop, log: 'ERROR write: [Errno 28] No space left on device',"
                         " expect: {category: disk_full}}\n"
                         "  - {id: b, area: ci, ci_log: 'E   ModuleNotFoundError: No module named yaml',"
                         " expect: {category: missing_module}}\n")
        r = run_heald("--config", str(cfg), "eval", "diagnosis", "--reasoner", "llm", "--cases", str(cases), "--json",
                      cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        s = json.loads(r.stdout)["summary"]
        assert s["accuracy"] == 1.0 and s["brier"] == pytest.approx(0.04)
        assert s["cost_usd"]["per_case"] == pytest.approx(1200 * 3e-6 + 150 * 15e-6)
        assert s["tokens_per_case"] == 1350 and s["latency_s"]["mean"] > 0
        assert len(server.requests) == 2
        r = run_heald("--config", str(cfg), "eval", "diagnosis", "--reasoner", "llm", "--cases", str(cases), cwd=tmp_path)
        assert "cost per case $0.005850" in r.stdout and "latency per case" in r.stdout
    finally:
        server.close()
