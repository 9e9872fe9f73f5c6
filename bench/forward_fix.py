"""Forward fixes on real projects' histories: localization quality (no model), and with a model
endpoint the repair loop's results.

Each case is built at run time from a PyPI sdist (downloaded by pip into a cache directory;
nothing of the project is committed here) and one **real upstream fix** whose commit added a
test: in the released code that contains the fix, the bench reverts the fix's change to the
source file (the ``revert`` pairs below are that commit's source hunks, fixed text → the text
before the fix, read from the project's git history) and removes the tests the fix added. The
release is the first one containing the fix, except for three more-itertools fixes of 8.8/8.9,
whose old sdists pip no longer prepares: there 10.8.0, which still contains the fix. That
is commit 1 ("the bug exists"); commit 2 adds those tests back ("a commit adds a test exposing
an existing bug"). The fix exists upstream: it is the reverted change, and the function it sits
in is the ground truth. A case whose revert does not apply to the sdist, or whose added tests do
not fail at commit 2 in the sandbox, is reported as invalid and not counted.

Then :func:`heald.ci.repair.forward_fix` runs on it through the real sandbox (install, tests,
localization). With no endpoint it stops after the localization and the table says whether the
upstream-fixed file and function are in the top 1/3/5 suspects. With ``--base-url`` and
``--model`` (an OpenAI-compatible endpoint) the repair loop runs and the table adds: a fix
proposed (valid in the sandbox), whether it edits the upstream-fixed file, rounds, tokens
and cost. No repair rate is printed without a real model.

Usage::

    .venv/bin/python bench/forward_fix.py [--cases more-itertools,click] [--json]
    .venv/bin/python bench/forward_fix.py --base-url http://127.0.0.1:11434/v1 --model qwen2.5-coder:7b
"""

from __future__ import annotations

import argparse
import ast
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import ci_work_dir, sdist

