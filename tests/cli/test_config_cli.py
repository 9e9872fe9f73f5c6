"""heald config check / schema / reference, --version, shell completion, and tables that are
not cut to 80 columns when piped — run as a user runs them, in real subprocesses."""

from __future__ import annotations

import json
from pathlib import Path

from heald import __version__
from heald.models import Signal
from heald.store import Store
from tests.conftest import REPO, make_config, run_heald


def env_for(tmp_path: Path) -> dict[str, str]:
    return {"HEALD_STATE_DIR": str(tmp_path / "state"), "HEALD_CONFIG": ""}


def test_config_check_a_valid_file_starts_nothing(tmp_path: Path) -> None:
    cfg = tmp_path / "heald.yaml"
    cfg.write_text(f"state_dir: {tmp_path / 'state'}\nservices:\n  shop:\n    probes: [{{url: 'http://127.0.0.1:1/'}}]\n")
    r = run_heald("config", "check", str(cfg), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"valid: {cfg}" in r.stdout
    assert not (tmp_path / "state").exists()  # no store, no DBOS database: nothing was started


def test_config_check_lists_every_problem_with_file_line_and_key(tmp_path: Path) -> None:
    cfg = tmp_path / "heald.yaml"
    cfg.write_text("environment: prod\nhealing:\n  max_atempts: 4\napi:\n  port: 99999\n")
    r = run_heald("config", "check", str(cfg), cwd=tmp_path)
    assert r.returncode == 2
    assert f"{cfg}:3: healing.max_atempts: unknown key" in r.stderr
    assert f"{cfg}:5: api.port: Input should be less than or equal to 65535 (got 99999)" in r.stderr
    j = run_heald("config", "check", str(cfg), "--json", cwd=tmp_path)
    assert j.returncode == 2
    data = json.loads(j.stdout)
    assert data["valid"] is False and data["file"] == str(cfg) and len(data["problems"]) == 2


def test_config_check_uses_the_global_config_and_a_missing_file_is_an_error(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("environment: staging\n")
    r = run_heald("--config", str(good), "config", "check", "--json", cwd=tmp_path)
    assert r.returncode == 0 and json.loads(r.stdout) == {"file": str(good), "valid": True, "problems": [],
                                                           "deprecations": []}
    missing = run_heald("config", "check", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert missing.returncode == 2 and "nope.yaml: (top level): cannot read file" in missing.stderr
    none = run_heald("config", "check", env={"HEALD_CONFIG": ""}, cwd=tmp_path)
    assert none.returncode == 0 and "built-in defaults apply" in none.stdout


def test_deprecated_key_warns_naming_the_new_key_on_every_command(tmp_path: Path) -> None:
    cfg = tmp_path / "heald.yaml"
    cfg.write_text(f"state_dir: {tmp_path / 'state'}\nhealing:\n  cooldown_seconds: 3\n")
    r = run_heald("config", "check", str(cfg), "--json", cwd=tmp_path)
    assert r.returncode == 0
    want = f"{cfg}:3: healing.cooldown_seconds: deprecated: use healing.retry_delay_seconds"
    assert json.loads(r.stdout)["deprecations"] == [f"{want} (the old name still works)"]
    assert f"warning: {want}" in r.stderr
    inc = run_heald("--config", str(cfg), "incidents", "--json", cwd=tmp_path)
    assert inc.returncode == 0 and json.loads(inc.stdout) == [] and f"warning: {want}" in inc.stderr


def test_config_schema_is_json_schema(tmp_path: Path) -> None:
    r = run_heald("config", "schema", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    schema = json.loads(r.stdout)
    assert schema["type"] == "object" and "healing" in schema["properties"]


def test_config_reference_prints_docs_config_md(tmp_path: Path) -> None:
    r = run_heald("config", "reference", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == (REPO / "docs" / "config.md").read_text(encoding="utf-8")


def test_version_flag(tmp_path: Path) -> None:
    r = run_heald("--version", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == f"heald {__version__}"


def test_shell_completion_completes_commands(tmp_path: Path) -> None:
    # Typer detects the user's shell from the process tree; here it is told (its own test switch)
    script = run_heald("--show-completion", "bash", env={"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"},
                       cwd=tmp_path)
    assert script.returncode == 0 and "_HEALD_COMPLETE=complete_bash" in script.stdout, script.stderr
    r = run_heald(env={"_HEALD_COMPLETE": "complete_bash", "COMP_WORDS": "heald con", "COMP_CWORD": "1"},
                  cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.split() == ["config"]
    sub = run_heald(env={"_HEALD_COMPLETE": "complete_bash", "COMP_WORDS": "heald config ch", "COMP_CWORD": "2"},
                    cwd=tmp_path)
    assert sub.stdout.split() == ["check"]


def test_tables_are_not_cut_to_80_columns_when_piped(tmp_path: Path) -> None:
    from heald import correlate

    title = "checkout latency above its objective on every region " * 3
    store = Store(f"sqlite:///{tmp_path / 'state' / 'heald.db'}")
    store.migrate()
    with store.tx() as s:
        correlate.ingest(s, Signal(source="t", service="shop-frontend-eu-west", summary=title.strip()),
                         make_config(tmp_path))
    store.close()
    r = run_heald("incidents", env={"COLUMNS": "", **env_for(tmp_path)}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert title.strip() in r.stdout and "…" not in r.stdout
    assert max(len(line) for line in r.stdout.splitlines()) > 80
