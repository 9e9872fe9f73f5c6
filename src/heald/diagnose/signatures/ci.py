"""CI output: pytest and unittest summaries and collection errors, ruff / flake8 / black / isort,
pip (and uv, poetry) resolution and install errors, missing modules, timeouts, environment
drift and flaky tests.

(Written by issue 5's helper because nothing existed yet when the eval needed CI cases
classified; issue 4's helper owns this file and may extend or replace the rules.)

Formats recognised, each as the named tool prints it (lines may carry a CI timestamp prefix
such as GitHub Actions' ``2024-05-01T10:00:00.1234567Z``):
- pytest: ``FAILED tests/test_a.py::test_x - AssertionError: …`` and ``ERROR tests/test_b.py``
  in the short test summary; the closing line ``==== 1 failed, 3 passed in 0.12s ====``;
  ``____ ERROR collecting tests/test_b.py ____``, ``ImportError while importing test module``,
  ``Interrupted: 1 error during collection``; pytest-timeout ``Failed: Timeout >5.0s``;
  pytest-rerunfailures ``RERUN`` and ``1 rerun``;
- unittest: ``FAIL: test_x (tests.test_mod.TestX)``, ``Ran 5 tests in 0.003s``, ``FAILED
  (failures=1, errors=1)``, ``ImportError: Failed to import test module: tests.test_x``;
- ruff ``src/x.py:1:8: F401 [*] `os` imported but unused`` (and its newer multi-line form
  ``F401 [*] … --> src/x.py:1:8``, ``Found 2 errors.``), ``Would reformat: src/x.py``; flake8
  ``x.py:10:80: E501 line too long (88 > 79 characters)``; black ``would reformat x.py``;
  isort ``ERROR: … Imports are incorrectly sorted``;
- pip ``ERROR: Could not find a version that satisfies the requirement foo==9.9``, ``ERROR: No
  matching distribution found for foo``, ``ResolutionImpossible``, ``because these package
  versions have conflicting dependencies``; ``error: subprocess-exited-with-error``, ``ERROR:
  Failed building wheel for foo``, ``Could not build wheels for foo``; uv ``No solution found
  when resolving dependencies``; poetry ``SolverProblemError``;
- ``ModuleNotFoundError: No module named 'yaml'`` (also pytest's ``E   ModuleNotFoundError``);
- GitHub Actions ``The job running on runner … has exceeded the maximum execution time``,
  ``The operation was canceled``; shells ``tox: command not found``; actions/setup-python
  ``Version 3.7 with arch x64 not found``.
"""

from __future__ import annotations

import re

from heald.diagnose.signatures.base import Classification, Rule, register, rule_classifier, rx

_PYTEST_SUMMARY = re.compile(r"={2,} (?P<body>(?:\d+ \w+(?:, )?)+)(?: in [\d.]+s(?: \([\d:]+\))?)? ={2,}")
_COUNTS = re.compile(r"(?P<n>\d+) (?P<what>failed|passed|errors?|skipped|xfailed|xpassed|rerun|deselected|warnings?)")
#: pytest's short summary line (``-rfE``): ``FAILED path::Class::test[param] - reason``. A
#: parametrized id may hold any character between its brackets (``+``, ``\``, ``;``, spaces, ``-``).
_FAILED_ID = re.compile(r"^(?:\S+\s+)?(?:FAILED|ERROR) (?P<id>[\w/.\-]+\.(?:py|yml|yaml)(?:::[\w.\-]+)*(?:\[.*?\])?)"
                        r"(?: -(?: (?P<why>.*))?)?$")
_COLLECT_PATH = re.compile(r"ERROR collecting (?P<path>[\w/.\-]+\.py)|^(?:\S+\s+)?ERROR (?P<p2>[\w/.\-]+\.py)(?: - .*)?$")
_UNITTEST_FAIL = re.compile(r"^(?:\S+\s+)?(?P<kind>FAIL|ERROR): (?P<test>\w+) \((?P<where>[\w.]+)\)")
_UNITTEST_RESULT = re.compile(r"\bFAILED \((?P<body>(?:failures|errors|skipped|expected failures|unexpected successes)=\d+"
                              r"(?:, (?:failures|errors|skipped|expected failures|unexpected successes)=\d+)*)\)")
