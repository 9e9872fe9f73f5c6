"""Signed checkpoints: the audit chain anchored outside the database.

The hash chain (:mod:`heald.store.audit`) shows a change to history only to someone who
trusts the database's newest hash. Whoever holds the whole database can drop the triggers,
rewrite rows and recompute every hash, or cut the tail and move the head back. A checkpoint
records, outside the database, that entry ``seq`` had hash ``hash`` at time ``ts``, signed
with an Ed25519 key that is not in the database; :func:`verify_with_checkpoints` then finds
any entry at or before a checkpoint that was rewritten or removed.

The checkpoint file holds JSON lines, one per checkpoint, appended and never rewritten::

    {"n": 3, "seq": 1042, "hash": "<hex sha256 of entry 1042>", "ts": "2026-11-28T09:00:00Z",
     "key_id": "<first 16 hex of sha256 of the raw public key>", "sig": "<base64 Ed25519 signature>"}

``n`` counts checkpoints 1, 2, 3, … so a line removed from the middle shows. The signature
covers :data:`DOMAIN` followed by the canonical JSON (sorted keys, no spaces) of every field
but ``sig``. The key file is the Ed25519 private key as unencrypted PKCS#8 PEM, mode 0600;
verifying needs only the public key (``heald audit public-key``), so a verifier can keep it
apart from heald. What a checkpoint cannot cover: entries written after the newest one, and
the file's own tail (send checkpoints to a notification channel to keep a copy elsewhere).
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from heald.files import PRIVATE_FILE, private_dir, write_private
from heald.store import audit

if TYPE_CHECKING:
    from heald.store import Store

log = structlog.get_logger("heald.audit")

DOMAIN = b"heald-audit-checkpoint-v1\n"
_FIELDS = ("n", "seq", "hash", "ts", "key_id", "sig")
_TAIL_BYTES = 4096


class CheckpointError(Exception):
    """A checkpoint cannot be written or read: a missing or unreadable key or file, a key
    others can read, or an audit chain that is already broken (it is never signed)."""


@dataclass(frozen=True)
class Checkpoint:
    """One signed checkpoint (a line of the checkpoint file); see the module docstring."""

    n: int
    seq: int
    hash: str
    ts: str
    key_id: str
    sig: str

    def payload(self) -> bytes:
        """The bytes the signature covers."""
        fields = {k: v for k, v in asdict(self).items() if k != "sig"}
        return DOMAIN + json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        return json.dumps(self.as_json(), sort_keys=True, separators=(",", ":")) + "\n"

    def anchor(self) -> audit.Anchor:
        return audit.Anchor(self.seq, self.hash, f"checkpoint {self.n} of {self.ts}")


def key_id(public: Ed25519PublicKey) -> str:
    """First 16 hex digits of the sha256 of the raw 32-byte public key."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The public key as SubjectPublicKeyInfo PEM (what ``--key`` of ``heald audit verify`` reads)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def load_signing_key(path: Path, *, create: bool = True) -> Ed25519PrivateKey:
    """The Ed25519 private key in ``path`` (PKCS#8 PEM). With ``create``, a missing key is
    generated and written 0600 (its directory, when missing, is created 0700). Raises
    CheckpointError when the file is missing (without ``create``), unreadable, not an
    Ed25519 private key, or readable by group or others (the key would no longer be secret)."""
    if not path.exists():
        if not create:
            raise CheckpointError(f"key_file: {path} does not exist (it is created by heald serve or "
                                  "heald audit checkpoint)")
        if not path.parent.exists():
            private_dir(path.parent)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        try:
            write_private(path, pem)
        except FileExistsError:  # another heald created it at the same moment
            return load_signing_key(path, create=False)
        except OSError as exc:
            raise CheckpointError(f"key_file: cannot create {path}: {exc}") from exc
        log.info("audit.checkpoint_key_created", path=str(path), key_id=key_id(key.public_key()))
        return key
    try:
        st = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"key_file: cannot read {path}: {exc}") from exc
    if st.st_mode & 0o077:
        raise CheckpointError(f"key_file: {path} has mode {st.st_mode & 0o777:04o}; the signing key must be readable "
                              f"by its owner only (chmod 600 {path})")
    try:
        loaded = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"key_file: {path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(loaded, Ed25519PrivateKey):
        raise CheckpointError(f"key_file: {path} holds a {type(loaded).__name__}, expected an Ed25519 private key")
    return loaded


