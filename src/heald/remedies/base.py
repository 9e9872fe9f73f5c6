"""The remedy contract: :class:`Remedy` over its parameter model, its :class:`Target`, the
context it acts in, and the catalog it registers with (:func:`register`).

Built-in remedies live beside this module; plugins (the CI remedies, :mod:`heald.ci.remedies`)
register from their own package. See :mod:`heald.remedies` for the guards every remedy keeps.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import socket
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, ValidationError

from heald.models import Risk

if TYPE_CHECKING:
    from heald.config import HealdConfig
    from heald.models import Incident
    from heald.store import Store
    from heald.supervise import Supervisor


class RemedyError(RuntimeError):
    """Applying a remedy failed; the message says what happened."""


class RemedyNotApplicable(RemedyError):
    """The remedy cannot act on its target at all (e.g. ``restart_process`` for a service heald
    does not manage): not a failure of the remedy, and never counted against it in learning."""


class RemedyParamsError(ValueError):
    """A remedy's parameters are invalid; the message names the remedy, the field and what was
    expected."""


class RemedyParams(BaseModel):
    """Base of every remedy's parameter model: unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")


P = TypeVar("P", bound=RemedyParams)


@dataclass(frozen=True)
class Target:
    """What a remedy acts on: ``kind`` (``service``, ``url``, ``path``, ``command``,
    ``config``, ``release``, ``repo``…) and ``name`` within it. ``str(target)`` is the
    ``kind:name`` key that per-target cooldowns, rate limits, leases and circuit breakers are
    counted under (stored as ``actions.target``)."""

    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


@dataclass
class RemedyContext:
    """What a remedy may use: configuration, the supervisor of managed services, the incident,
    heald's store (to read the incident's evidence and record what it proposes)."""

    config: HealdConfig
    supervisor: Supervisor
    incident: Incident | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    store: Store | None = None


@dataclass
class RemedyResult:
    """What applying did (human-readable ``output``) and, if it can be undone, the data the
    undo needs."""

    output: str
    undo: dict[str, Any] | None = None


def overlaps(a: Path, b: Path) -> bool:
    """Whether paths ``a`` and ``b`` (resolved) are the same or one contains the other."""
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


@dataclass
class HealdSelf:
    """What heald itself is, for :meth:`Remedy.touches_heald` (DESIGN.md invariant 7): its
    configuration (API address, state directory, database, config file, managed services) and
    the supervisor of the services it launched (None: none known)."""

    config: HealdConfig
    supervisor: Supervisor | None = None

    def paths(self) -> list[Path]:
        """heald's own state: the state directory, the SQLite database file, the config file."""
        paths = [self.config.state_dir]
        if self.config.database.startswith("sqlite"):
            db = sa.make_url(self.config.database).database
            if db:
                paths.append(Path(db))
        if self.config.source_file is not None:
            paths.append(self.config.source_file)
        return paths

    def owns_path(self, path: Path) -> bool:
        """Whether ``path`` overlaps heald's own state (:meth:`paths`)."""
        return any(overlaps(path, own) for own in self.paths())

    def refuse_owned(self, target: Target, where: Path | None) -> str | None:
        """The refusal for a remedy on ``target`` whose directory ``where`` lies in heald's own
        state (:meth:`owns_path`), None when it does not (or there is no directory)."""
        if where is not None and self.owns_path(where):
            return f"refused: {target} lives in heald's own state ({where})"
        return None

    def describe_paths(self) -> str:
        """heald's own state as text, for a refusal."""
        return ", ".join(str(p) for p in self.paths())

    def is_own_address(self, host: str | None, port: int | None) -> bool:
        """Whether ``host``:``port`` reaches heald's own API (its port on its address, on
        localhost, a loopback address or this host's name, or any address when it listens on
        all of them), or is one of ``identity.addresses``."""
        if host is not None and port is not None and _address(host, port) in self.extra_addresses():
            return True
        api = self.config.api
        if port != api.port or host is None:
            return False
        host = host.strip("[]").lower()
        if host in ("localhost", api.host.lower(), *_host_names()):
            return True
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        # listening on every address: any address of this host reaches heald (not another host's)
        return ip.is_loopback or (api.host in ("0.0.0.0", "::") and (ip.is_unspecified or ip in _local_addresses()))

    def extra_addresses(self) -> set[str]:
        """``identity.addresses``, normalised (``host:port``, host lower-case)."""
        found = set()
        for a in self.config.identity.addresses:
            host, port = split_address(a)
            if host is not None and port is not None:
                found.add(_address(host, port))
        return found

    def names(self) -> set[str]:
        """heald's own job, instance and service names (``identity.names``), lower-case."""
        return {n.lower() for n in self.config.identity.names}

    def is_own_name(self, name: str | None) -> bool:
        """Whether ``name`` (a service, job or instance name) is one of heald's own."""
        return name is not None and name.strip().lower() in self.names()

    def names_heald(self, service: str | None, labels: Mapping[str, str]) -> str | None:
        """Why a signal with ``service`` and ``labels`` is about heald itself, or None: its
        service, or its ``job``/``service``/``app``/``app_kubernetes_io_name``/``container`` label, is one of heald's
        names; its ``instance`` is one of heald's names or addresses (:meth:`is_own_address`);
        its ``pid`` is heald's process id."""
        if self.is_own_name(service):
            return f"service {service!r} is heald itself"
        for key in ("job", "service", "app", "app_kubernetes_io_name", "container"):
            if self.is_own_name(labels.get(key)):
                return f"{key}={labels[key]!r} is heald itself"
        instance = labels.get("instance")
        if instance:
            host, port = split_address(instance)
            if self.is_own_name(instance) or (port is not None and self.is_own_address(host, port)):
                return f"instance={instance!r} is heald itself (it listens on {self.config.api.host}:{self.config.api.port})"
        if labels.get("pid", "").strip() == str(os.getpid()):
            return f"pid={labels['pid']} is heald's own process"
        return None