_MISSING = re.compile(r"(?:ModuleNotFoundError|ImportError): No module named '?(?P<module>[\w.]+)'?")


@register("ci_tests")
def test_runs(text: str) -> list[Classification]:
    """pytest / unittest results: ``test_collection_error`` when tests could not be collected,
    ``test_failure`` when tests ran and failed, ``flaky_test`` when a rerun made them pass,
    ``ci_timeout`` for pytest-timeout. Details: failed test ids, counts, the first reason."""
    out: list[Classification] = []
    counts: dict[str, int] = {}
    summary_line = ""
    failed: list[str] = []
    reasons: list[str] = []
    collection: list[str] = []
    ev_failed: list[str] = []
    for line in text.splitlines():
        s = line.strip()
        m = _PYTEST_SUMMARY.search(s)
        if m and _COUNTS.search(m.group("body")):
            summary_line = s
            counts = {}
            for c in _COUNTS.finditer(m.group("body")):
                what = c.group("what").rstrip("s") if c.group("what") not in ("passed",) else "passed"
                counts[what] = counts.get(what, 0) + int(c.group("n"))
            continue
        if "ERROR collecting" in s or "ImportError while importing test module" in s or \
                "error during collection" in s or "Failed to import test module" in s or \
                "unittest.loader._FailedTest" in s or "errors during collection" in s:
            if len(collection) < 5:
                collection.append(s)
            continue
        fm = _FAILED_ID.match(s)
        if fm and ("::" in fm.group("id") or s.split()[-1].endswith(".py") or fm.group("why")):
            kind = "ERROR" if " ERROR " in f" {s} " else "FAILED"
            if kind == "ERROR" and "::" not in fm.group("id"):
                if len(collection) < 5:
                    collection.append(s)
            else:
                failed.append(fm.group("id"))
                if fm.group("why"):
                    reasons.append(fm.group("why"))
                if len(ev_failed) < 5:
                    ev_failed.append(s)
            continue
        um = _UNITTEST_FAIL.match(s)
        if um:
            failed.append(f"{um.group('where')}.{um.group('test')}")
            if len(ev_failed) < 5:
                ev_failed.append(s)
            continue
        ur = _UNITTEST_RESULT.search(s)
        if ur:
            summary_line = s
            for part in ur.group("body").split(", "):
                k, v = part.split("=")
                counts["failed" if k == "failures" else k.rstrip("s")] = int(v)
    details = {"tests": failed[:20], "counts": counts}
    if reasons:
        details["reason"] = reasons[0][:300]
    evidence = [*ev_failed, *([summary_line] if summary_line else [])]
    if collection:
        out.append(Classification("test_collection_error", 0.9, [*collection, *([summary_line] if summary_line else [])],
                                  details))
    if counts.get("failed") or (failed and not collection):
        out.append(Classification("test_failure", 0.88, evidence or failed[:5], details))
    elif counts.get("rerun") and counts.get("passed") and not counts.get("error"):
        out.append(Classification("flaky_test", 0.8, [summary_line], details))
    return out


def failing_ids(text: str) -> tuple[list[str], list[str]]:
    """Every failing test of a pytest (``-rfE`` short summary) or unittest (``FAIL: test (mod.Class)``)
    run's output, and the test files that could not be collected (pytest's ``ERROR collecting
    path`` / ``ERROR path``): ``(test ids, collection-error paths)``, in order, without
    duplicates. Nothing is capped (:func:`test_runs` keeps only the first 20 as details)."""
    failed: list[str] = []
    collect: list[str] = []
    for line in text.splitlines():
        s = line.strip()
        fm = _FAILED_ID.match(s)
        if fm and "::" in fm.group("id"):
            failed.append(fm.group("id"))
            continue
        cm = _COLLECT_PATH.search(s)
        if cm:
            collect.append(cm.group("path") or cm.group("p2"))
            continue
        um = _UNITTEST_FAIL.match(s)
        if um:
            failed.append(f"{um.group('where')}.{um.group('test')}")
    return list(dict.fromkeys(failed)), list(dict.fromkeys(collect))


