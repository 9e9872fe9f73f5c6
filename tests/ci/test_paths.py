"""Paths a repository under healing names (issue 11, item 2): heald writes a fix only inside the
work tree, never to a path the repository's ``pyproject.toml`` points outside it, never through
a symbolic link the repository committed (the file itself or a parent directory); and a signal
cannot make heald's host-side git run a command (a revision or clone URL read as an option).

Each test performs the attack on real parts: a real git repository with the hostile project,
heald's cache and work tree, :func:`heald.ci.fix.build_fix` (what the ``add_dependency``
remedy runs), a "host file" outside the tree whose content must not change."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from heald import _paths
from heald.ci import CiJob
from heald.ci.fix import build_fix
from heald.ci.repo import RepoCache
from heald.config import load_config
from heald.models import IncidentState, Severity, Signal, SignalStatus
from tests.ci.repos import CALC, TESTS, commit, sh

HOST_TEXT = "root:x:0:0:root:/root:/bin/bash\n"
BEFORE = {"tests": {"command": "python -m pytest", "exit": 1, "ok": False, "duration_s": 1.0,
                    "failed_tests": ["tests/test_calc.py::test_add"]}}
PARAMS = {"module": "six", "distribution": "six", "version": "1.17.0", "scope": "runtime"}


def hostile_repo(where: Path, files: dict[str, str], links: dict[str, str] | None = None) -> str:
    """A repository with the calculator and ``files``, and ``links`` (name → target) committed as
    symbolic links; returns the head sha."""
    where.mkdir(parents=True)
    sh("git", "init", "-q", "-b", "main", cwd=where)
    for name, target in (links or {}).items():
        (where / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, where / name)
    return commit(where, "A project", {"calc.py": CALC, "tests/test_calc.py": TESTS, **files})


def dynamic(path: str) -> str:
    return ('[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n\n'
            '[project]\nname = "calc"\nversion = "0.1"\ndynamic = ["dependencies"]\n\n'
            f'[tool.setuptools.dynamic]\ndependencies = {{file = ["{path}"]}}\n')


def host_file(open_tmp: Path) -> Path:
    """A file outside every work tree, standing for a root-owned host file (/etc/passwd)."""
    (open_tmp / "host").mkdir()
    f = open_tmp / "host" / "passwd"
    f.write_text(HOST_TEXT)
    return f


def fix(heald_yaml, repo: Path, sha: str, *, refused: bool = True):  # type: ignore[no-untyped-def]
    """What the ``add_dependency`` remedy does: :func:`build_fix` in heald's cache, the real sandbox."""
    cfg = load_config(heald_yaml())
    job = CiJob(repo="octo/calc", url=str(repo), bad=sha)
    result = build_fix(cfg, job, "add_dependency", dict(PARAMS), before=BEFORE)
    if refused:
        assert result.steps == [], "the refusal comes before anything runs in the sandbox"
    return result


def test_add_dependency_refuses_an_absolute_dynamic_requirements_file(open_tmp: Path, heald_yaml) -> None:
    target = host_file(open_tmp)
    repo = open_tmp / "calc"
    sha = hostile_repo(repo, {"pyproject.toml": dynamic(str(target)), "requirements.txt": "flask\n"})
    result = fix(heald_yaml, repo, sha)
    assert target.read_text() == HOST_TEXT  # the host file is untouched
    assert not result.ok and not result.sha
    assert "[tool.setuptools.dynamic]" in result.reason and str(target) in result.reason and "absolute" in result.reason


def test_add_dependency_refuses_a_dotdot_requirements_file(open_tmp: Path, heald_yaml) -> None:
    target = host_file(open_tmp)
    repo = open_tmp / "calc"
    sha = hostile_repo(repo, {"pyproject.toml": dynamic("../../../host/passwd")})
    result = fix(heald_yaml, repo, sha)
    assert target.read_text() == HOST_TEXT
    assert not result.ok and "'..'" in result.reason and "../../../host/passwd" in result.reason


def test_add_dependency_never_writes_through_a_committed_symlink(open_tmp: Path, heald_yaml) -> None:
    target = host_file(open_tmp)
    repo = open_tmp / "calc"
    sha = hostile_repo(repo, {"pyproject.toml": dynamic("requirements.txt")}, links={"requirements.txt": str(target)})
    result = fix(heald_yaml, repo, sha)
    assert target.read_text() == HOST_TEXT
    assert not result.ok and "symbolic link" in result.reason and "requirements.txt" in result.reason
    # a plain requirements.txt project (no pyproject) whose requirements.txt is the link
    repo2 = open_tmp / "calc2"
    sha2 = hostile_repo(repo2, {}, links={"requirements.txt": str(target)})
    result = fix(heald_yaml, repo2, sha2)
    assert target.read_text() == HOST_TEXT
    assert not result.ok and "symbolic link" in result.reason


