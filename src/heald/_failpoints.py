"""Fail points: named places where a test can stop heald to kill it at a known point.

Off unless ``$HEALD_FAILPOINTS`` names them (comma-separated). A fail point that is on prints
``heald: failpoint NAME reached`` to stderr and blocks its thread forever, so a test can send
SIGKILL while heald is exactly there (as FreeBSD's fail(9) and etcd's gofail do).
"""

from __future__ import annotations

import os
import sys
import threading


def failpoint(name: str) -> None:
    """Block forever if fail point ``name`` is on; otherwise return at once."""
    if name in {n.strip() for n in os.environ.get("HEALD_FAILPOINTS", "").split(",") if n.strip()}:
        print(f"heald: failpoint {name} reached", file=sys.stderr, flush=True)
        threading.Event().wait()