RULES = [
    # missing modules
    Rule("missing_module", rx(r"(?:ModuleNotFoundError|ImportError): No module named '?(?P<module>[\w.]+)'?"), 0.93,
         ("module",)),
    Rule("missing_module", rx(r"ImportError: cannot import name '(?P<name>\w+)' from '(?P<module>[\w.]+)' "
                              r"\(unknown location\)"), 0.8, ("module",)),
    # lint and format
    Rule("lint_error", re.compile(r"^(?:\S+\s+)?(?P<file>[\w/.\-]+\.pyi?):\d+:\d+: (?P<code>[A-Z]{1,3}\d{3,4})\b"), 0.9,
         ("code", "file")),
    Rule("lint_error", re.compile(r"^(?:\S+\s+)?(?P<code>[A-Z]{1,3}\d{3,4}) (?:\[\*\] )?\S.*$"), 0.55, ("code",)),
    Rule("lint_error", re.compile(r"^\s*(?:\S+\s+)?--> (?P<file>[\w/.\-]+\.pyi?):\d+:\d+$"), 0.7, ("file",)),
    Rule("lint_error", rx(r"^(?:\S+\s+)?Found \d+ errors?\.|\[\*\] \d+ fixable with the `?--fix`? option|"
                          r"Would reformat:? |would reformat |\d+ files? would be reformatted|Oh no! 💥|"
                          r"Imports are incorrectly sorted|would fix \d+ errors?"), 0.88),
    # pip / uv / poetry
    Rule("dependency_resolution", rx(r"Could not find a version that satisfies the requirement (?P<requirement>\S+)|"
                                     r"No matching distribution found for (?P<requirement2>\S+)|ResolutionImpossible|"
                                     r"conflicting dependencies|The conflict is caused by|"
                                     r"No solution found when resolving dependencies|SolverProblemError|"
                                     r"version solving failed|requires a different Python"), 0.92, ("requirement",)),
    Rule("dependency_install", rx(r"Failed building wheel for (?P<package>\S+)|Could not build wheels for (?P<package2>\S+)|"
                                  r"subprocess-exited-with-error|metadata-generation-failed|"
                                  r"Building wheel for \S+ \(pyproject\.toml\) did not run successfully|"
                                  r"setup\.py egg_info did not run successfully|Failed to build installable wheels|"
                                  r"THESE PACKAGES DO NOT MATCH THE HASHES|× Failed to build|"
                                  r"fatal error: [\w/]+\.h: No such file or directory|"
                                  r"ERROR: Could not install packages due to an OSError"), 0.9, ("package",)),
    # time limits
    Rule("ci_timeout", rx(r"has exceeded the maximum execution time|\+{3,} Timeout \+{3,}|Failed: Timeout >[\d.]+s|"
                          r"The action has timed out|timed out after \d+ (?:minutes|seconds)|"
                          r"Job (?:exceeded|timed out)|The job was canceled because it exceeded"), 0.88),
    Rule("ci_timeout", rx(r"Process completed with exit code 124\b|timeout: sending signal|"
                          r"Terminated after \d+ ?(?:s|m|seconds|minutes)\b|Timed out waiting for"), 0.75),
    # flaky tests (the flaky and pytest-rerunfailures plugins)
    Rule("flaky_test", rx(r"Flaky Test Report|failed \(\d+ runs? remaining out of \d+\)|"
                          r"passed \d+ out of the required \d+ times|\bRERUN\b.*\n?.*\bPASSED\b|"
                          r"(?:test|tests) (?:is|are|were) flaky|marked flaky|flaky (?:test|failure) detected"), 0.8),
    # environment drift
    Rule("environment_drift", rx(r"\b[\w.\-]+: command not found|/bin/sh: \d+: [\w.\-]+: not found|"
                                 r"[Vv]ersion '?[\d.]+'? with arch(?:itecture)? '?\w+'? (?:was )?not found|"
                                 r"pyenv: version `[^']+' (?:is )?not installed|No such file or directory: '?python[\d.]*'?|"
                                 r"python[\d.]*: (?:command )?not found|error: externally-managed-environment|"
                                 r"The specified python version file at|Unable to locate package|"
                                 r"No interpreter found for Python|InterpreterNotFound|"
                                 r"unsupported (?:python|interpreter) version|runner image \S+ is deprecated"), 0.8),
]

register("ci_tools")(rule_classifier(RULES))