CASES: list[dict[str, Any]] = [{'project': 'more-itertools',
  'version': '11.1.0',
  'upstream': 'edb3346f835c',
  'subject': 'Fix empty ranges in numeric_range.__reversed__',
  'file': 'more_itertools/more.py',
  'test_file': 'tests/test_more.py',
  'tests': [('NumericRangeTests', 'test_empty_reversed')],
  'revert': [('    def __reversed__(self):\n'
              '        # Empty iterator\n'
              '        try:\n'
              '            start = self._get_by_index(-1)\n'
              '        except IndexError:\n'
              '            return iter([])\n'
              '\n'
              '        return iter(\n'
              '            numeric_range(start, self._start - self._step, -self._step)\n'
              '        )',
              '    def __reversed__(self):\n'
              '        return iter(\n'
              '            numeric_range(\n'
              '                self._get_by_index(-1), self._start - self._step, -self._step\n'
              '            )\n'
              '        )')]},
 {'project': 'more-itertools',
  'version': '11.0.0',
  'upstream': 'cf186b5de479',
  'subject': 'Fix product_index() with iterator input',
  'file': 'more_itertools/more.py',
  'test_file': 'tests/test_more.py',
  'tests': [('ProductIndexTests', 'test_iterator_input')],
  'revert': [('    pools = tuple(map(tuple, args))\n'
              '    if len(elements) != len(pools):\n'
              "        raise ValueError('element is not a product of args')",
              '    pools = tuple(map(tuple, args))\n'
              '    if len(element) != len(args):\n'
              "        raise ValueError('element is not a product of args')"),
             ('        index = index * len(pool) + pool.index(elem)\n    return index',
              '        index = index * len(pool) + pool.index(elem)\n\n    return index')]},
 {'project': 'more-itertools',
  'version': '10.8.0',
  'upstream': 'cca32949f12d',
  'subject': 'fix last() when __reversed__ is None',
  'file': 'more_itertools/more.py',
  'test_file': 'tests/test_more.py',
  'tests': [('LastTests', 'test_reversed_is_none')],
  'revert': [('        # Work around https://bugs.python.org/issue38525\n'
              "        if getattr(iterable, '__reversed__', None):\n"
              '            return next(reversed(iterable))',
              '        # Work around https://bugs.python.org/issue38525\n'
              "        if hasattr(iterable, '__reversed__'):\n"
              '            return next(reversed(iterable))')]},
 {'project': 'more-itertools',
  'version': '10.6.0',
  'upstream': 'ae37eb38a1d3',
  'subject': 'Add more sample() tests and fix bug in strict option with counts',
  'file': 'more_itertools/more.py',
  'test_file': 'tests/test_more.py',
  'tests': [('SampleTests', 'test_error_cases')],
  'revert': [('            reservoir.append(feed(0))\n',
              '            reservoir.append(feed(0))\n'
              '        if strict and len(reservoir) < k:\n'
              "            raise ValueError('Sample larger than population')\n"),
             ('\n'
              '    if strict and len(reservoir) < k:\n'
              "        raise ValueError('Sample larger than population')\n"
              '    shuffle(reservoir)',
              '\n    shuffle(reservoir)')]},
 {'project': 'more-itertools',
  'version': '10.8.0',
  'upstream': '2e81a562fbac',
  'subject': 'Fix split_before for an empty collections.',
  'file': 'more_itertools/more.py',
  'test_file': 'tests/test_more.py',
  'tests': [('SplitBeforeTest', 'test_empty_collection')],
  'revert': [('        buf.append(item)\n    if buf:\n        yield buf\n',
              '        buf.append(item)\n    yield buf\n')]},
 {'project': 'more-itertools',
  'version': '10.8.0',
  'upstream': '82080967e4ea',
  'subject': 'Handle empty in zip_broadcast',
  'file': 'more_itertools/more.py',
  'test_file': 'tests/test_more.py',
  'tests': [('ZipBroadcastTests', 'test_empty')],
  'revert': [('    """\n    if not objects:\n        return\n\n    iterables = []', '    """\n    iterables = []'),
             ('        if strict:\n'
              '            for it, is_it in filter(itemgetter(1), iterables):\n'
              '                if next(it, _marker) is not _marker:\n'
              '                    raise UnequalIterablesError',
              '        if strict:\n'
              '            for it, is_it in iterables:\n'
              '                if is_it:\n'
              '                    if next(it, _marker) is not _marker:\n'
              '                        raise UnequalIterablesError')]},
 {'project': 'more-itertools',
  'version': '10.8.0',
  'upstream': 'fb89af02fdb7',
  'subject': 'fixed repeat_each() to accept infinite iterators as input',
  'file': 'more_itertools/more.py',
  'test_file': 'tests/test_more.py',
  'tests': [('RepeatEachTests', 'test_infinite_input')],
  'revert': [('    """\n    return chain.from_iterable(map(repeat, iterable, repeat(n)))\n',
              '    """\n    return chain(*map(repeat, iterable, repeat(n)))\n')]},
 {'project': 'click',
  'version': '8.1.8',
  'upstream': '61f8101f4e0d',
  'subject': 'Fix printing of default option value to handle empty strings',
  'file': 'src/click/core.py',
  'test_file': 'tests/test_options.py',
  'tests': [('', 'test_show_default_with_empty_string')],
  'revert': [('                default_string = ""\n'
              '            elif default_value == "":\n'
              '                default_string = \'""\'\n'
              '            else:',
              '                default_string = ""\n            else:')]},
 {'project': 'click',
  'version': '8.2.1',
  'upstream': '4fd2fea0db42',
  'subject': 'Fix condition for setting flag value when type is provided',
  'file': 'src/click/core.py',
  'test_file': 'tests/test_options.py',
  'tests': [('', 'test_flag_value_is_correctly_set'), ('', 'test_non_flag_with_non_negatable_default')],
  'revert': [('\n'
              '        if is_flag and flag_value is None:\n'
              '            flag_value = not self.default\n'
              '\n'
              '        self.type: types.ParamType\n'
              '        if is_flag and type is None:\n'
              '            # Re-guess the type from the flag value instead of the',
              '\n'
              '        self.type: types.ParamType\n'
              '        if is_flag and type is None:\n'
              '            if flag_value is None:\n'
              '                flag_value = not self.default\n'
              '            # Re-guess the type from the flag value instead of the')]},
 {'project': 'click',
  'version': '8.2.1',
  'upstream': 'ac6a2acfdb45',
  'subject': 'Fix shell completion for nested groups',
  'file': 'src/click/shell_completion.py',
  'test_file': 'tests/test_shell_completion.py',
  'tests': [('', 'test_nested_group')],
  'revert': [('                    ) as sub_ctx:\n'
              '                        ctx = sub_ctx\n'
              '                        args = ctx._protected_args + ctx.args\n'
              '                else:',
              '                    ) as sub_ctx:\n'
              '                        args = ctx._protected_args + ctx.args\n'
              '                        ctx = sub_ctx\n'
              '                else:'),
             ('                        ) as sub_sub_ctx:\n'
              '                            sub_ctx = sub_sub_ctx\n'
              '                            args = sub_ctx.args\n',
              '                        ) as sub_sub_ctx:\n'
              '                            args = sub_ctx.args\n'
              '                            sub_ctx = sub_sub_ctx\n')]},
 {'project': 'click',
  'version': '8.2.0',
  'upstream': '1a4d8c1bb1e8',
  'subject': 'Fix metavar for Choice options when show_choices=False (#2365)',
  'file': 'src/click/types.py',
  'test_file': 'tests/test_options.py',
  'tests': [('', 'test_usage_show_choices')],
  'revert': [('    def get_metavar(self, param: Parameter) -> str:\n'
              '        if param.param_type_name == "option" and not param.show_choices:  # type: ignore\n'
              '            choice_metavars = [\n'
              '                convert_type(type(choice)).name.upper() for choice in self.choices\n'
              '            ]\n'
              '            choices_str = "|".join([*dict.fromkeys(choice_metavars)])\n'
              '        else:\n'
              '            choices_str = "|".join([str(i) for i in self.choices])\n',
              '    def get_metavar(self, param: Parameter) -> str:\n'
              '        choices_str = "|".join(self.choices)\n')]},
 {'project': 'click',
  'version': '8.4.0',
  'upstream': '0551bf53588a',
  'subject': 'Fix `HelpFormatter.write_usage` producing spurious characters',
  'file': 'src/click/formatting.py',
  'test_file': 'tests/test_formatting.py',
  'tests': [('', 'test_help_formatter_write_usage'),
            ('', 'test_help_formatter_write_usage_without_args_styled_prefix'),
            ('', 'test_command_write_usage_no_args')],
  'revert': [('\n'
              '        if not args:\n'
              "            # Without args, the prefix's trailing space and the wrap_text\n"
              '            # call that would normally place args on the line are both\n'
              '            # unnecessary. Emit just the prefix line.\n'
              '            self.write(usage_prefix.rstrip(" "))\n'
              '            self.write("\\n")\n'
              '            return\n'
              '\n'
              '        if text_width >= (term_len(usage_prefix) + 20):',
              '\n        if text_width >= (term_len(usage_prefix) + 20):')]},
 {'project': 'click',
  'version': '8.4.2',
  'upstream': '762c97eef7c1',
  'subject': 'Fix double-bracketing of choices in synopsis',
  'file': 'src/click/core.py',
  'test_file': 'tests/test_basic.py',
  'tests': [('', 'test_choice_argument_optional_metavar'), ('', 'test_datetime_argument_optional_metavar')],
  'revert': [('            var = self.name.upper()\n'
              '        # Types like ``Choice`` and ``DateTime`` already surround their metavar\n'
              '        # with square brackets to enumerate the allowed values. Reuse those\n'
              '        # outer brackets as the optional-argument indicator instead of wrapping\n'
              '        # the metavar in a second pair, which would produce ``[[a|b|c]]``.\n'
              '        already_bracketed = var.startswith("[") and var.endswith("]")\n'
              '        if self.deprecated:\n'
              '            var += "!"\n'
              '        if not self.required and not already_bracketed:\n'
              '            var = f"[{var}]"',
              '            var = self.name.upper()\n'
              '        if self.deprecated:\n'
              '            var += "!"\n'
              '        if not self.required:\n'
              '            var = f"[{var}]"')]},
 {'project': 'attrs',
  'version': '24.1.0',
  'upstream': '88e2896ca935',
  'subject': 'Preserve AttributeError in slotted classes with cached_property (#1253)',
  'file': 'src/attr/_make.py',
  'test_file': 'tests/test_slots.py',
  'tests': [('', 'test_slots_cached_property_raising_attributeerror')],
  'revert': [('            [\n'
              '                "         try:",\n'
              '                "             return super().__getattribute__(item)",\n'
              '                "         except AttributeError:",\n'
              '                "             if not hasattr(super(), \'__getattr__\'):",\n'
              '                "                 raise",\n'
              '                "             return super().__getattr__(item)",\n'
              '                "         original_error = f\\"\'{self.__class__.__name__}\' object has no attribute '
              '\'{item}\'\\"",',
              '            [\n'
              '                "         if hasattr(super(), \'__getattr__\'):",\n'
              '                "              return super().__getattr__(item)",\n'
              '                "         original_error = f\\"\'{self.__class__.__name__}\' object has no attribute '
              '\'{item}\'\\"",')]},
 {'project': 'attrs',
  'version': '26.1.0',
  'upstream': 'af9c510912ce',
  'subject': 'Fix validators.disabled() to save/restore state on nesting (#1513)',
  'file': 'src/attr/validators.py',
  'test_file': 'tests/test_validators.py',
  'tests': [('TestDisableValidators', 'test_disabled_ctx_nested')],
  'revert': [('    .. versionadded:: 21.3.0\n'
              '    .. versionchanged:: 26.1.0 The contextmanager is nestable.\n'
              '    """\n'
              '    prev = get_run_validators()\n'
              '    set_run_validators(False)',
              '    .. versionadded:: 21.3.0\n    """\n    set_run_validators(False)'),
             ('    finally:\n        set_run_validators(prev)\n',
              '    finally:\n        set_run_validators(True)\n')]},
 {'project': 'attrs',
  'version': '25.2.0',
  'upstream': 'e048efcb3954',
  'subject': 'Perform attr order checks after field transformer. (#1401)',
  'file': 'src/attr/_make.py',
  'test_file': 'tests/test_hooks.py',
  'tests': [('TestTransformHook', 'test_hook_reorder_fields'),
            ('TestTransformHook', 'test_hook_reorder_fields_before_order_check'),
            ('TestTransformHook', 'test_hook_conflicting_defaults_after_reorder')],
  'revert': [('\n'
              '    if field_transformer is not None:\n'
              '        attrs = field_transformer(cls, attrs)\n'
              '\n'
              '    # Check attr order after executing the field_transformer.\n'
              '    # Mandatory vs non-mandatory attr order only matters when they are part of',
              '\n    # Mandatory vs non-mandatory attr order only matters when they are part of'),
             ('\n    # Resolve default field alias after executing field_transformer.',
              '\n'
              '    if field_transformer is not None:\n'
              '        attrs = field_transformer(cls, attrs)\n'
              '\n'
              '    # Resolve default field alias after executing field_transformer.')]},
 {'project': 'cachetools',
  'version': '7.0.3',
  'upstream': '57d2e4813d98',
  'subject': 'Fix #387: Handle obj=None case for inspection in _DescriptorBase.',
  'file': 'src/cachetools/_cachedmethod.py',
  'test_file': 'tests/test_cachedmethod.py',
  'tests': [('NoneMethodTest', 'test_autospec_no_warnings')],
  'revert': [('        wrapper = self.Wrapper(obj)\n'
              '        if obj is None:\n'
              '            # Return the wrapper itself without modification when accessed\n'
              '            # through the class to support class-level introspection, such\n'
              '            # as for mocking with autospec=True in unittest.mock.\n'
              '            pass\n'
              '        elif self.__attrname is not None:\n'
              '            # replace descriptor instance with wrapper in instance dict',
              '        wrapper = self.Wrapper(obj)\n'
              '        if self.__attrname is not None:\n'
              '            # replace descriptor instance with wrapper in instance dict')]}]


