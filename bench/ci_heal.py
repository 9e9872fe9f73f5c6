"""How well heald heals real CI failures: cases built at run time from real pure-Python projects.

For each project (itsdangerous and more-itertools by default; attrs on request) the script downloads several release
sdists from PyPI with pip (into a cache directory; nothing is committed) and builds a git
history of the real release-to-release changes: per release, one commit per changed file outside
the code, then one commit with the code, tests and build files. Then, per case, a repository and
``heald heal-ci`` on it (the whole engine, the real sandbox):

- ``culprit``: a breaking commit injected between two releases (the break is carried into the
  later releases); expected: a revert of exactly that commit, validated and pushed;
- ``dependency``: the last release with a test dependency dropped from its declaration;
  expected: the dependency declared again with a version that installs;
- ``lint``: the last release plus a commit adding an unused import (the project lints with
  ruff); expected: the project's ruff autofix;
- ``never-passed``: a commit adding a test that fails; expected: an escalation, no revert.

It prints per case: healed?, correct culprit?, test-suite runs (bisection runs against the bound
ceil(log2 N) + 3, N the commits between good and bad), wall time; and the totals: heal rate and
bad reverts (must be 0). Usage::

    .venv/bin/python bench/ci_heal.py [--projects itsdangerous,attrs,more-itertools] [--cases ...] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from _common import ci_work_dir, sdist

PROJECTS: dict[str, dict[str, Any]] = {
    "itsdangerous": {
        "versions": ["2.0.0", "2.0.1", "2.1.0", "2.1.1", "2.1.2", "2.2.0"],
        "break_after": "2.1.0",
        "break": ("src/itsdangerous/encoding.py", None,
                  "\n\n_heald_encode = base64_encode\n\n\ndef base64_encode(string):\n"
                  "    return _heald_encode(string) + b\"=\"\n"),
        "drop": {"requirements/tests.txt": "freezegun", "requirements/tests.in": "freezegun",
                 "requirements/dev.txt": "freezegun"},
        "lint": "src/itsdangerous/signer.py",
        "new_test": "from itsdangerous import Signer\n\n\ndef test_heald_new_feature():\n"
                    "    assert Signer(b'k').sign(b'v').count(b'.') == 2\n",
    },
    "attrs": {
        "versions": ["23.1.0", "23.2.0", "24.1.0", "24.2.0"],
        "break_after": "23.2.0",
        "break": ("src/attr/converters.py", "def to_bool(",
                  "_heald_default_if_none = default_if_none\n\n\ndef default_if_none(default=NOTHING, factory=None):\n"
                  "    convert = _heald_default_if_none(default, factory)\n"
                  "    return lambda val: convert(val) if val is not None else None\n\n\n"),
        # attrs' type-checking tests compare mypy's messages with those of the mypy of the
        # release's day; today's mypy words them differently on every commit (environment drift
        # heald would rightly refuse to revert), so the cases run the rest of the suite.
        # TestAssoc::test_unknown wants a DeprecationWarning that today's hypothesis and pytest
        # no longer let through on every example: it fails at every release here.
        "test_command": "python -m pytest -q -rfE -p no:cacheprovider --ignore=tests/test_mypy.yml "
                        "--deselect tests/test_funcs.py::TestAssoc::test_unknown",
        "drop": {"pyproject.toml": "\"hypothesis\","},
        "lint": "src/attr/_cmp.py",
        "new_test": "import attr\n\n\ndef test_heald_new_feature():\n    assert attr.__version__.startswith('99')\n",
    },
    "more-itertools": {
        "versions": ["10.0.0", "10.1.0", "10.2.0", "10.3.0", "10.4.0", "10.5.0"],
        "break_after": "10.2.0",
        "break": ("more_itertools/more.py", "def first(",
                  "_heald_chunked = chunked\n\n\ndef chunked(iterable, n, strict=False):\n"
                  "    return _heald_chunked(iterable, n + 1 if n and n > 2 else n, strict=strict)\n\n\n"),
        "drop": None,
        "lint": None,
        "new_test": "import more_itertools as mi\n\n\ndef test_heald_new_feature():\n    assert list(mi.take(2, [1])) == [1, 1]\n",
    },
    # tests configured only in tox.ini ([testenv] commands = pytest -v --doctest-modules …); only
    # 0.9.0's sdist ships tox.ini, so the history is that release and ordinary commits after it
    "tabulate": {
        "versions": ["0.9.0"],
        "break_after": "0.9.0",
        "break": ("tabulate/__init__.py", "def _padright(",
                  "_heald_padleft = _padleft\n\n\ndef _padleft(width, s):\n"
                  "    return _heald_padleft(width + 1, s)\n\n\n"),
        "pad": 6,
        "drop": None,
        "lint": None,
        "env_test": "test/test_heald_env.py",
        "new_test": "from tabulate import tabulate\n\n\ndef test_heald_new_feature():\n"
                    "    assert tabulate([[1]], tablefmt='heald') == 'heald'\n",
    },
    # nose-style layout: unittest test cases in src/tests/test.py (pytest's defaults collect none)
    "decorator": {
        "versions": ["4.4.2", "5.0.9", "5.1.0", "5.1.1"],
        "break_after": "5.0.9",
        "break": ("src/decorator.py", "class ContextManager(",
                  "_heald_decorate = decorate\n\n\ndef decorate(func, caller, extras=(), *args, **kw):\n"
                  "    return _heald_decorate(func, caller, (), *args, **kw)\n\n\n"),
        "drop": None,
        "lint": None,
        "env_test": "src/tests/test_heald_env.py",
        "new_test": "import unittest\n\nimport decorator\n\n\nclass HealdTest(unittest.TestCase):\n"
                    "    def test_heald_new_feature(self):\n        self.assertTrue(decorator.__version__.startswith('99'))\n",
        "new_test_path": "src/tests/test_heald_new.py",
    },
    # parametrized ids with '+', ';', spaces and quotes (versions, markers, specifiers); some test
    # modules import 'pretend', which the project declares only in tests/requirements.txt: their
    # collection errors are there at every commit (baseline), not the regression
    "packaging": {
        "versions": ["23.0", "23.1", "23.2", "24.0"],
        "break_after": "23.1",
        "break": ("src/packaging/version.py", "def _parse_letter_version(",
                  "_heald_version_str = Version.__str__\n\n\ndef _heald_broken_str(self):\n"
                  "    return _heald_version_str(self).replace(\"+\", \"-\")\n\n\n"
                  "Version.__str__ = _heald_broken_str\n\n\n"),
        "drop": None,
        "lint": None,
        "env_test": "tests/test_heald_env.py",
        "new_test": "from packaging.version import Version\n\n\ndef test_heald_new_feature():\n"
                    "    assert Version('1.0').major == 2\n",
    },
}
ENV_TEST = ("import socket\n\n\ndef test_reaches_the_package_index():\n"
            "    socket.create_connection(('pypi.org', 443), timeout=5).close()\n")
# attrs is not in the default set: on this machine its suite is not deterministic at its own
# releases (hypothesis-driven tests that want a DeprecationWarning on every example fail on some
# runs, so bisection and validation see noise), which measures attrs' flakiness, not heald.
DEFAULT_PROJECTS = ("itsdangerous", "more-itertools", "tabulate", "decorator", "packaging")
CASES = ("culprit", "env", "dependency", "lint", "never-passed")
CODE = (".py", ".toml", ".cfg", ".txt", ".in", ".ini", ".pyi", ".typed")


def sh(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    return subprocess.run(args, cwd=cwd, check=True, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}).stdout


def tree_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and "PKG-INFO" not in p.name and ".egg-info" not in str(p)}


def commit(repo: Path, message: str, author: str = "Release Bot <release@example.com>") -> str:
    name, email = author[:-1].split(" <")
    sh("git", "add", "-A", cwd=repo)
    sh("git", "-c", f"user.name={name}", "-c", f"user.email={email}", "commit", "-q", "--allow-empty", "-m", message,
       cwd=repo)
    return sh("git", "rev-parse", "HEAD", cwd=repo).strip()


def write_tree(repo: Path, files: dict[str, bytes], only: set[str] | None = None) -> None:
    current = {str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts}
    for path in (only if only is not None else current | set(files)):
        target = repo / path
        if path in files:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(files[path])
        elif target.exists():
            target.unlink()


def insert_break(text: str, anchor: str | None, block: str) -> str:
    """``text`` with the breaking ``block`` inserted before the first line starting with ``anchor``
    (appended when ``anchor`` is None). An anchor in code that the later releases leave alone
    keeps the culprit revertable, as most real culprits are."""
    if anchor is None:
        return text + block
    i = text.index("\n" + anchor) + 1
    return text[:i] + block + text[i:]


def build_history(repo: Path, releases: dict[str, Path], spec: dict[str, Any], inject: bool,
                  env: bool = False) -> tuple[str, str | None]:
    """The release history (see the module docstring); returns (first commit, injected culprit).
    ``env``: the first commit also adds a test that fails in any sandbox without network (an
    environment-only failure at every commit)."""
    sh("git", "init", "-q", "-b", "main", cwd=repo)
    culprit = None
    first = None
    module, anchor, block = spec["break"]
    broken = False
    for v, src in releases.items():
        files = tree_files(src)
        if broken and module in files:
            files[module] = insert_break(files[module].decode(), anchor, block).encode()
        if env:
            files[spec.get("env_test", "tests/test_heald_env.py")] = ENV_TEST.encode()
        if first is None:
            write_tree(repo, files)
            first = commit(repo, f"Release {v}")
            sh("git", "tag", v, cwd=repo)  # projects that version from git tags (hatch-vcs) need them
        else:
            current = {str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts}
            changed = {p for p in current | set(files)
                       if (repo / p).exists() != (p in files) or (p in files and (repo / p).read_bytes() != files[p])}
            docs = sorted(p for p in changed if not p.endswith(CODE) and "tests" not in p.split("/"))
            for p in docs:
                write_tree(repo, files, {p})
                commit(repo, f"{v}: update {p}")
            write_tree(repo, files)
            commit(repo, f"Release {v}")
            sh("git", "tag", v, cwd=repo)
        if inject and v == spec["break_after"]:
            target = repo / module
            target.write_text(insert_break(target.read_text(), anchor, block))
            culprit = commit(repo, f"Speed up {Path(module).stem}", author="Eve Breaker <eve@example.com>")
            broken = True
            for i in range(spec.get("pad", 0)):  # ordinary commits after it (a one-release history)
                with open(repo / "CHANGES.heald", "a") as fh:
                    fh.write(f"- note {i}\n")
                commit(repo, f"Changelog note {i}")
    assert first is not None
    return first, culprit


def heal(cfg: Path, repo: Path, *args: str) -> tuple[dict[str, Any], float]:
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "heald.cli", "--config", str(cfg), "heal-ci", "--repo", str(repo),
                        "--bad", "main", "--json", *args], capture_output=True, text=True, timeout=3600,
                       env={**os.environ, "GITHUB_TOKEN": ""})
    try:
        data = json.loads(r.stdout)
    except json.JSONDecodeError:
        data = {"state": "error", "outcome": "error", "reason": r.stderr[-1500:]}
    return data, time.monotonic() - t0


def run_case(project: str, case: str, spec: dict[str, Any], releases: dict[str, Path], base: Path,
             pip_cache: Path) -> dict[str, Any] | None:
    if (case == "dependency" and not spec["drop"]) or (case == "lint" and not spec["lint"]):
        return None
    work = base / f"{project}-{case}"
    repo = work / "repo"
    repo.mkdir(parents=True)
    work.chmod(0o755)
    first, culprit = build_history(repo, releases if case in ("culprit", "env") else dict(list(releases.items())[-2:]),
                                   spec, inject=(case in ("culprit", "env")), env=(case == "env"))
    args: list[str] = []
    expected = culprit
    if case == "culprit":
        args = ["--good", first]
    elif case == "env":
        pass  # no --good: heald looks back, judging test by test (the network test fails everywhere)
    elif case == "dependency":
        for path, needle in spec["drop"].items():
            p = repo / path
            p.write_text("".join(ln for ln in p.read_text().splitlines(keepends=True) if needle not in ln))
        commit(repo, "Tidy the test requirements", author="Eve Breaker <eve@example.com>")
    elif case == "lint":
        p = repo / spec["lint"]
        text = p.read_text()
        i = text.index("\nimport ") + 1 if "\nimport " in text else 0
        p.write_text(text[:i] + "import os\n" + text[i:])
        commit(repo, "Refactor", author="Eve Breaker <eve@example.com>")
    else:
        new_test = repo / spec.get("new_test_path", str(Path(spec.get("env_test", "tests/x.py")).parent
                                                        / "test_heald_new_feature.py"))
        new_test.write_text(spec["new_test"])
        expected = commit(repo, "Add a test for the next feature", author="Eve Breaker <eve@example.com>")
        args = ["--good", first]
    cfg = work / "heald.yaml"
    cfg.write_text(yaml.safe_dump({"state_dir": str(work / "state"), "ci": {"work_dir": str(work / "ci"),
                                                                           "pip_cache_dir": str(pip_cache)},
                                   "healing": {"group_wait_seconds": 0.05, "max_attempts": 2}}))
    if spec.get("test_command") and os.environ.get("HEALD_BENCH_TEST_CMD"):  # attrs only, on request
        args += ["--test-cmd", spec["test_command"]]
    d, secs = heal(cfg, repo, *args)
    n = d.get("commits_in_range")
    bisect_runs = None
    if d.get("bisect_runs") is not None and d.get("good_sha"):
        bisect_runs = (1 if case in ("culprit", "never-passed", "env") else 0) + (d.get("bisect_runs") or 0) + 2
    bound = math.ceil(math.log2(n)) + 3 if n else None
    fixable = case != "never-passed"
    test_s = d.get("test_seconds") or 0.0
    if fixable:
        healed = d.get("state") == "resolved"
    else:
        healed = d.get("outcome") == "escalated" and not d.get("remedy")  # escalated or handed over
    got = (d.get("culprit") or {}).get("sha")
    reverted = d.get("remedy") == "revert_commit"
    bad_revert = reverted and (not fixable or got != expected)
    return {"project": project, "case": case, "healed": healed, "outcome": d.get("outcome"), "verdict": d.get("verdict"),
            "remedy": d.get("remedy"), "correct_culprit": (got == expected) if expected else None,
            "commits_in_range": n, "test_runs": d.get("test_runs"), "bisection_runs": bisect_runs, "bisection_bound": bound,
            "within_bound": (bisect_runs <= bound) if (bisect_runs is not None and bound) else None,
            "bad_revert": bad_revert, "seconds": round(secs, 1), "test_seconds": round(test_s, 1),
            "overhead": round(secs / test_s, 2) if test_s else None,
            "test_command_source": (d.get("test_command_source") or "")[:120], "reason": (d.get("reason") or "")[:300]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--projects", default=",".join(DEFAULT_PROJECTS),
                    help="comma-separated, from: " + ", ".join(PROJECTS) + " (default: " + ", ".join(DEFAULT_PROJECTS) + ")")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated, from: " + ", ".join(CASES))
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "heald-bench-sdists",
                    help="where downloaded sdists are kept between runs")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--json", action="store_true", help="print JSON only")
    args = ap.parse_args()
    rows = []
    with ci_work_dir("heald-bench-ci-", keep=args.keep) as (base, pip_cache):
        for project in [p for p in args.projects.split(",") if p]:
            spec = PROJECTS[project]
            releases = {v: sdist(project, v, args.cache) for v in spec["versions"]}
            for case in [c for c in args.cases.split(",") if c]:
                row = run_case(project, case, spec, releases, base, pip_cache)
                if row is None:
                    continue
                rows.append(row)
                if not args.json:
                    print(f"  {project:15} {case:13} healed={row['healed']} culprit={row['correct_culprit']} "
                          f"runs={row['test_runs']} bisection={row['bisection_runs']}/{row['bisection_bound']} "
                          f"{row['seconds']:.0f}s {row['verdict']}", file=sys.stderr, flush=True)
    totals = {"cases": len(rows), "healed": sum(r["healed"] for r in rows),
              "heal_rate": round(sum(r["healed"] for r in rows) / len(rows), 3) if rows else None,
              "bad_reverts": sum(r["bad_revert"] for r in rows),
              "correct_culprits": sum(1 for r in rows if r["correct_culprit"]),
              "culprit_cases": sum(1 for r in rows if r["correct_culprit"] is not None),
              "all_within_bound": all(r["within_bound"] is not False for r in rows)}
    if args.json:
        print(json.dumps({"cases": rows, "totals": totals}, indent=2))
        return 0
    head = (f"{'project':15} {'case':13} {'healed?':8} {'culprit?':9} {'bad rev':8} {'runs':>5} "
            f"{'bisection (≤ bound)':>20} {'time':>8} {'overhead':>9}  verdict; tests from")
    print(head)
    for r in rows:
        cul = "—" if r["correct_culprit"] is None else ("yes" if r["correct_culprit"] else "NO")
        bis = "—" if r["bisection_runs"] is None else f"{r['bisection_runs']} (≤ {r['bisection_bound']})"
        ovh = "—" if r["overhead"] is None else f"{r['overhead']:.2f}x"
        print(f"{r['project']:15} {r['case']:13} {'yes' if r['healed'] else 'NO':8} {cul:9} "
              f"{'YES' if r['bad_revert'] else 'no':8} {str(r['test_runs']):>5} "
              f"{bis:>20} {r['seconds']:>7.1f}s {ovh:>9}  {r['verdict']}; {r['test_command_source'][:60]}")
    print(f"heal rate: {totals['healed']}/{totals['cases']} = {totals['heal_rate']:.0%}; correct culprits: "
          f"{totals['correct_culprits']}/{totals['culprit_cases']}; bad reverts: {totals['bad_reverts']}; "
          f"bisection within ceil(log2 N)+3: {'yes' if totals['all_within_bound'] else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
