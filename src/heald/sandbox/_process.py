"""Running a backend's launcher process with a wall-clock timeout and bounded output capture."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Finished:
    returncode: int | None
    output: str
    truncated: bool
    timed_out: bool
    duration_s: float


class _Capture:
    """Keeps the first ``head`` bytes and the last ``tail`` bytes of a stream."""

    def __init__(self, limit: int):
        self.head_limit = min(64 * 1024, limit // 4)
        self.tail_limit = limit - self.head_limit
        self.head = bytearray()
        self.tail: deque[bytes] = deque()
        self.tail_size = 0
        self.dropped = 0

    def feed(self, chunk: bytes) -> None:
        room = self.head_limit - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if not chunk:
            return
        self.tail.append(chunk)
        self.tail_size += len(chunk)
        while self.tail_size > self.tail_limit and self.tail:
            first = self.tail[0]
            excess = self.tail_size - self.tail_limit
            if len(first) <= excess:
                self.tail.popleft()
                self.tail_size -= len(first)
                self.dropped += len(first)
            else:
                self.tail[0] = first[excess:]
                self.tail_size -= excess
                self.dropped += excess

    def text(self) -> tuple[str, bool]:
        tail = b"".join(self.tail)
        if self.dropped:
            body = bytes(self.head) + f"\n[… {self.dropped} bytes of output cut …]\n".encode() + tail
        else:
            body = bytes(self.head) + tail
        return body.decode("utf-8", errors="replace"), self.dropped > 0


def run_launcher(argv: Sequence[str], *, timeout: float, output_limit: int, env: Mapping[str, str],
                 user: int | None = None, group: int | None = None, pass_fds: Sequence[int] = (),
                 on_timeout: Callable[[subprocess.Popen[bytes]], None] | None = None,
                 attach: Callable[[int], None] | None = None) -> Finished:
    """Start ``argv`` in a new session (its own process group), capture its merged output, and
    wait at most ``timeout`` seconds. On timeout ``on_timeout(proc)`` runs (a backend's own
    cleanup) and the whole process group is killed with SIGKILL.

    ``attach(pid)`` (e.g. moving the process into the run's cgroup) runs before ``argv`` starts:
    the process first waits on a pipe in a tiny ``/bin/sh`` gate and execs ``argv`` only once
    ``attach`` returned, so nothing of the run escapes it. If ``attach`` raises, the process is
    killed and the exception propagates."""
    t0 = time.monotonic()
    gate_r = gate_w = -1
    if attach is not None:
        gate_r, gate_w = os.pipe()
        argv = ["/bin/sh", "-c", _GATE, "heald-sandbox-gate", *argv]
    try:
        proc = subprocess.Popen(list(argv), stdin=gate_r if gate_r >= 0 else subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True, env=dict(env), cwd="/", user=user,
                                group=group, extra_groups=[] if user is not None else None, pass_fds=tuple(pass_fds))
    finally:
        if gate_r >= 0:
            os.close(gate_r)
    if attach is not None:
        try:
            attach(proc.pid)
        except BaseException:
            os.close(gate_w)
            kill_group(proc.pid)
            proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()
            raise
        os.write(gate_w, b"go\n")
        os.close(gate_w)
    cap = _Capture(output_limit)
    # stdout=PIPE with the default buffering is a BufferedReader (typeshed says IO[bytes]): read1
    # returns what is there without waiting for a full buffer.
    assert isinstance(proc.stdout, io.BufferedReader)
    stdout = proc.stdout

    def pump() -> None:
        while True:
            chunk = stdout.read1(65536)
            if not chunk:
                return
            cap.feed(chunk)

    reader = threading.Thread(target=pump, name="sandbox-output", daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        if on_timeout is not None:
            on_timeout(proc)
        kill_group(proc.pid)
        proc.wait()
    finally:
        if proc.poll() is None:  # interrupted (KeyboardInterrupt, a crash): leave nothing behind
            kill_group(proc.pid)
            proc.wait()
    reader.join(timeout=10)
    stdout.close()
    text, truncated = cap.text()
    return Finished(None if timed_out else proc.returncode, text, truncated, timed_out, time.monotonic() - t0)


#: Waits for "go" on its standard input (the gate pipe), then execs its arguments with stdin
#: from /dev/null (as without a gate).
_GATE = 'IFS= read -r go; [ "$go" = go ] || exit 125; exec "$@" </dev/null'


def kill_group(pgid: int) -> None:
    """SIGKILL every process of process group ``pgid`` (gone already is fine)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