def sh(*args: str, cwd: Path) -> str:
    return subprocess.run(args, cwd=cwd, check=True, capture_output=True, text=True).stdout


def without_tests(text: str, tests: list[tuple[str, str]]) -> str:
    """``text`` (a test module) without the test functions ``tests`` ((class or "", name)),
    decorators included. Raises LookupError when one is not found exactly once."""
    mod = ast.parse(text)
    spans = []
    for cls, name in tests:
        scope: list[ast.stmt] = mod.body
        owners = [n for n in mod.body if isinstance(n, ast.ClassDef) and n.name == cls]
        if cls and len(owners) == 1:
            scope = owners[0].body
        elif cls:  # the diff's hunk header named a neighbouring class: any class's method of that name
            scope = [m for n in mod.body if isinstance(n, ast.ClassDef) for m in n.body]
        found = [n for n in scope if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name]
        if len(found) != 1:
            raise LookupError(f"test {cls}.{name} found {len(found)} times")
        n = found[0]
        spans.append((min([n.lineno, *(d.lineno for d in n.decorator_list)]), n.end_lineno or n.lineno))
    lines = text.splitlines(keepends=True)
    for start, end in sorted(spans, reverse=True):
        del lines[start - 1:end]
    return "".join(lines)


def revert(code: str, pairs: list[tuple[str, str]]) -> tuple[str, int]:
    """``code`` with the upstream fix reverted, and the first line the fix changed (1-based, in
    the fixed ``code``). Each pair (fixed text, text before the fix, with one line of context)
    is replaced where it occurs exactly once; else its changed lines alone (the context may have
    moved since); a pair that only removes blank lines is skipped. Raises LookupError when a
    pair applies nowhere or in several places."""
    first = 0
    for new, old in pairs:
        a, b = new.splitlines(), old.splitlines()
        while a and b and a[0] == b[0]:
            a, b = a[1:], b[1:]
        while a and b and a[-1] == b[-1]:
            a, b = a[:-1], b[:-1]
        if not any(x.strip() for x in a + b):
            continue  # whitespace only
        for search, replace in ((new, old), ("\n".join(a), "\n".join(b))):  # noqa: B007 (used after the loop)
            if search and code.count(search) == 1:
                break
        else:
            raise LookupError(f"the fix's text is not found exactly once in the sdist ({code.count(new)} times)")
        at = code.index(search)
        lead = next((i for i, (x, y) in enumerate(zip(search.splitlines() + [""], replace.splitlines() + [""],
                                                          strict=False)) if x != y), 0)
        first = first or code[:at].count("\n") + 1 + lead
        code = code[:at] + replace + code[at + len(search):]
    if not first:
        raise LookupError("the fix changes only whitespace")
    return code, first