def load_verify_key(path: Path) -> Ed25519PublicKey:
    """The Ed25519 public key to check signatures with, from ``path``: a public key PEM
    (``heald audit public-key``) or the private key file itself. Raises CheckpointError."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"--key: cannot read {path}: {exc}") from exc
    if b"PRIVATE KEY" in data:
        try:
            private = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"--key: {path} is not an unencrypted PEM private key: {exc}") from exc
        if not isinstance(private, Ed25519PrivateKey):
            raise CheckpointError(f"--key: {path} holds a {type(private).__name__}, expected an Ed25519 key")
        return private.public_key()
    try:
        public = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise CheckpointError(f"--key: {path} is not a PEM public or private key: {exc}") from exc
    if not isinstance(public, Ed25519PublicKey):
        raise CheckpointError(f"--key: {path} holds a {type(public).__name__}, expected an Ed25519 public key")
    return public


def parse_line(text: str, where: str) -> Checkpoint:
    """One checkpoint from one line of the file. Raises ValueError naming ``where`` (file and
    line), the field and what was expected."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: not JSON ({exc.msg})") from exc
    if not isinstance(data, dict) or sorted(data) != sorted(_FIELDS):
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{where}: expected an object with the fields {', '.join(_FIELDS)}, got {got}")
    for name in ("n", "seq"):
        if type(data[name]) is not int or data[name] < 1:
            raise ValueError(f"{where}: field {name!r}: expected a positive integer, got {data[name]!r}")
    for name in ("hash", "ts", "key_id", "sig"):
        if not isinstance(data[name], str):
            raise ValueError(f"{where}: field {name!r}: expected a string, got {data[name]!r}")
    return Checkpoint(**data)


def check_signature(cp: Checkpoint, public: Ed25519PublicKey) -> bool:
    """Is ``cp`` signed by ``public``?"""
    if cp.key_id != key_id(public):
        return False
    try:
        public.verify(base64.b64decode(cp.sig, validate=True), cp.payload())
    except (InvalidSignature, ValueError):
        return False
    return True


def _last_line(fd: int) -> str | None:
    size = os.fstat(fd).st_size
    if size == 0:
        return None
    start = max(0, size - _TAIL_BYTES)
    data = os.pread(fd, size - start, start).decode(errors="replace").rstrip("\n")
    if "\n" not in data and start > 0:
        raise CheckpointError(f"the last line of the checkpoint file is longer than {_TAIL_BYTES} bytes")
    return data.rsplit("\n", 1)[-1]


