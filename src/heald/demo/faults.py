"""The faults ``heald demo`` injects into the demo system, and what healing each looks like.

Each :class:`Fault` breaks the running system the way it breaks in production (a process
killed, a chaos flag turned on through the admin API, a commit pushed to the configuration
repository, a release deployed, a log directory filling up) and states what heald should do:
the remedy it should apply and to what, or for ``false-alarm`` nothing at all. ``check`` looks
at the system afterwards for what the remedy must not have done (restarted the shop when
payments was down, deleted a fresh log file).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from heald.correlate.changes import current_release, release_names
from heald.demo.system import DEPLOYER, DemoEnv, git, point_current, shop_source, write_release
from heald.models import Action

#: The line of the shop's code the bad release changes (a key its currency table lacks).
GOOD_LINE = 'return round(product["price"] * (1 + TAX_RATE), CURRENCY["decimals"])'
BAD_LINE = 'return round(product["price"] * (1 + TAX_RATE), CURRENCY["minor_units"])'
OLD_LOG_BYTES = 8_000_000


@dataclass(frozen=True)
class Fault:
    """A fault the demo can inject.

    ``inject(env, memo)`` breaks the system and returns what it did (``memo`` keeps what
    ``check`` needs). ``remedy``/``target`` are the remedy heald should end with and a subset
    of its parameters; ``expect_incident`` False means heald should do nothing (a false
    alarm). ``check(env, memo, actions)`` returns what went wrong afterwards, if anything.
    ``needs_targets``: it breaks the adopted container or unit, which need podman.
    """

    name: str
    description: str
    inject: Callable[[DemoEnv, dict[str, Any]], str]
    remedy: str | None = None
    target: dict[str, Any] = field(default_factory=dict)
    expect_incident: bool = True
    check: Callable[[DemoEnv, dict[str, Any], list[Action]], list[str]] | None = None
    needs_targets: bool = False


def _kill(service: str) -> Callable[[DemoEnv, dict[str, Any]], str]:
    def inject(env: DemoEnv, memo: dict[str, Any]) -> str:
        memo["pids"] = {name: env.pid(name) for name, svc in env.config.services.items() if svc.command}
        pid = env.pid(service)
        os.kill(pid, signal.SIGKILL)
        return f"SIGKILL {service} (pid {pid})"
    return inject


def _flag(name: str, value: object = True) -> Callable[[DemoEnv, dict[str, Any]], str]:
    def inject(env: DemoEnv, memo: dict[str, Any]) -> str:
        r = httpx.put(f"{env.shop_url}/admin/flags", json={name: value}, timeout=5)
        r.raise_for_status()
        memo["at"] = time.time()
        return f"PUT /admin/flags {{{name!r}: {json.dumps(value)}}} on the shop"
    return inject


def _shop_untouched(env: DemoEnv, memo: dict[str, Any], actions: list[Action]) -> list[str]:
    problems = []
    if memo.get("pids", {}).get("shop") != env.pid("shop"):
        problems.append("the shop was restarted, though only payments was down")
    if any(a.params.get("service") == "shop" for a in actions):
        problems.append("a remedy targeted the shop")
    return problems


def _bad_config(env: DemoEnv, memo: dict[str, Any]) -> str:
    repo = env.workdir / "shop-config"
    path = repo / "shop.json"
    config = json.loads(path.read_text())
    memo["good"] = dict(config)
    config["db_pool_size"] = 0
    path.write_text(json.dumps(config, indent=2) + "\n")
    git(repo, "commit", "-qam", "Lower the DB pool size to free database connections")
    sha = git(repo, "rev-parse", "HEAD")
    memo["commit"] = sha
    reload = httpx.post(f"{env.shop_url}/admin/reload", timeout=5)  # the config deploy step
    reload.raise_for_status()
    return f"commit {sha[:10]} sets db_pool_size 0 in shop-config, and the shop reloads it"


def _config_restored(env: DemoEnv, memo: dict[str, Any], actions: list[Action]) -> list[str]:
    repo = env.workdir / "shop-config"
    now = json.loads((repo / "shop.json").read_text())
    problems = [] if now == memo["good"] else [f"shop.json is {now}, not the configuration before the bad commit"]
    if "This reverts commit " + memo["commit"] not in git(repo, "log", "-1", "--format=%B"):
        problems.append("the newest commit is not a revert of the bad one")
    return problems


def _bad_release(env: DemoEnv, memo: dict[str, Any]) -> str:
    releases = env.config.services["shop"].releases
    assert releases is not None
    memo["before"] = current_release(releases)
    names = release_names(releases)
    name = f"v{max(int(n[1:]) for n in names if n[1:].isdigit()) + 1}"
    source = shop_source()
    if GOOD_LINE not in source:
        raise RuntimeError("the shop's code changed: the demo's bad release cannot be made")
    write_release(env.workdir, name, source.replace(GOOD_LINE, BAD_LINE))
    point_current(env.workdir, name)
    sha = git(env.workdir / "shop-config", "rev-parse", "--short", "HEAD")
    with open(env.workdir / "revisions.log", "a") as log:
        log.write(f"Branch main (at {sha}) deployed as release {name} by {DEPLOYER[0].split()[0].lower()}\n")
    proc = env.runtime.supervisor.get("shop")
    assert proc is not None
    proc.restart()  # the deploy's restart onto the new release
    memo["release"] = name
    return f"release {name} (prices read a currency field it lacks) deployed and the shop restarted on it"


def _release_restored(env: DemoEnv, memo: dict[str, Any], actions: list[Action]) -> list[str]:
    releases = env.config.services["shop"].releases
    assert releases is not None
    now = current_release(releases)
    return [] if now == memo["before"] else [f"current is {now}, not {memo['before']}, the release before the bad one"]


def _disk_fill(env: DemoEnv, memo: dict[str, Any]) -> str:
    logs = env.workdir / "logs" / "shop"
    old = time.time() - 2 * 86400
    for i in (3, 4, 5):
        p = logs / f"shop.log.{i}"
        with open(p, "wb") as f:
            f.write(b"x" * OLD_LOG_BYTES)
        os.utime(p, (old, old))
    fresh = logs / "shop.log.1"
    fresh.write_bytes(b"y" * 1_000_000)
    memo["old"] = [str(logs / f"shop.log.{i}") for i in (3, 4, 5)]
    memo["kept"] = [str(fresh), str(logs / "shop.log")]
    return f"3 rotated logs of {OLD_LOG_BYTES / 1e6:.0f} MB, two days old, and a fresh one appear in logs/shop"


def _only_old_files_deleted(env: DemoEnv, memo: dict[str, Any], actions: list[Action]) -> list[str]:
    problems = [f"{p} was not deleted" for p in memo["old"] if Path(p).exists()]
    problems += [f"{p} was deleted, though it is not old enough" for p in memo["kept"] if not Path(p).exists()]
    return problems


def _blip(env: DemoEnv, memo: dict[str, Any]) -> str:
    memo["since"] = time.monotonic()
    memo["failures_before"] = len(env.failures)
    _flag("healthz_blip", 1)(env, memo)
    return "the shop's /healthz answers 503 once"


def _one_failure_seen(env: DemoEnv, memo: dict[str, Any], actions: list[Action]) -> list[str]:
    seen = [f for f in env.failures[memo["failures_before"]:] if f[1] == "shop /healthz"]
    return [] if seen else ["no failed /healthz probe was seen: the false alarm did not happen"]


FAULTS: dict[str, Fault] = {f.name: f for f in [
    Fault("process-crash", "the shop's process is killed with SIGKILL", _kill("shop"),
          remedy="restart_process", target={"service": "shop"}),
    Fault("dependency-down", "the payments service is killed; the shop's checkouts fail", _kill("payments"),
          remedy="restart_process", target={"service": "payments"}, check=_shop_untouched),
    Fault("checkout-failures", "a chaos flag makes 80% of checkouts fail with 500 PAYMENT_GATEWAY_TIMEOUT",
          _flag("checkout_failures"), remedy="http_request", target={"body": {"checkout_failures": False}}),
    Fault("api-errors", "50% of GET /products fail with 500 DB_CONNECTION_FAILED", _flag("api_errors"),
          remedy="http_request", target={"method": "POST"}),
    Fault("slow-mode", "products and checkout take 3–10 s; p95 latency goes over 1 s", _flag("slow_mode"),
          remedy="http_request", target={"body": {"slow_mode": False}}),
    Fault("memory-leak", "the shop leaks 80 MB/s of resident memory past its 150 MB limit", _flag("memory_leak"),
          remedy="restart_process", target={"service": "shop"}),
    Fault("bad-config", "a commit sets the shop's DB pool size to 0; its requests fail with 503", _bad_config,
          remedy="git_revert", target={"service": "shop"}, check=_config_restored),
    Fault("bad-release", "a release whose prices raise KeyError (500) goes live", _bad_release,
          remedy="rollback_release", target={"service": "shop"}, check=_release_restored),
    Fault("disk-fill", "the shop's log directory grows past its 20 MB quota", _disk_fill,
          remedy="cleanup_path", target={"service": "shop"}, check=_only_old_files_deleted),
    Fault("false-alarm", "one failed health check, then healthy again", _blip, expect_incident=False,
          check=_one_failure_seen),
    Fault("container-crash", "the web container (podman, adopted through its Docker API) is killed",
          lambda env, memo: env.targets.kill_web(), remedy="restart_container", target={"container": "web"},
          needs_targets=True),
    Fault("unit-crash", "the worker systemd unit's process is killed; the unit fails",
          lambda env, memo: env.targets.kill_worker(), remedy="restart_unit", target={"unit": "worker"},
          needs_targets=True),
]}