def truth(text: str, line: int) -> str:
    """The qualified name of the innermost function around ``line`` of ``text`` ("" when none)."""
    from heald.ci.localize import functions_of

    inside = [d for d in functions_of(text) if d[1] <= line <= d[2]]
    return max(inside, key=lambda d: d[1])[0] if inside else ""


def build(case: dict[str, Any], cache: Path, where: Path) -> tuple[Path, str, str]:
    """The case's repository (see the module docstring); returns (path, bad sha, truth function).
    Raises LookupError when the revert or the test removal does not apply."""
    src = sdist(case["project"], case["version"], cache)
    repo = where / f"{case['project']}-{case['upstream']}"
    shutil.copytree(src, repo, symlinks=True)
    fixed = (repo / case["file"]).read_text()
    code, line = revert(fixed, case["revert"])
    function = truth(fixed, line)
    tests_text = (repo / case["test_file"]).read_text()
    (repo / case["file"]).write_text(code)
    (repo / case["test_file"]).write_text(without_tests(tests_text, case["tests"]))
    sh("git", "init", "-q", "-b", "main", cwd=repo)
    ident = ["-c", "user.name=Bench", "-c", "user.email=bench@example.com"]
    sh("git", "add", "-A", "-f", cwd=repo)
    sh("git", *ident, "commit", "-q", "-m", f"{case['project']} {case['version']} without upstream fix "
       f"{case['upstream']}", cwd=repo)
    (repo / case["test_file"]).write_text(tests_text)
    sh("git", *ident, "commit", "-q", "-am", f"Add {', '.join(n for _, n in case['tests'])}", cwd=repo)
    return repo, sh("git", "rev-parse", "HEAD", cwd=repo).strip(), function


