"""CI classifiers (``signatures/ci.py``) on pytest, unittest, ruff, flake8, black and pip output."""

from __future__ import annotations

from heald.diagnose.signatures import classify

PYTEST_FAIL = """\
============================= test session starts ==============================
platform linux -- Python 3.12.3, pytest-8.2.0, pluggy-1.5.0
collected 12 items

tests/test_cart.py ..F.........                                          [100%]

=================================== FAILURES ===================================
_______________________________ test_total_vat _________________________________

    def test_total_vat():
>       assert total([Item(10)], vat=0.2) == 12
E       assert 10.0 == 12
E        +  where 10.0 = total([Item(price=10)], vat=0.2)

tests/test_cart.py:14: AssertionError
=========================== short test summary info ============================
FAILED tests/test_cart.py::test_total_vat - assert 10.0 == 12
========================= 1 failed, 11 passed in 0.21s =========================
"""

UNITTEST = """\
..F.E
======================================================================
ERROR: test_load (tests.test_store.StoreTest.test_load)
----------------------------------------------------------------------
Traceback (most recent call last):
  File "/w/tests/test_store.py", line 20, in test_load
    self.assertEqual(load("x"), {})
KeyError: 'x'

======================================================================
FAIL: test_save (tests.test_store.StoreTest.test_save)
----------------------------------------------------------------------
AssertionError: 1 != 2

----------------------------------------------------------------------
Ran 5 tests in 0.004s

FAILED (failures=1, errors=1)
"""


def cats(text: str) -> list[str]:
    return [c.category for c in classify(text)]


def test_pytest_failure_summary() -> None:
    found = {c.category: c for c in classify(PYTEST_FAIL)}
    assert cats(PYTEST_FAIL)[0] == "test_failure"
    tf = found["test_failure"]
    assert tf.details["tests"] == ["tests/test_cart.py::test_total_vat"]
    assert tf.details["counts"] == {"failed": 1, "passed": 11}
    assert "1 failed, 11 passed" in tf.evidence[-1]


def test_unittest_summary() -> None:
    found = {c.category: c for c in classify(UNITTEST)}
    assert found["test_failure"].details["counts"] == {"failed": 1, "error": 1}
    assert "tests.test_store.StoreTest.test_save" in " ".join(found["test_failure"].details["tests"])


def test_collection_error_with_syntax_error() -> None:
    text = """\
==================================== ERRORS ====================================
____________________ ERROR collecting tests/test_api.py ________________________
/usr/lib/python3.12/site-packages/_pytest/python.py:493: in importtestmodule
    mod = import_path(
E     File "/w/src/api.py", line 9
E       def handler(request)
E                           ^
E   SyntaxError: expected ':'
=========================== short test summary info ============================
ERROR tests/test_api.py
!!!!!!!!!!!!!!!!!!!! Interrupted: 1 error during collection !!!!!!!!!!!!!!!!!!!!
=============================== 1 error in 0.09s ===============================
"""
    assert cats(text)[0] == "test_collection_error"


def test_missing_module_in_collection_outranks_the_collection_error() -> None:
    text = """\
ImportError while importing test module '/w/tests/test_cfg.py'.
Hint: make sure your test modules/packages have valid Python names.
tests/test_cfg.py:3: in <module>
    import yaml
E   ModuleNotFoundError: No module named 'yaml'
ERROR tests/test_cfg.py
=============================== 1 error in 0.11s ==============================="""
    found = classify(text)
    assert found[0].category == "missing_module" and found[0].details["module"] == "yaml"
    assert "test_collection_error" in cats(text)


def test_ruff_flake8_black_isort() -> None:
    assert cats("src/shop/cart.py:1:8: F401 [*] `os` imported but unused\nFound 1 error.\n"
                "[*] 1 fixable with the `--fix` option.")[0] == "lint_error"
    assert cats("F401 [*] `os` imported but unused\n --> src/shop/cart.py:1:8\n  |\n1 | import os\n  |        ^^\n"
                "  |\nhelp: Remove unused import: `os`\n\nFound 1 error.")[0] == "lint_error"
    assert cats("./shop/cart.py:10:80: E501 line too long (88 > 79 characters)")[0] == "lint_error"
    assert cats("would reformat /w/src/shop/cart.py\n\nOh no! 💥 💔 💥\n1 file would be reformatted, "
                "4 files would be left unchanged.")[0] == "lint_error"
    assert cats("ERROR: /w/src/shop/cart.py Imports are incorrectly sorted and/or formatted.")[0] == "lint_error"


def test_pip_resolution_and_build_errors() -> None:
    resolution = """\
ERROR: Could not find a version that satisfies the requirement requests==99.0 (from versions: 2.31.0, 2.32.3)
ERROR: No matching distribution found for requests==99.0"""
    found = classify(resolution)
    assert found[0].category == "dependency_resolution" and found[0].details["requirement"] == "requests==99.0"
    conflict = """\
ERROR: Cannot install flask==3.0.0 and werkzeug==2.0.0 because these package versions have conflicting dependencies.

The conflict is caused by:
    The user requested werkzeug==2.0.0
    flask 3.0.0 depends on Werkzeug>=3.0.0

ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/en/latest/topics/dependency-resolution/"""
    assert cats(conflict)[0] == "dependency_resolution"
    build = """\
  error: subprocess-exited-with-error

  × Building wheel for psycopg2 (pyproject.toml) did not run successfully.
  │ exit code: 1
  ╰─> [12 lines of output]
      Error: pg_config executable not found.
  ERROR: Failed building wheel for psycopg2
ERROR: Could not build wheels for psycopg2, which is required to install pyproject.toml-based projects"""
    assert cats(build)[0] == "dependency_install"


def test_timeout_drift_and_flaky() -> None:
    assert cats("2024-05-01T10:00:00.0000000Z ##[error]The job running on runner GitHub Actions 2 has exceeded the "
                "maximum execution time of 30 minutes.")[0] == "ci_timeout"
    assert cats("+++++++++++++++++++++++++++++++++++ Timeout ++++++++++++++++++++++++++++++++++++\n"
                "E       Failed: Timeout >5.0s")[0] == "ci_timeout"
    assert cats("/home/runner/work/_temp/abc.sh: line 1: tox: command not found\n"
                "##[error]Process completed with exit code 127.")[0] == "environment_drift"
    assert cats("tests/test_net.py::test_fetch RERUN\ntests/test_net.py::test_fetch PASSED\n"
                "==================== 5 passed, 1 rerun in 3.02s ====================")[0] == "flaky_test"


def test_failed_ids_of_class_methods_and_non_python_items() -> None:
    """pytest's short summary names methods as ``file::Class::test`` and plugin items (mypy's
    yml cases) by their file; every id is kept whole, without the ``-`` separator."""
    from heald.ci.investigate import failed_test_ids

    out = ("=========================== short test summary info ============================\n"
           "FAILED tests/test_converters.py::TestDefaultIfNone::test_none_value - assert 42 == None\n"
           "FAILED tests/test_mypy.yml::testAttrsAnnotated - \n"
           "FAILED tests/test_funcs.py::TestAssoc::test_unknown[a-b] - Failed: DID NOT WARN. N...\n"
           "3 failed, 1323 passed in 9.63s\n")
    assert failed_test_ids(out) == ["tests/test_converters.py::TestDefaultIfNone::test_none_value",
                                    "tests/test_mypy.yml::testAttrsAnnotated",
                                    "tests/test_funcs.py::TestAssoc::test_unknown[a-b]"]