def split_address(address: str) -> tuple[str | None, int | None]:
    """``host:port`` (``[v6]:port`` for IPv6; a URL's scheme and path are ignored) as
    (host, port); (address, None) without a port."""
    text = address.strip()
    if "://" in text:
        text = text.split("://", 1)[1]
    text = text.split("/", 1)[0]
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    return (host or None), (int(port_text) if port_text.isdigit() and int(port_text) <= 65535 else None)


def _address(host: str, port: int) -> str:
    return f"{host.strip('[]').lower()}:{port}"


@functools.cache
def _local_addresses() -> frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """This host's own IP addresses: Linux's local routes (``/proc/net/fib_trie``, the ``/32 host
    LOCAL`` entries) and IPv6 interface addresses (``/proc/net/if_inet6``), plus what its name
    resolves to (elsewhere, or without /proc)."""
    found: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    try:
        last = None
        for line in Path("/proc/net/fib_trie").read_text().splitlines():
            text = line.strip()
            if text.startswith(("|--", "+--")):
                last = text[3:].strip().split("/")[0]
            elif text.startswith("/32 host LOCAL") and last:
                found.add(ipaddress.IPv4Address(last))
    except (OSError, ValueError):
        pass
    try:
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            raw = line.split()[0]
            found.add(ipaddress.IPv6Address(":".join(raw[i:i + 4] for i in range(0, 32, 4))))
    except (OSError, ValueError, IndexError):
        pass
    for name in _host_names():
        try:
            for info in socket.getaddrinfo(name, None):
                found.add(ipaddress.ip_address(str(info[4][0]).split("%")[0]))
        except (OSError, ValueError):
            pass
    return frozenset(found)


@functools.cache
def _host_names() -> tuple[str, ...]:
    """This host's name and fully qualified name, lower-case (looked up once: a resolver may
    be slow)."""
    name = socket.gethostname().lower()
    return (name, socket.getfqdn(name).lower()) if name else ()


class Remedy(ABC, Generic[P]):
    """One action type of the catalog, over its parameter model ``P`` (``Params``).

    Every remedy says what it acts on (:meth:`target`) and whether that is heald itself
    (:meth:`touches_heald`, abstract: each remedy must answer for its own kind of target)."""

    name: ClassVar[str]
    description: ClassVar[str]
    Params: type[P]
    default_risk: ClassVar[Risk] = Risk.low
    has_undo: ClassVar[bool] = False

    def target(self, params: P) -> Target:
        """What the remedy acts on (for per-target limits and cooldowns)."""
        return Target("remedy", self.name)

    @abstractmethod
    def touches_heald(self, params: P, heald: HealdSelf) -> str | None:
        """Why applying with ``params`` would act on heald itself (a refusal, starting
        "refused: "), or None when it does not."""

    def cannot_apply(self, params: P, heald: HealdSelf) -> str | None:
        """Why the remedy cannot act on its target at all under heald's configuration (e.g.
        ``restart_process`` for a service heald does not manage), or None when it can. A
        remedy that cannot apply is never planned. Default: None."""
        return None

    def snapshot(self, params: P, ctx: RemedyContext) -> dict[str, Any] | None:
        """The target's state before applying (stored with the action)."""
        return None

    def already_applied(self, params: P, ctx: RemedyContext, snapshot: dict[str, Any] | None) -> bool:
        """After a crash while applying: did the effect already happen? Default False, which is
        right only for remedies that are safe to repeat."""
        return False

    @abstractmethod
    def apply(self, params: P, ctx: RemedyContext) -> RemedyResult:
        """Apply the remedy. Raises RemedyError when it fails."""

    def undo(self, params: P, ctx: RemedyContext, undo: dict[str, Any]) -> RemedyResult:
        """Undo an earlier apply; only called when ``has_undo``. Raises RemedyError."""
        raise RemedyError(f"remedy {self.name} has no undo")


#: Every remedy by name. Callers hold remedies of different parameter models, hence ``Any``.
CATALOG: dict[str, Remedy[Any]] = {}

R = TypeVar("R", bound="type[Remedy[Any]]")


def register(cls: R) -> R:
    """Class decorator: add a remedy to the catalog under ``cls.name``."""
    CATALOG[cls.name] = cls()
    return cls


def get(name: str) -> Remedy[Any]:
    """Raises RemedyParamsError for a name outside the catalog."""
    try:
        return CATALOG[name]
    except KeyError:
        raise RemedyParamsError(f"unknown remedy {name!r}; the catalog has: {', '.join(sorted(CATALOG))}") from None


def validate_params(name: str, params: dict[str, Any]) -> RemedyParams:
    """Validate ``params`` for remedy ``name``. Raises RemedyParamsError naming the field."""
    remedy = get(name)
    try:
        return remedy.Params.model_validate(params)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(params)'}: {e['msg']}" for e in err.errors())
        raise RemedyParamsError(f"remedy {name}: invalid parameters: {problems}") from err