def rank_of(items: list[Any], hit: Any) -> int | None:
    for i, s in enumerate(items, 1):
        if hit(s):
            return i
    return None


def run_case(case: dict[str, Any], cache: Path, base: Path, pip_cache: Path, args: argparse.Namespace
             ) -> dict[str, Any]:
    from heald.ci import CiJob
    from heald.ci.repair import forward_fix
    from heald.config import HealdConfig

    name = f"{case['project']}@{case['upstream'][:7]}"
    row: dict[str, Any] = {"case": name, "version": case["version"], "file": case["file"], "valid": False}
    t0 = time.monotonic()
    try:
        repo, bad, function = build(case, cache, base)
    except (LookupError, ValueError, subprocess.CalledProcessError) as exc:
        row["note"] = f"not built: {exc}"
        return row
    row["function"] = function
    llm: dict[str, Any] = {}
    if args.base_url:
        llm = {"base_url": args.base_url, "model": args.model, "timeout_seconds": args.timeout,
               "input_cost_per_million": args.input_cost, "output_cost_per_million": args.output_cost}
    cfg = HealdConfig.model_validate({
        "state_dir": str(base / "state"), "llm": llm,
        "ci": {"work_dir": str(base / "ci"), "pip_cache_dir": str(pip_cache), "max_worktrees": 4,
               "check_timeout_seconds": 600,
               "forward_fix": {"max_rounds": args.rounds}}})
    test_cmd = f"python -m pytest -q -p no:cacheprovider {case['test_file']}"
    ff = forward_fix(cfg, CiJob(repo=name, url=str(repo), bad=bad, branch="main", test_command=test_cmd))
    row["seconds"] = round(time.monotonic() - t0, 1)
    added = {n for _, n in case["tests"]}
    exposed = [t for t in ff.failing_tests if t.split("::")[-1].split("[")[0] in added]
    if not exposed:
        row["note"] = f"invalid: the added tests do not fail ({ff.outcome}: {ff.reason[:120]})"
        return row
    row["valid"] = True
    row["failing"] = len(ff.failing_tests)
    loc = ff.localization
    row["file_rank"] = rank_of(loc.files, lambda s: s.path == case["file"])
    row["function_rank"] = rank_of(loc.functions, lambda s: s.path == case["file"] and s.function == function)
    row["top_function"] = loc.functions[0].where() if loc.functions else ""
    if args.base_url:
        row.update({"outcome": ff.outcome, "proposed": ff.best is not None, "rounds": len(ff.rounds),
                    "tokens": ff.tokens, "cost_usd": ff.usage["cost_usd"],
                    "edits_fixed_file": bool(ff.best and any(
                        e["path"] == case["file"] for e in ff.best.edits))})
    return row