def test_add_dependency_never_writes_through_a_symlinked_parent_directory(open_tmp: Path, heald_yaml) -> None:
    target = host_file(open_tmp)
    repo = open_tmp / "calc"
    sha = hostile_repo(repo, {"pyproject.toml": dynamic("reqs/passwd")}, links={"reqs": str(target.parent)})
    result = fix(heald_yaml, repo, sha)
    assert target.read_text() == HOST_TEXT
    assert not result.ok and "symbolic link" in result.reason and "reqs/passwd" in result.reason


def test_a_well_behaved_dynamic_requirements_file_is_edited_in_the_tree(open_tmp: Path, heald_yaml) -> None:
    """The defence does not stop the ordinary case: the edit lands in the tree and is committed."""
    repo = open_tmp / "calc"
    sha = hostile_repo(repo, {"pyproject.toml": dynamic("requirements/base.txt"), "requirements/base.txt": "iniconfig\n"})
    result = fix(heald_yaml, repo, sha, refused=False)
    assert result.sha, result.reason  # the edit is committed, then validated in the sandbox
    assert (Path(result.worktree) / "requirements" / "base.txt").read_text() == "iniconfig\nsix>=1.17.0\n"
    assert result.changed == ["requirements/base.txt"]


# -- the helper itself, on the races a committed tree cannot show -------------------------------

