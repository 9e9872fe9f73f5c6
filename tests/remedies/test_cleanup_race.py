"""``cleanup_path`` against a service that owns its log directory (issue 11, item 4: a path a
remedy acts on must not escape its configured root). heald runs as root; the directory it
cleans is often writable by the service. A real attacker process swaps a subdirectory for a
symbolic link to another directory, over and over, while heald lists and deletes: heald must
never delete a file the link leads to. Before the fix heald deleted by path name after
listing, so the swap in between made it delete the outside file."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from heald import remedies
from heald.remedies import RemedyContext
from heald.remedies.files import old_files
from heald.supervise import Supervisor
from tests.conftest import make_config

OLD = time.time() - 3 * 86400

ATTACKER = textwrap.dedent("""
    import os, sys, time
    logs, victim, stop = sys.argv[1], sys.argv[2], sys.argv[3]
    real, sub = os.path.join(logs, "sub-real"), os.path.join(logs, "sub")
    old = time.time() - 3 * 86400
    while not os.path.exists(stop):
        os.makedirs(real, exist_ok=True)
        for i in range(200):
            p = os.path.join(real, f"app.log.{i}")
            if not os.path.exists(p):
                open(p, "w").write("x")
                os.utime(p, (old, old))
        os.rename(real, sub)              # a real directory of old logs: heald lists it
        time.sleep(0.0005)
        os.rename(sub, real)
        os.symlink(victim, sub)           # the same name, now a link to another directory
        time.sleep(0.002)
        os.unlink(sub)
""")


def test_a_directory_swapped_for_a_symlink_leads_nowhere(tmp_path: Path) -> None:
    logs, victim = tmp_path / "logs", tmp_path / "victim"
    logs.mkdir()
    victim.mkdir()
    targets = []
    for i in range(200):
        t = victim / f"app.log.{i}"
        t.write_text("precious")
        os.utime(t, (OLD, OLD))
        targets.append(t)
    cfg = make_config(tmp_path, services={"shop": {"cleanup": [
        {"path": str(logs), "pattern": "*.log.*", "older_than_seconds": 86400}]}})
    ctx = RemedyContext(config=cfg, supervisor=Supervisor(cfg))
    params = remedies.validate_params("cleanup_path", {"service": "shop", "path": str(logs)})
    stop = tmp_path / "stop"
    attacker = subprocess.Popen([sys.executable, "-c", ATTACKER, str(logs), str(victim), str(stop)])
    deleted_total = 0
    try:
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline and all(t.exists() for t in targets):
            out = remedies.get("cleanup_path").apply(params, ctx).output
            deleted_total += int(out.split("deleted ", 1)[1].split(" ", 1)[0])
    finally:
        stop.touch()
        attacker.wait(timeout=10)
    missing = [t.name for t in targets if not t.exists()]
    assert not missing, f"heald deleted {len(missing)} files outside the cleanup path through the link"
    assert deleted_total > 0  # heald did clean the real directory meanwhile


def test_delete_refuses_a_listed_file_whose_directory_became_a_link(tmp_path: Path) -> None:
    """The same race, one step at a time: list, swap, delete."""
    from heald.remedies.files import delete

    logs, victim = tmp_path / "logs", tmp_path / "victim"
    (logs / "sub").mkdir(parents=True)
    victim.mkdir()
    for d in (logs / "sub", victim):
        f = d / "app.log.1"
        f.write_text("x")
        os.utime(f, (OLD, OLD))
    cfg = make_config(tmp_path, services={"shop": {"cleanup": [
        {"path": str(logs), "pattern": "*.log.*", "older_than_seconds": 86400}]}})
    entry = cfg.services["shop"].cleanup[0]
    files, _ = old_files(entry, time.time())
    assert [f.name for f in files] == ["app.log.1"]
    (logs / "sub").rename(logs / "sub-real")
    (logs / "sub").symlink_to(victim)
    deleted, freed, refused = delete(entry, files)
    assert (victim / "app.log.1").exists()
    assert (deleted, freed) == (0, 0) and "symbolic link" in refused[0]