def within(rank: int | None, k: int) -> bool:
    return rank is not None and rank <= k


def summary(rows: list[dict[str, Any]], with_model: bool) -> dict[str, Any]:
    valid = [r for r in rows if r["valid"]]
    n = len(valid)
    out: dict[str, Any] = {"cases": len(rows), "valid": n}
    for what in ("file", "function"):
        for k in (1, 3, 5):
            out[f"{what}_top{k}"] = sum(within(r[f"{what}_rank"], k) for r in valid)
    if with_model:
        out.update({"proposed": sum(r.get("proposed", False) for r in valid),
                    "edits_fixed_file": sum(r.get("edits_fixed_file", False) for r in valid),
                    "tokens": sum(r.get("tokens", 0) for r in valid),
                    "cost_usd": round(sum(r.get("cost_usd", 0.0) for r in valid), 6)})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="", help="comma-separated project names or upstream shas (default: all)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "heald-bench-sdists")
    ap.add_argument("--base-url", default=None, help="an OpenAI-compatible endpoint (enables the repair loop)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--input-cost", type=float, default=0.0, help="USD per million prompt tokens")
    ap.add_argument("--output-cost", type=float, default=0.0, help="USD per million completion tokens")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if bool(args.base_url) != bool(args.model):
        ap.error("--base-url and --model go together")
    wanted = [w for w in args.cases.split(",") if w]
    cases = [c for c in CASES if not wanted or c["project"] in wanted or any(c["upstream"].startswith(w) for w in wanted)]
    args.cache.mkdir(parents=True, exist_ok=True)
    rows = []
    with ci_work_dir("heald-bench-ff-") as (base, pip_cache):
        for case in cases:
            row = run_case(case, args.cache, base, pip_cache, args)
            rows.append(row)
            if not args.json:
                ranks = f"file #{row.get('file_rank')}, function #{row.get('function_rank')}"
                print(f"  {row['case']}: {row.get('note') or ranks}", file=sys.stderr)
    result = {"with_model": bool(args.base_url), "model": args.model, "rows": rows,
              "summary": summary(rows, bool(args.base_url))}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    cols = ["case", "version", "file", "function", "file_rank", "function_rank", "top_function"]
    if args.base_url:
        cols += ["proposed", "edits_fixed_file", "rounds", "tokens", "cost_usd"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        if not r["valid"]:
            print(f"| {r['case']} | {r['version']} | {r['file']} | {r.get('function', '')} | "
                  f"{r.get('note', 'invalid')} |" + " |" * (len(cols) - 5))
            continue
        print("| " + " | ".join(str(r.get(c, "")) if r.get(c) is not None else "—" for c in cols) + " |")
    s = result["summary"]
    n = s["valid"]
    print()
    print(f"valid cases: {n} of {s['cases']}")
    for what in ("file", "function"):
        print(f"{what} in top 1 / 3 / 5: {s[f'{what}_top1']} / {s[f'{what}_top3']} / {s[f'{what}_top5']} of {n}")
    if args.base_url:
        print(f"model {args.model}: fixes proposed (valid in the sandbox) {s['proposed']} of {n}; touching the "
              f"upstream-fixed file {s['edits_fixed_file']}; tokens {s['tokens']}; cost ${s['cost_usd']:.4f}")
    else:
        print("no model endpoint given: localization only (no repair rate without a real model)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