def write_checkpoint(store: Store, checkpoint_file: Path, key: Ed25519PrivateKey, *,
                     full: bool = True) -> Checkpoint | None:
    """Verify the chain (against the newest checkpoint too) and append a signed checkpoint of
    its newest entry to ``checkpoint_file`` (created 0600; its directory 0700 when missing).
    With ``full`` false only the entries from the newest checkpoint on are walked (a periodic
    checkpoint of a long log; ``heald audit verify`` always walks the whole chain, so an
    older entry altered since is still found there).
    Returns None, writing nothing, when the log is empty or has not grown since the newest
    checkpoint. Writers of one file are serialized by ``flock``. Raises CheckpointError when
    the chain is broken (it is never signed) or the file cannot be read or written."""
    if not checkpoint_file.parent.exists():
        private_dir(checkpoint_file.parent)
    try:
        fd = os.open(checkpoint_file, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE)
    except OSError as exc:
        raise CheckpointError(f"checkpoint_file: cannot open {checkpoint_file}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        last_text = _last_line(fd)
        last: Checkpoint | None = None
        if last_text:
            try:
                last = parse_line(last_text, f"{checkpoint_file}, last line")
            except ValueError as exc:
                raise CheckpointError(str(exc)) from exc
            if not check_signature(last, key.public_key()):
                raise CheckpointError(f"{checkpoint_file}: the last checkpoint is not signed by this key "
                                      f"({key_id(key.public_key())}); the file or the key was replaced")
        with store.read() as s:
            report = audit.verify(s, anchors=[last.anchor()] if last else (),
                                  since=last.anchor() if last and not full else None)
        if not report.intact:
            raise CheckpointError(f"the audit chain is broken, so it is not signed: at entry {report.first_bad_seq}: "
                                  f"{report.problem}")
        if report.head_seq is None or report.head_hash is None:
            return None
        if last is not None and last.seq == report.head_seq:
            return None
        public = key.public_key()
        unsigned = Checkpoint(n=(last.n + 1) if last else 1, seq=report.head_seq, hash=report.head_hash,
                              ts=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"), key_id=key_id(public), sig="")
        cp = Checkpoint(**{**asdict(unsigned), "sig": base64.b64encode(key.sign(unsigned.payload())).decode()})
        os.write(fd, cp.line().encode())
        os.fsync(fd)
        return cp
    except OSError as exc:
        raise CheckpointError(f"checkpoint_file: cannot write {checkpoint_file}: {exc}") from exc
    finally:
        os.close(fd)


def read_checkpoints(checkpoint_file: Path) -> list[tuple[int, str]]:
    """The non-empty lines of ``checkpoint_file`` with their line numbers. Raises
    CheckpointError when it cannot be read."""
    try:
        with checkpoint_file.open(encoding="utf-8", errors="replace") as f:
            return [(i, line.rstrip("\n")) for i, line in enumerate(f, 1) if line.strip()]
    except OSError as exc:
        raise CheckpointError(f"--checkpoints: cannot read {checkpoint_file}: {exc}") from exc


def verify_with_checkpoints(store: Store, checkpoint_file: Path, public: Ed25519PublicKey) -> audit.AuditReport:
    """Verify the chain and compare it with every checkpoint in ``checkpoint_file``: each must
    be signed by ``public``, numbered 1, 2, 3, … with non-decreasing ``seq``, and the entry it
    names must exist with the hash it signed. Does not raise on tampering (the report says
    what was found, in the file or in the database); raises CheckpointError when the file
    cannot be read."""
    checkpoints: list[Checkpoint] = []
    for lineno, text in read_checkpoints(checkpoint_file):
        where = f"{checkpoint_file}:{lineno}"
        try:
            cp = parse_line(text, where)
        except ValueError as exc:
            return audit.AuditReport(False, 0, problem=f"checkpoint file altered: {exc}")
        if not check_signature(cp, public):
            return audit.AuditReport(False, 0, problem=f"checkpoint file altered: {where}: checkpoint {cp.n} is not "
                                                       f"signed by key {key_id(public)}")
        expected_n = checkpoints[-1].n + 1 if checkpoints else 1
        if cp.n != expected_n:
            return audit.AuditReport(False, 0, problem=f"checkpoint file altered: {where}: expected checkpoint "
                                                       f"{expected_n}, found {cp.n} (lines were removed or moved)")
        if checkpoints and cp.seq < checkpoints[-1].seq:
            return audit.AuditReport(False, 0, problem=f"checkpoint file altered: {where}: checkpoint {cp.n} names "
                                                       f"entry {cp.seq}, before checkpoint {cp.n - 1}'s {checkpoints[-1].seq}")
        checkpoints.append(cp)
    with store.read() as s:
        report = audit.verify(s, anchors=[c.anchor() for c in checkpoints])
    report.checkpoints = len(checkpoints)
    return report


class Checkpointer:
    """Writes a checkpoint every ``interval_s`` seconds in a background thread, and a last one
    at :meth:`stop`; ``on_written`` (e.g. sending it to a notification channel) is called with
    each new checkpoint. Failures are logged (``audit.checkpoint_failed``) and never raised:
    a broken chain is reported, not signed."""

    def __init__(self, store: Store, checkpoint_file: Path, key_file: Path, interval_s: float,
                 on_written: Callable[[Checkpoint], object] | None = None):
        self.store = store
        self.checkpoint_file = checkpoint_file
        self.key_file = key_file
        self.interval_s = interval_s
        self.on_written = on_written
        self.last_error: str | None = None
        #: None, or whether this process writes the checkpoints now (several workers on one
        #: database: only the elected one, :mod:`heald.engine.cluster`)
        self.should_run: Callable[[], bool] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._key: Ed25519PrivateKey | None = None

    def start(self) -> None:
        """Load (or create) the key now, so that a bad key file shows at start-up, and start
        the thread. Raises CheckpointError for a bad key file."""
        self._key = load_signing_key(self.key_file)
        self._thread = threading.Thread(target=self._run, name="heald-audit-checkpoints", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        full = True  # the whole chain once after start; then from the newest checkpoint on
        while not self._stop.wait(self.interval_s):
            if self.should_run is not None and not self.should_run():
                full = True  # another worker wrote meanwhile: the whole chain at the next turn
                continue
            if self.checkpoint(full=full) is not None or self.last_error is None:
                full = False

    def checkpoint(self, *, full: bool = True) -> Checkpoint | None:
        """Write one checkpoint now (None when nothing new or on failure, which is logged);
        ``full``: see :func:`write_checkpoint`."""
        if self._key is None:
            return None
        try:
            cp = write_checkpoint(self.store, self.checkpoint_file, self._key, full=full)
        except Exception as exc:  # a broken chain, a full disk, a database error: logged, heald goes on
            self.last_error = str(exc)
            log.error("audit.checkpoint_failed", error=str(exc), file=str(self.checkpoint_file))
            return None
        self.last_error = None
        if cp is not None:
            log.info("audit.checkpoint_written", n=cp.n, seq=cp.seq, file=str(self.checkpoint_file))
            if self.on_written is not None:
                try:
                    self.on_written(cp)
                except Exception:
                    log.exception("audit.checkpoint_send_failed", n=cp.n)
        return cp

    def stop(self) -> None:
        """Stop the thread and write a last checkpoint."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        if self.should_run is None or self.should_run():
            self.checkpoint()


def verify_configured(store: Store, checkpoint_file: Path, key_file: Path) -> audit.AuditReport:
    """Verify the chain against the configured checkpoints when their file exists (the public
    half of ``key_file`` checks them), else the chain alone. A checkpoint file whose key cannot
    be read is reported as not intact: what vouches for the chain is missing."""
    if not checkpoint_file.exists():
        return store.verify_audit()
    try:
        return verify_with_checkpoints(store, checkpoint_file, load_verify_key(key_file))
    except CheckpointError as exc:
        return audit.AuditReport(False, 0, problem=f"the checkpoints in {checkpoint_file} cannot be checked: {exc}")