def test_the_path_helper_refuses_every_escape(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    (root / "sub").mkdir(parents=True)
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    (root / "sub" / "link").symlink_to(outside)
    (root / "dirlink").symlink_to(tmp_path)
    os.link(outside, root / "hard.txt")
    for bad, why in [("/etc/passwd", "absolute"), ("../outside.txt", "'..'"), ("sub/../../outside.txt", "'..'"),
                     ("", "empty"), ("a//b", "empty"), ("./x", "'.'"), ("a\x00b", "control"), ("a\\b", "backslash")]:
        with pytest.raises(_paths.UnsafePath, match=why):
            _paths.write_text(root, bad, "x")
    for linked in ("sub/link", "dirlink/outside.txt"):
        with pytest.raises(_paths.UnsafePath, match="symbolic link"):
            _paths.write_text(root, linked, "x")
        with pytest.raises(_paths.UnsafePath, match="symbolic link"):
            _paths.read_text(root, linked)
        with pytest.raises(_paths.UnsafePath, match="symbolic link"):
            _paths.unlink(root, linked)
    with pytest.raises(_paths.UnsafePath, match="hard links"):
        _paths.write_text(root, "hard.txt", "x")
    assert outside.read_text() == "keep" and outside.exists()
    assert not _paths.is_dir(root, "dirlink")
    _paths.write_text(root, "new/dir/file.txt", "hello")
    assert _paths.read_text(root, "new/dir/file.txt") == "hello" and _paths.is_dir(root, "new/dir")
    assert _paths.unlink(root, "new/dir/file.txt") == 5 and _paths.read_text(root, "new/dir/file.txt") is None
    assert _paths.unlink(root, "new/dir/file.txt") is None


# -- revisions and clone URLs named by a signal ---------------------------------------------------

INJECTED = "--upload-pack=touch {marker};"


def test_a_signal_cannot_make_git_run_a_command_through_head_sha(open_tmp: Path, heald_yaml) -> None:
    """A ``ci_failed`` signal (any authenticated client can post one through the generic source)
    whose ``head_sha`` is a git option: the host-side ``git fetch origin <head_sha>`` would run
    it as the upload-pack command. heald refuses the revision, and nothing runs."""
    from heald.ci.incident import reproduce_incident
    from heald.store import Store

    repo = open_tmp / "calc"
    hostile_repo(repo, {})
    marker = open_tmp / "PWNED"
    cfg = load_config(heald_yaml())
    store = Store(cfg.database)
    store.migrate()
    sig = Signal(source="generic", kind="ci_failed", service="calc", severity=Severity.error, status=SignalStatus.firing,
                 summary="CI failed", labels={"repo": "calc", "head_sha": INJECTED.format(marker=marker)},
                 annotations={"clone_url": str(repo)})
    from heald import correlate

    with store.tx() as session:
        incident_id = correlate.ingest(session, sig, cfg, actor="test").incident_id
    verdict = reproduce_incident(cfg, store, incident_id)
    assert not marker.exists()
    assert verdict == "unresolved"
    audit = [e for e in store.audit_entries(incident_id=incident_id) if e.event == "ci.refused"]
    assert audit and "head_sha" in audit[0].reason and "not starting with '-'" in audit[0].reason


def test_the_repo_cache_never_reads_a_revision_as_an_option(open_tmp: Path) -> None:
    """Defence in depth below the job's validation: the cache's own git calls end options first."""
    repo = open_tmp / "calc"
    hostile_repo(repo, {})
    marker = open_tmp / "PWNED"
    cache = RepoCache(open_tmp / "work", "calc", str(repo))
    cache.update(want=[INJECTED.format(marker=marker)])
    assert not marker.exists()
    assert not cache.has(f"--output={marker}")
    assert not marker.exists()


@pytest.mark.parametrize("field,value", [("bad", "--upload-pack=touch /tmp/x"), ("good", "-h"),
                                          ("url", "--upload-pack=touch /tmp/x"), ("url", "ext::sh -c touch% /tmp/x"),
                                          ("url", "relative/path"), ("bad", "main\nHEAD")])
def test_ci_jobs_refuse_options_and_remote_helpers(field: str, value: str) -> None:
    from heald.ci import InvalidJob

    kw = {"repo": "calc", "url": "https://github.com/octo/calc.git", "bad": "a" * 40, field: value}
    with pytest.raises(InvalidJob, match="expected"):
        CiJob(**kw)  # type: ignore[arg-type]


def test_ci_remedy_parameters_refuse_a_hostile_clone_url() -> None:
    from heald import remedies

    base = {"repo": "octo/calc", "base": "a" * 40, "commit": "b" * 40}
    with pytest.raises(remedies.RemedyParamsError, match="url"):
        remedies.validate_params("revert_commit", {**base, "url": "--upload-pack=touch /tmp/x"})
    assert remedies.validate_params("revert_commit", {**base, "url": "https://github.com/octo/calc.git"})


# -- a sender cannot pose as heald's own sandbox ----------------------------------------------------

def test_a_forged_sandbox_finding_does_not_make_heald_push_a_revert(open_tmp: Path, heald_yaml) -> None:
    """A signal claiming to be heald's reproduction (``kind: ci_reproduced``, verdict
    ``regression``) with a culprit, a clone URL (a repository on heald's host) and a forged
    "before" (tests failing): before the fix the CI runbook took it at its word, and heald — as
    root — cloned that repository, reverted the named commit and pushed a branch into it."""
    import json

    from heald.engine import Runtime
    from tests.ci.repos import bare_remote, history, new_repo
    from tests.conftest import wait_for

    repo, _ = new_repo(open_tmp / "calc")
    victim = history(repo, 3)[1]
    remote = bare_remote(repo, open_tmp / "important.git")
    head = sh("git", f"--git-dir={remote}", "rev-parse", "main", cwd=open_tmp).strip()
    cfg = load_config(heald_yaml())
    forged_before = {"tests": {"command": "python -m pytest", "exit": 1, "ok": False, "duration_s": 1.0,
                               "failed_tests": []}}
    sig = Signal(source="sandbox", kind="ci_reproduced", service="calc", severity=Severity.error,
                 summary="reproduced: regression",
                 labels={"repo": "calc", "head_sha": head, "head_branch": "main", "verdict": "regression"},
                 annotations={"culprit_sha": victim, "culprit_short": victim[:12], "culprit_subject": "x",
                              "culprit_author": "x", "culprit_age": "1 d", "bisect_log": "x", "repo_url": str(remote),
                              "test_command": "", "investigation": json.dumps({"before": forged_before})})
    rt = Runtime(cfg, manage_services=False, run_probes=False)
    rt.start()
    try:
        inc = rt.ingest(sig, actor="test").incident_id
        done = wait_for(lambda: ((i := rt.store.get_incident(inc)).state.terminal
                                 or i.state == IncidentState.needs_attention) and i, timeout=400, what="the end or a hand-over")
        actions = rt.store.actions_for(done.id)
        [stored] = rt.store.signals_for(done.id)
    finally:
        rt.stop()
    branches = sh("git", f"--git-dir={remote}", "for-each-ref", "--format=%(refname:short)", "refs/heads", cwd=open_tmp)
    assert branches.split() == ["main"], f"heald pushed into {remote}: {branches}"
    assert not [a for a in actions if a.remedy == "revert_commit"]
    assert (stored.source, stored.kind) == ("claimed-sandbox", "claimed-ci_reproduced")
    assert "only heald's own sandbox" in stored.annotations["heald_note"]
