"""heald's configuration: one YAML file (``heald.yaml``) validated by pydantic.

The file is found by ``--config``, else ``$HEALD_CONFIG``, else ``./heald.yaml`` if it exists;
with none, the embedded defaults apply (SQLite under ``./.heald``). Environment variables
``HEALD_<KEY>`` override top-level keys (``HEALD_DATABASE_URL``, ``HEALD_ENVIRONMENT``).
Relative paths in the file are relative to the file's directory.

Errors raise :class:`ConfigError`, whose message names the file, the line, the key and what
was expected.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from heald.models import Risk
from heald.yamlfile import YamlFileError, YamlProblem, describe_validation_error, read_yaml

Seconds = Annotated[float, Field(gt=0)]

#: The names of targets (``containers``, ``systemd_units``, ``hosts``) as heald calls them: what
#: remedy parameters and probes refer to. No shell metacharacter, no path separator, no space,
#: never a leading ``-`` (an option), so a name can never become something else in a command.
TARGET_KEY_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.@:-]{0,199}$"

#: A systemd unit name (systemd.unit(5)): a name of letters, digits and ``:_.@-`` (never a
#: leading ``-``, no ``/``, no ``\\`` escapes, no spaces), then a unit type suffix.
UNIT_NAME_PATTERN = (r"^[A-Za-z0-9_:][A-Za-z0-9_:.@-]{0,240}\.(service|socket|target|timer|path|mount|automount|"
                     r"swap|slice|scope|device)$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProbeConfig(_Section):
    """An active check of a service: HTTP GET, TCP connect, process liveness, a metric
    threshold read by scraping a Prometheus ``/metrics`` endpoint, or the disk usage of a
    directory against its quota.

    A ``metric`` probe reads ``metric`` (a sample name as exposed, e.g. ``http_requests_total``)
    from ``url``. Its series, filtered by the ``match`` label matchers, are summed per ``by``
    labels; the worst group is compared with ``above``/``below``:
    - a counter gives its rate per second over ``window_seconds`` (counter resets handled as
      Prometheus' ``rate`` does), or with ``per`` (another counter) the ratio of the two
      increases, e.g. 5xx responses per response;
    - with ``quantile``, ``metric`` is a histogram and the value is that quantile of the
      observations made during the window (as ``histogram_quantile``);
    - a gauge gives its current value.
    A group whose denominator (or observation count) grew less than ``min_count`` in the
    window has no data; no data is neither a failure nor a recovery.

    A ``promql`` probe asks an existing Prometheus (``url``, its base URL) for the instant value
    of ``query`` (``/api/v1/query``); the worst series is compared with ``above``/``below``, and
    the probe fails only once the comparison has held for ``for_seconds`` (as a rule's ``for``).

    A ``container`` probe checks a container of ``containers`` (``container``: running, health,
    restarts) and a ``systemd`` probe a unit of ``systemd_units`` (``unit``: active, restarts);
    see :mod:`heald.sources.targets`.
    """

    type: Literal["http", "tcp", "process", "metric", "disk", "promql", "container", "systemd"] = Field(
        default="http", description="what the probe checks")
    name: str | None = Field(default=None,
                             description="the probe's name in signals and metrics (default: derived from type and target)")
    alertname: str | None = Field(default=None, description="the alertname label of its signals (default per type)")
    url: str | None = Field(default=None, description="for type http, metric (the /metrics URL) and promql "
                                                      "(Prometheus' base URL, e.g. http://127.0.0.1:9090)")
    host: str = Field(default="127.0.0.1", description="for type tcp: the host to connect to")
    port: int | None = Field(default=None, ge=1, le=65535, description="for type tcp")
    expect_status: list[int] = Field(default_factory=lambda: list(range(200, 400)),
                                     description="for type http: the status codes that count as healthy")
    interval_seconds: Seconds = Field(default=1.0, description="time between two checks")
    timeout_seconds: Seconds = Field(default=1.0, description="limit of one check")
    failure_threshold: int = Field(default=3, ge=1, le=100,
                                   description="consecutive failed checks before a signal fires")
    metric: str | None = Field(default=None, pattern=r"^[a-zA-Z_:][a-zA-Z0-9_:]*$", description="for type metric")
    match: list[str] = Field(default_factory=list, description="label matchers on the metric's series")
    by: list[str] = Field(default_factory=list, description="labels to group the series by (carried on the signal)")
    per: str | None = Field(default=None, pattern=r"^[a-zA-Z_:][a-zA-Z0-9_:]*$",
                            description="a counter to divide by (a ratio of increases)")
    per_match: list[str] = Field(default_factory=list, description="label matchers on the 'per' series")
    quantile: float | None = Field(default=None, gt=0, lt=1, description="read 'metric' as a histogram")
    window_seconds: Seconds = Field(default=5.0, description="rates and quantiles are over this window")
    min_count: float = Field(default=1.0, ge=0, description="fewer events in the window: no data")
    above: float | None = Field(default=None, description="fails when the value is above this")
    below: float | None = Field(default=None, description="fails when the value is below this")
    path: Path | None = Field(default=None, description="for type disk: the directory")
    max_bytes: int | None = Field(default=None, gt=0, description="for type disk: the quota in bytes")
    max_files: int = Field(default=100_000, ge=1, description="for type disk: count at most this many files")
    query: str | None = Field(default=None, min_length=1, max_length=4000, description="for type promql: the expression")
    for_seconds: float = Field(default=0.0, ge=0, description="for type promql: how long the threshold must be "
                                                             "crossed before the probe fails")
    container: str | None = Field(default=None, pattern=TARGET_KEY_PATTERN,
                                  description="for type container: a container of containers.<name>")
    unit: str | None = Field(default=None, pattern=TARGET_KEY_PATTERN,
                             description="for type systemd: a unit of systemd_units.<name>")

    @field_validator("match", "per_match")
    @classmethod
    def _matchers(cls, v: list[str]) -> list[str]:
        from heald.matchers import parse_matcher

        for text in v:
            parse_matcher(text)
        return v

    @model_validator(mode="after")
    def _needs_target(self) -> ProbeConfig:
        if self.type in ("http", "metric", "promql") and not self.url:
            raise ValueError(f"a {self.type} probe needs 'url'")
        if self.type == "tcp" and self.port is None:
            raise ValueError("a tcp probe needs 'port'")
        if self.type == "metric":
            if not self.metric:
                raise ValueError("a metric probe needs 'metric' (a sample name such as http_requests_total)")
            if self.above is None and self.below is None:
                raise ValueError("a metric probe needs a threshold: 'above' or 'below'")
            if self.quantile is not None and self.per is not None:
                raise ValueError("'quantile' and 'per' do not combine: a quantile is already a ratio-free value")
        if self.type == "promql":
            if not self.query:
                raise ValueError("a promql probe needs 'query' (a PromQL expression such as "
                                 "sum(rate(http_requests_total{code=~\"5..\"}[1m])))")
            if self.above is None and self.below is None:
                raise ValueError("a promql probe needs a threshold: 'above' or 'below'")
            if not self.url.startswith(("http://", "https://")):  # type: ignore[union-attr]
                raise ValueError(f"url: expected Prometheus' http(s) base URL, got {self.url!r}")
        if self.type == "disk" and (self.path is None or self.max_bytes is None):
            raise ValueError("a disk probe needs 'path' and 'max_bytes'")
        if self.type == "container" and not self.container:
            raise ValueError("a container probe needs 'container' (a name under containers)")
        if self.type == "systemd" and not self.unit:
            raise ValueError("a systemd probe needs 'unit' (a name under systemd_units)")
        return self

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.type == "http":
            return f"http {self.url}"
        if self.type == "tcp":
            return f"tcp {self.host}:{self.port}"
        if self.type == "metric":
            return f"metric {self.metric}"
        if self.type == "disk":
            return f"disk {self.path}"
        if self.type == "promql":
            return f"promql {self.query}"[:120]
        if self.type == "container":
            return f"container {self.container}"
        if self.type == "systemd":
            return f"systemd {self.unit}"
        return "process"


class ConfigRepoConfig(_Section):
    """A service's configuration kept in a git repository. heald suspects a commit made shortly
    before the service started failing, and ``git_revert`` may revert it; ``reload_url`` (POST)
    makes the service read its configuration again afterwards."""

    path: Path = Field(description="the git work tree")
    reload_url: str | None = Field(default=None, description="POSTed after a revert so the service reloads")
    reload_timeout_seconds: Seconds = Field(default=5.0, description="limit of the reload request")


class ReleasesConfig(_Section):
    """Versioned releases of a service: directories under ``dir``, the live one named by the
    symlink ``current`` (Capistrano's layout). ``rollback_release`` points ``current`` back at
    the previous release and restarts the service when it is managed."""

    dir: Path = Field(description="the directory holding one directory per release")
    current: Path = Field(description="the symlink to the live release")
    log: Path | None = Field(default=None, description="a revisions log (default <dir>/../revisions.log)")

    @property
    def revisions_log(self) -> Path:
        return self.log or self.dir.parent / "revisions.log"


class CleanupConfig(_Section):
    """A directory ``cleanup_path`` may clean: only files matching ``pattern`` (a glob on the
    file name) whose last modification is older than ``older_than_seconds``."""

    path: Path = Field(description="the directory")
    pattern: str = Field(default="*", description="a glob on file names; only matching files are deleted")
    older_than_seconds: Seconds = Field(default=86400.0,
                                        description="only files not modified for this long are deleted")
    max_files: int = Field(default=10_000, ge=1, description="delete at most this many files per run")


class CommandConfig(_Section):
    """A command ``run_command`` may run (the allowlist): its argv, exactly, with no shell."""

    argv: list[str] = Field(min_length=1, description="the command and its arguments, exactly (no shell)")
    cwd: Path | None = Field(default=None, description="working directory")
    env: dict[str, str] = Field(default_factory=dict, description="environment variables added for the command")
    timeout_seconds: Seconds = Field(default=60.0, description="limit of one run; the command is killed after it")
    idempotent: bool = Field(default=False, description="safe to run again after a crash mid-run")
    host: str | None = Field(default=None, pattern=TARGET_KEY_PATTERN,
                             description="run it on this host of hosts over SSH (default: this machine); "
                                         "not with cwd or env")

    @model_validator(mode="after")
    def _remote(self) -> CommandConfig:
        if self.host is not None and (self.cwd is not None or self.env):
            raise ValueError("cwd and env apply on this machine only; a command on 'host' runs in the login "
                             "user's home with its environment")
        return self


class RemediesConfig(_Section):
    """What remedies may touch beyond a service's own declarations."""

    http_allowed_urls: list[str] = Field(default_factory=list,
                                         description="URL prefixes http_request may call")
    commands: dict[str, CommandConfig] = Field(default_factory=dict, description="run_command's allowlist, by name")

    @field_validator("http_allowed_urls")
    @classmethod
    def _http_prefixes(cls, v: list[str]) -> list[str]:
        for u in v:
            if not u.startswith(("http://", "https://")) or "://" not in u or len(u.split("/", 3)) < 4:
                raise ValueError(f"{u!r}: expected an http(s) URL prefix ending with a path, e.g. http://host:port/admin/")
        return v


class ContainerConfig(_Section):
    """A container heald adopts by reference (``containers.<name>``): it talks to the engine
    that runs it through the Docker Engine API (Docker, or podman's ``podman system service``),
    never needs to have started it, and never creates one of its own except when
    ``rollback_container_image`` recreates this one on its previous image.

    A ``container`` probe (``services.<service>.probes[]``, ``container: <name>``) checks its
    state, under that service; ``restart_container`` and ``rollback_container_image`` act on it; its logs' tail is
    evidence of a diagnosis."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$",
                      description="the container's name (or id) on the engine")
    docker_host: str = Field(default="unix:///var/run/docker.sock", pattern=r"^(unix|tcp|ssh)://",
                             description="the engine's Docker API: unix:///path/to.sock (Docker, or podman's "
                                         "'podman system service'), tcp://host:port or ssh://user@host")
    timeout_seconds: Seconds = Field(default=10.0, description="limit of one API call")
    stop_timeout_seconds: Seconds = Field(default=10.0,
                                          description="how long the container gets to stop (SIGTERM) before SIGKILL")
    start_period_seconds: Seconds = Field(default=3.0,
                                          description="a restarted or recreated container that is not running this "
                                                      "long after its start is a failed remedy")
    log_lines: int = Field(default=30, ge=1, le=1000, description="lines of its log kept as evidence")


class SSHHostConfig(_Section):
    """A remote host heald reaches over SSH (``hosts.<name>``): key authentication only, the
    host key checked against ``known_hosts`` (an unknown or different key is refused, never
    accepted), at most ``max_sessions`` commands at once, each bounded in time."""

    address: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:\[\]-]+$", description="host name or IP address")
    port: int = Field(default=22, ge=1, le=65535, description="SSH port")
    user: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$", description="login name")
    key_file: Path = Field(description="private key (OpenSSH or PEM format) heald authenticates with")
    key_passphrase_env: str | None = Field(default=None, min_length=1,
                                           description="environment variable holding the key's passphrase")
    known_hosts: Path = Field(description="OpenSSH known_hosts file holding the host's key; required")
    max_sessions: int = Field(default=2, ge=1, le=64, description="commands run at once on this host")
    connect_timeout_seconds: Seconds = Field(default=10.0, description="limit of connecting and authenticating")
    command_timeout_seconds: Seconds = Field(default=30.0, description="limit of one command")


class SystemdUnitConfig(_Section):
    """A systemd unit heald adopts by reference (``systemd_units.<name>``), on this machine or
    on one of ``hosts``. heald reads its state with ``systemctl show`` and its journal with
    ``journalctl -o json``, and may restart, reload and reset-failed it.

    ``command_prefix`` puts an argv in front of every ``systemctl``/``journalctl`` run on this
    machine: ``[podman, exec, host1]`` reaches the systemd of a container, ``[sudo, -n]`` a
    system heald may not act on as its own user."""

    unit: str = Field(pattern=UNIT_NAME_PATTERN, description="the unit's name, with its type (web.service)")
    host: str | None = Field(default=None, pattern=TARGET_KEY_PATTERN,
                             description="a host of hosts to reach it over SSH (default: this machine)")
    command_prefix: list[str] = Field(default_factory=list,
                                      description="argv put before systemctl and journalctl on this machine (no shell)")
    timeout_seconds: Seconds = Field(default=30.0, description="limit of one systemctl or journalctl run")
    start_period_seconds: Seconds = Field(default=3.0,
                                          description="a restarted unit that is not active this long after the "
                                                      "restart is a failed remedy")
    journal_lines: int = Field(default=30, ge=1, le=1000, description="journal lines kept as evidence")

    @model_validator(mode="after")
    def _one_place(self) -> SystemdUnitConfig:
        if self.host is not None and self.command_prefix:
            raise ValueError("command_prefix: applies on this machine only; a unit on 'host' is reached over SSH")
        return self


class ServiceConfig(_Section):
    """A service heald watches and heals. With ``command`` it is managed: heald starts it as a
    child process, supervises it and may restart it."""

    command: list[str] | None = Field(default=None, min_length=1,
                                      description="argv that starts the service (no shell); "
                                                  "with it heald manages the process and may restart it")
    cwd: Path | None = Field(default=None, description="working directory of the managed process")
    env: dict[str, str] = Field(default_factory=dict,
                                description="environment variables added for the managed process")
    probes: list[ProbeConfig] = Field(default_factory=list,
                                      description="active checks of the service (see services.<name>.probes[])")
    depends_on: list[str] = Field(default_factory=list,
                                  description="services this one needs (a database, a cache, an upstream API): while one of "
                                              "them fails, this service's signals join the dependency's incident, and "
                                              "a dependency's signal takes over this service's incident still in "
                                              "group_wait, so that one incident is healed and its remedy targets the "
                                              "dependency")
    labels: dict[str, str] = Field(default_factory=dict, description="labels added to every signal of this service")
    config_repo: ConfigRepoConfig | None = Field(default=None,
                                                 description="the service's configuration in a git repository "
                                                             "(see services.<name>.config_repo)")
    releases: ReleasesConfig | None = Field(default=None,
                                            description="the service's versioned releases (see services.<name>.releases)")
    cleanup: list[CleanupConfig] = Field(default_factory=list, description="directories cleanup_path may clean")
    stop_timeout_seconds: Seconds = Field(default=5.0,
                                          description="how long a managed process gets to exit after SIGTERM before SIGKILL")
    start_period_seconds: Seconds = Field(default=3.0,
                                          description="a restarted process that exits within this many seconds is a failed "
                                                      "restart (its last output lines are the evidence)")
    restart_backoff_max_seconds: Seconds = Field(default=300.0,
                                                 description="cap of the exponential wait (start_period_seconds doubled "
                                                             "per crash in a row) before heald restarts a service that "
                                                             "keeps exiting during its start period")

    @model_validator(mode="after")
    def _process_probe_needs_command(self) -> ServiceConfig:
        for i, probe in enumerate(self.probes):
            if probe.type == "process" and not self.command:
                raise ValueError(f"probes.{i}.type: a process probe needs the service's 'command' (heald can only "
                                 "watch a process it started); add 'command' or use an http/tcp probe")
        return self


DEFAULT_ERROR_PATTERN = (r"(?i)\b(?:error|err|critical|crit|fatal|panic|emerg|alert|exception|failed|failure)\b|"
                         r"\b[\w.$]*(?:Error|Exception)\b|OOMKilled|CrashLoopBackOff|BackOff|"
                         r"\b(?:exited with (?:code|status) [1-9]|terminated by signal|killed|crash(?:ed)?|segfault|"
                         r"core dumped|abort(?:ed)?|refused|denied|unreachable|unavailable|exceeded|timed out|"
                         r"deadline|not found|cannot|can't|unable to)\b|"
                         r"Traceback \(most recent call last\)|\"level\"\s*:\s*\"(?:error|critical|fatal)\"|"
                         r"\blevel=(?:error|crit|fatal)|\bOut of memory\b|\bKilled process\b|No space left|"
                         r"\b(?:HTTP/[\d.]+\"\s+|status[\"=: ]+)5\d\d\b")


class LogSourceConfig(_Section):
    """A log heald tails and mines for error templates (:mod:`heald.sources.logs`)."""

    path: str = Field(description="a file to follow, or '-' for heald's standard input")
    name: str | None = Field(default=None, description="the log's name in labels (default: the file name)")
    service: str | None = Field(default=None, description="the service whose log it is")
    labels: dict[str, str] = Field(default_factory=dict, description="labels added to every signal of this log")
    error_pattern: str = Field(default=DEFAULT_ERROR_PATTERN,
                               description="a regex: a record without a level of its own is an error when it "
                                           "matches (a record with a level is judged by min_level)")
    min_level: Literal["debug", "info", "notice", "warning", "error", "critical"] = Field(
        default="warning", description="a record whose own level (syslog priority, a level token such as ERROR or "
                                       "[WARN], a JSON or logfmt level field) is lower never becomes a signal")
    always_signal: list[str] = Field(default_factory=list,
                                     description="regexes: a record whose key line matches is signal-worthy whatever "
                                                 "its level, warm-up or never_signal")
    never_signal: list[str] = Field(default_factory=list,
                                    description="regexes: a record whose key line matches never becomes a signal "
                                                "(a known, harmless message)")
    max_new_template_signals: int = Field(default=20, ge=1, le=10_000,
                                          description="most new-template signals per rate_window_seconds; beyond "
                                                      "it one 'template_flood' signal stands for the rest (garbage "
                                                      "or a flood of unrelated errors)")
    warmup_seconds: float = Field(default=300.0, ge=0,
                                  description="a log read from its start (stdin, from_start) warms up this long in "
                                              "log time or for warmup_records records, whichever ends first: what it "
                                              "holds then is normal (no new-template or rate-jump signals); 0 = none")
    warmup_records: int = Field(default=1000, ge=0,
                                description="…and a tailed file warms up on its last this-many lines written before "
                                            "heald watched it (none: no warm-up); 0 = no warm-up")
    from_start: bool = Field(default=False, description="read the file from its start (default: only new lines)")
    new_template_signals: bool = Field(default=True, description="signal an error template never seen before")
    rate_window_seconds: Seconds = Field(default=60.0, description="window over which a template's rate is measured")
    rate_factor: float = Field(default=5.0, gt=1, description="a jump is this many times the template's earlier rate")
    rate_min_count: int = Field(default=10, ge=1, description="…and at least this many lines in the window")
    resolve_after_seconds: Seconds = Field(default=120.0, description="quiet this long → a resolved signal")
    similarity_threshold: float = Field(default=0.5, gt=0, lt=1, description="drain3's sim_th")
    max_templates: int = Field(default=2000, ge=10, le=1_000_000,
                               description="most templates kept by the miner (the least used are forgotten)")
    max_evidence_lines: int = Field(default=30, ge=1, le=1000, description="log lines kept as evidence per signal")
    max_line_bytes: int = Field(default=16_384, ge=256, description="longer lines are cut to this many bytes")
    max_lines_per_poll: int = Field(default=5000, ge=1, description="most lines read in one poll")
    poll_interval_seconds: Seconds = Field(default=0.25, description="time between two reads of the file")

    @field_validator("error_pattern", "always_signal", "never_signal")
    @classmethod
    def _regexes(cls, v: str | list[str]) -> str | list[str]:
        from heald.matchers import check_regexes

        return check_regexes(v)

    @property
    def label(self) -> str:
        return self.name or ("stdin" if self.path == "-" else Path(self.path).name)


class LLMConfig(_Section):
    """The optional LLM reasoner (:mod:`heald.diagnose.llm`): any OpenAI-compatible endpoint.

    ``base_url``, ``model`` and the key may also come from the environment:
    ``HEALD_LLM_BASE_URL``, ``HEALD_LLM_MODEL`` and the variable named by ``api_key_env``
    (default ``HEALD_LLM_API_KEY``, then ``OPENAI_API_KEY``)."""

    enabled: bool = Field(default=False, description="use the LLM reasoner (its findings alone always need a human)")
    base_url: str | None = Field(default=None,
                                 description="e.g. https://api.openai.com/v1, http://127.0.0.1:11434/v1")
    model: str | None = Field(default=None, description="the model name the endpoint serves")
    api_key: str | None = Field(default=None, description="prefer api_key_env: a key in a file is a secret at rest")
    api_key_env: str = Field(default="HEALD_LLM_API_KEY", description="environment variable holding the API key")
    timeout_seconds: Seconds = Field(default=30.0, description="limit of one call")
    max_retries: int = Field(default=2, ge=0, le=10, description="retries of a failed call (connection, 429, 5xx)")
    backoff_initial_seconds: float = Field(default=0.5, ge=0,
                                           description="first wait between retries (doubles each retry)")
    backoff_max_seconds: float = Field(default=8.0, ge=0, description="longest wait between retries")
    circuit_failure_threshold: int = Field(default=3, ge=1, description="consecutive failures that open the circuit")
    circuit_reset_seconds: Seconds = Field(default=60.0, description="how long an open circuit refuses calls")
    max_tokens: int = Field(default=1000, ge=16, le=100_000, description="completion tokens per call")
    temperature: float = Field(default=0.0, ge=0, le=2, description="sampling temperature")
    max_input_chars: int = Field(default=16_000, ge=1000, description="bound on the incident data sent")
    response_format: Literal["json_schema", "json_object", "none"] = Field(
        default="json_object", description="what to ask the endpoint for (json_schema where it supports it)")
    input_cost_per_million: float = Field(default=0.0, ge=0, description="USD per million prompt tokens")
    output_cost_per_million: float = Field(default=0.0, ge=0, description="USD per million completion tokens")

    def resolved(self) -> tuple[str | None, str | None, str | None]:
        """(base_url, model, api_key) from the file, else the environment."""
        base = self.base_url or os.environ.get("HEALD_LLM_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
        model = self.model or os.environ.get("HEALD_LLM_MODEL")
        key = self.api_key or os.environ.get(self.api_key_env) or os.environ.get("OPENAI_API_KEY")
        return base, model, key

    @model_validator(mode="after")
    def _needs_model(self) -> LLMConfig:
        if self.enabled and not self.resolved()[1]:
            raise ValueError("the LLM reasoner is enabled but has no model: set 'model' or $HEALD_LLM_MODEL")
        return self


from pydantic import AliasChoices, PrivateAttr  # noqa: E402


class ConfigDeprecationWarning(FutureWarning):
    """A deprecated key of ``heald.yaml`` was used: ``old`` and ``new`` are dotted keys from the
    top level (``healing.cooldown_seconds`` → ``healing.retry_delay_seconds``). The key still
    works; :func:`load_config` records each with its file and line in
    :attr:`HealdConfig.deprecations`, and the CLI prints them."""

    def __init__(self, old: str, new: str):
        super().__init__(f"{old} is deprecated: use {new} (same meaning, a name that says what it does)")
        self.old, self.new = old, new


def _renamed(data: Any, section: str, old: str, new: str) -> Any:
    """A ``mode="before"`` check of ``section`` (dotted) for the deprecated key ``old``, renamed
    ``new``: warns (:class:`ConfigDeprecationWarning`); refuses both at once."""
    if isinstance(data, dict) and old in data:
        if new in data:
            raise ValueError(f"give {new} or the deprecated {old}, not both")
        import warnings

        warnings.warn(ConfigDeprecationWarning(f"{section}.{old}", f"{section}.{new}"), stacklevel=2)
    return data


class HealingConfig(_Section):
    """Bounds on every healing loop (DESIGN.md invariant 4)."""

    group_wait_seconds: float = Field(default=0.5, ge=0, description="wait for more signals before diagnosing")
    max_concurrent: int = Field(
        default=128, ge=1, le=1024,
        description="healings acting at once in one heald (the worker concurrency of DBOS's healing queue); the "
                    "others wait in the queue (ENQUEUED), holding no thread. A healing waiting for an approval, for a "
                    "human after a hand-over (needs_attention) or for a cooldown or rate limit to lift gives its slot "
                    "up meanwhile (it keeps a thread, no database connection), and takes one back before it acts "
                    "again, before any healing still queued. The store's database pools are sized from it (at most "
                    "32 + 4 kept open; more threads wait for a connection)")
    max_waiting: int = Field(
        default=1000, ge=0, le=100_000,
        description="healings waiting for a human (or a block to lift) that give their slot up meanwhile, at most, in "
                    "one heald: each still holds a thread; beyond it a waiting healing keeps its slot, as one acting "
                    "does (0: waits always keep their slot)")
    signals_first_seconds: float = Field(
        default=5.0, ge=0, le=300,
        description="signals first: during a burst of signals (messages less than 0.1 s apart), the healings' steps "
                    "wait for its first this many seconds, then run one after another with at most half of the time, "
                    "so that a burst is stored at full speed and its incidents are diagnosed with all its signals "
                    "(heald.engine.signals_first); "
                    "0: healings' steps never wait for signals")
    max_attempts: int = Field(default=3, ge=1, le=20, description="remedy attempts per incident before it escalates")
    retry_delay_seconds: float = Field(
        default=5.0, ge=0, validation_alias=AliasChoices("retry_delay_seconds", "cooldown_seconds"),
        description="pause between two attempts on the same incident (formerly cooldown_seconds, a deprecated alias); "
                    "across incidents see policy.budgets.remedy_cooldown_seconds")
    stabilization_seconds: float = Field(default=2.0, ge=0, description="checks must pass this long")
    verify_interval_seconds: Seconds = Field(default=0.25, description="time between two verification checks")
    verify_timeout_seconds: Seconds = Field(default=30.0,
                                            description="how long verification may take before the attempt counts as failed")
    approval_ttl_seconds: Seconds = Field(default=3600.0,
                                          description="how long an approval request waits before the incident escalates")
    blocked_backoff_initial_seconds: Seconds = Field(
        default=10.0, description="a remedy blocked by a cooldown or rate limit: the first wait before heald "
                                  "re-checks the signals and asks the gate again (doubles each time, like "
                                  "Kubernetes' CrashLoopBackOff)")
    blocked_backoff_max_seconds: Seconds = Field(default=300.0,
                                                 description="the longest single wait of a blocked remedy")
    blocked_wait_max_seconds: float = Field(
        default=3600.0, ge=0, description="how long in all an incident waits for a blocked remedy before it is "
                                          "handed over to a human (needs_attention; 0: at once). A busy target's "
                                          "lease is waited for policy.budgets.lease_wait_seconds")
    attention_check_seconds: Seconds = Field(
        default=300.0, description="an incident that needs attention: how often heald re-checks its signals (all "
                                   "resolved: it ends); a resolved signal, a human's retry or resolve wake it at once, "
                                   "so the check is a fallback. Each check is a recorded step of the healing's durable "
                                   "workflow, for every incident waiting: keep checks per wait moderate")
    attention_max_seconds: float = Field(
        default=86400.0, ge=0, description="how long an incident waits in needs_attention for a human before it "
                                           "ends escalated (reminders stop then)")

    @model_validator(mode="before")
    @classmethod
    def _deprecated(cls, data: Any) -> Any:
        return _renamed(data, "healing", "cooldown_seconds", "retry_delay_seconds")

    @property
    def cooldown_seconds(self) -> float:
        """Deprecated name of :attr:`retry_delay_seconds`."""
        return self.retry_delay_seconds


def _known_remedies(names: list[str] | None, info: ValidationInfo) -> list[str] | None:
    """Check remedy names against the catalog's names, which the caller passes as the
    validation context ``{"remedies": names}`` (:func:`load_config`'s ``remedies``): the
    configuration layer never imports the remedy catalog. Without that context the names are
    kept unchecked (the gate refuses a remedy that is not on the allowlist anyway)."""
    known = (info.context or {}).get("remedies")
    if names is None or known is None:
        return names
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown remedies {unknown}; the catalog has: {', '.join(sorted(known))}")
    return names


class EnvironmentPolicy(_Section):
    """The gate's settings for one environment (``policy.environments.<name>``); a key left out
    takes the value of the same key under ``policy``. ``allowed_remedies`` is the allowlist
    (null: every catalog remedy): a remedy not on it is refused. ``max_risk``: a remedy above it
    is refused. ``auto: false`` makes every remedy wait for an approval."""

    auto: bool | None = Field(default=None,
                              description="false: every remedy waits for an approval (null: policy.auto)")
    auto_min_confidence: float | None = Field(default=None, ge=0, le=1,
                                              description="null: policy.auto_min_confidence")
    escalate_below_confidence: float | None = Field(default=None, ge=0, le=1,
                                                    description="null: policy.escalate_below_confidence")
    auto_max_risk: Risk | None = Field(default=None, description="null: policy.auto_max_risk")
    max_risk: Risk | None = Field(default=None,
                                  description="remedies above this risk are refused (null: policy.max_risk)")
    approvals_by_risk: dict[Risk, int] | None = Field(default=None, description="null: policy.approvals_by_risk")
    allowed_remedies: list[str] | None = Field(default=None,
                                               description="the allowlist (null: policy.allowed_remedies)")

    _remedies = field_validator("allowed_remedies")(classmethod(lambda cls, v, info: _known_remedies(v, info)))


#: Built-in environments, merged under what ``heald.yaml`` says for them: production is stricter
#: (auto only up to low risk, nothing critical, an allowlist of remedies that can be undone or
#: only propose a change); development takes ``policy``'s own keys (permissive).
BUILTIN_ENVIRONMENTS: dict[str, dict[str, Any]] = {
    "production": {"auto_max_risk": "low", "max_risk": "high",
                   "allowed_remedies": ["restart_process", "rollback_release", "git_revert", "http_request",
                                        "cleanup_path", "revert_commit", "add_dependency", "lint_autofix",
                                        "restart_container", "rollback_container_image", "restart_unit",
                                        "reload_unit", "reset_failed_unit"]},
    "development": {},
}


class RateLimitConfig(_Section):
    """At most ``max_actions`` remedies applied per ``window_seconds`` (a sliding window over the
    stored actions)."""

    max_actions: int = Field(ge=1, le=1_000_000, description="remedies allowed in the window")
    window_seconds: Seconds = Field(description="length of the sliding window")


class BudgetsConfig(_Section):
    """Loop prevention (``policy.budgets``), all kept in the store so that they hold across a
    restart of heald and across workers sharing a database.

    - ``remedy_cooldown_seconds`` (formerly ``cooldown_seconds``, a deprecated alias): after a
      remedy was applied to a target by one incident, another
      incident may not apply the same remedy to the same target for this long; the gate skips
      that candidate (recorded with the reason) and takes the next one, or escalates when none
      is left. Retries inside one incident are bounded by ``healing.max_attempts`` instead.
    - ``rate_limit_per_target`` / ``rate_limit_global``: remedies applied in a sliding window;
      a target over its limit is skipped like a cooldown, a global limit reached escalates.
    - ``breaker_failures``: after this many consecutive failed verifications on a target, its
      circuit breaker opens: remedies on it need an approval until a human resets it
      (``heald breakers reset TARGET``). It also opens on a failure rate: when at least
      ``breaker_min_attempts`` remedies were verified on the target in the last
      ``breaker_window_seconds`` and at least ``breaker_failure_rate`` of them failed (a failed
      action or a failed verification), as a flapping target does whose failures never follow
      each other (``breaker_window_seconds: 0`` turns the rate off).
    - ``lease_seconds``: one healing per target at a time: a lease row per target taken before
      acting and released after verifying; it expires after this long (a crashed worker's).
      ``lease_wait_seconds``: how long an incident waits for another's lease before escalating.
    """

    remedy_cooldown_seconds: float = Field(
        default=300.0, ge=0, validation_alias=AliasChoices("remedy_cooldown_seconds", "cooldown_seconds"),
        description="after a remedy was applied to a target, the same remedy on the same target waits this long, "
                    "across incidents (formerly cooldown_seconds, a deprecated alias)")
    rate_limit_per_target: RateLimitConfig = Field(
        default_factory=lambda: RateLimitConfig(max_actions=10, window_seconds=3600.0),
        description="remedies per target in a sliding window (over it: the target is skipped)")
    rate_limit_global: RateLimitConfig = Field(
        default_factory=lambda: RateLimitConfig(max_actions=100, window_seconds=3600.0),
        description="remedies across all targets in a sliding window (reached: escalate)")
    breaker_failures: int = Field(default=3, ge=1, le=1000, description="failed verifications that open a breaker")
    breaker_window_seconds: float = Field(
        default=600.0, ge=0, le=7 * 86400,
        description="the sliding window over which a target's failure rate is measured (0: consecutive failures only)")
    breaker_failure_rate: float = Field(
        default=0.5, gt=0, le=1,
        description="share of the remedies verified on a target within the window that failed (failed action or "
                    "failed verification) at which its breaker opens")
    breaker_min_attempts: int = Field(
        default=4, ge=1, le=10_000,
        description="remedies verified on a target within the window before its failure rate can open the breaker")
    lease_seconds: Seconds = Field(default=3600.0, description="a target lease expires after this long")
    lease_wait_seconds: float = Field(default=300.0, ge=0, description="wait this long for a busy target")
    lease_poll_seconds: Seconds = Field(default=0.5, description="how often a waiting incident retries the lease")

    @model_validator(mode="before")
    @classmethod
    def _deprecated(cls, data: Any) -> Any:
        return _renamed(data, "policy.budgets", "cooldown_seconds", "remedy_cooldown_seconds")

    @property
    def cooldown_seconds(self) -> float:
        """Deprecated name of :attr:`remedy_cooldown_seconds`."""
        return self.remedy_cooldown_seconds


class ShadowConfig(_Section):
    """Shadow mode ("watch, don't touch", where a team starts trusting heald): for an incident in
    one of ``environments``, or diagnosed by one of ``runbooks``, heald does everything up to the
    action — diagnosis, plan, the gate's decision — and records what it would have done
    (audit ``action.shadowed``: remedy, parameters, target and the gate's decision) without
    acting; the incident is then handed over to a human (``needs_attention``)."""

    environments: list[str] = Field(default_factory=list,
                                    description="environments (the incident's, from the top-level 'environment') "
                                                "where heald only records what it would have done")
    runbooks: list[str] = Field(default_factory=list,
                                description="runbook names whose incidents heald only records what it would have done "
                                            "for, in every environment")

    def covers(self, environment: str | None, runbook: str | None) -> str | None:
        """Why an incident in ``environment`` diagnosed by ``runbook`` is in shadow mode, or None."""
        if environment is not None and environment in self.environments:
            return f"shadow mode in environment {environment} (policy.shadow.environments)"
        if runbook is not None and runbook in self.runbooks:
            return f"shadow mode for runbook {runbook} (policy.shadow.runbooks)"
        return None


class PolicyConfig(_Section):
    """The gate: risk × confidence × environment → auto, approval, escalate or refuse
    (:mod:`heald.policy`). The keys of :class:`EnvironmentPolicy` set here are the defaults of
    every environment; ``environments`` overrides them per environment (the one used is the
    incident's, from the top-level ``environment``), over :data:`BUILTIN_ENVIRONMENTS`."""

    auto: bool = Field(default=True, description="false: every remedy waits for an approval")
    auto_min_confidence: float = Field(default=0.9, ge=0, le=1,
                                       description="a diagnosis at least this confident may be acted on automatically")
    escalate_below_confidence: float = Field(default=0.7, ge=0, le=1,
                                             description="a diagnosis less confident than this escalates to a human")
    auto_max_risk: Risk = Field(default=Risk.low, description="remedies up to this risk may run without approval")
    max_risk: Risk = Field(default=Risk.critical, description="remedies above this risk are refused")
    approvals_by_risk: dict[Risk, int] = Field(
        default_factory=lambda: {Risk.low: 1, Risk.medium: 1, Risk.high: 2, Risk.critical: 2},
        description="approvals (distinct humans) a remedy of each risk needs")
    allowed_remedies: list[str] | None = Field(default=None, description="the allowlist; null: every catalog remedy")
    environments: dict[str, EnvironmentPolicy] = Field(default_factory=dict,
                                                       description="per-environment overrides of these keys "
                                                                   "(see policy.environments.<name>)")
    budgets: BudgetsConfig = Field(default_factory=BudgetsConfig,
                                   description="loop prevention: cooldowns, rate limits, breakers, leases (see policy.budgets)")
    shadow: ShadowConfig = Field(default_factory=ShadowConfig,
                                 description="shadow mode: environments and runbooks where heald records what it would "
                                             "have done instead of acting (see policy.shadow)")

    _remedies = field_validator("allowed_remedies")(classmethod(lambda cls, v, info: _known_remedies(v, info)))

    @model_validator(mode="before")
    @classmethod
    def _builtin_environments(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        given = data.get("environments") or {}
        if not isinstance(given, dict):
            return data
        merged: dict[str, Any] = {}
        for name, builtin in BUILTIN_ENVIRONMENTS.items():
            override = given.get(name) or {}
            merged[name] = {**builtin, **override} if isinstance(override, dict) else override
        for name, value in given.items():
            merged.setdefault(name, value)
        return {**data, "environments": merged}

    @model_validator(mode="after")
    def _thresholds(self) -> PolicyConfig:
        for name, rules in [("policy", self), *((f"environments.{n}", self.for_environment(n))
                                                for n in self.environments)]:
            if rules.escalate_below_confidence > rules.auto_min_confidence:
                raise ValueError(f"{name}: escalate_below_confidence ({rules.escalate_below_confidence}) is above "
                                 f"auto_min_confidence ({rules.auto_min_confidence})")
        return self

    def for_environment(self, environment: str | None) -> PolicyConfig:
        """The rules of ``environment``: this policy with the environment's keys applied (an
        environment not configured gets the policy's own keys)."""
        env = self.environments.get(environment or "")
        if env is None:
            return self
        return self.model_copy(update=env.model_dump(exclude_none=True))


class InhibitRule(_Section):
    """An inhibition rule, as Alertmanager's ``inhibit_rules``: while a signal matching
    ``source_matchers`` fires, a new signal matching ``target_matchers`` whose ``equal`` labels
    have the same values as the source's is recorded but starts nothing."""

    source_matchers: list[str] = Field(min_length=1, description="label matchers of the muting signal")
    target_matchers: list[str] = Field(min_length=1, description="label matchers of the muted signals")
    equal: list[str] = Field(default_factory=list, description="labels whose values must be equal in both")

    @field_validator("source_matchers", "target_matchers")
    @classmethod
    def _matchers(cls, v: list[str]) -> list[str]:
        from heald.matchers import parse_matcher

        for text in v:
            parse_matcher(text)
        return v


class CorrelationRoute(_Section):
    """One route of ``correlation.routes``, as a route of Alertmanager's routing tree: a signal
    matching all ``matchers`` is grouped by this route's ``group_by`` and its new incident waits
    this route's ``group_wait_seconds`` before diagnosis; a key left out falls back to
    ``correlation.group_by`` and ``healing.group_wait_seconds``. The first matching route wins."""

    matchers: list[str] = Field(default_factory=list,
                                description="label matchers (name=\"value\", name=~\"regex\", …) over the signal's labels "
                                            "and source, kind, service, severity; none: every signal matches")
    group_by: list[str] | None = Field(default=None, min_length=1,
                                       description="labels whose values make the grouping key of a matching signal "
                                                   "(null: correlation.group_by)")
    group_wait_seconds: float | None = Field(default=None, ge=0,
                                             description="how long an incident this route opens waits for more signals "
                                                         "before diagnosis (null: healing.group_wait_seconds)")

    @field_validator("matchers")
    @classmethod
    def _matchers(cls, v: list[str]) -> list[str]:
        from heald.matchers import parse_matcher

        for text in v:
            parse_matcher(text)
        return v


class CorrelationConfig(_Section):
    """How signals become incidents (docs/correlation.md). Signals about the same target (the
    service, host or commit they are about) join its open incident whatever their alert names;
    signals a sender grouped (Alertmanager's ``groupKey``) join one incident; otherwise
    ``group_by`` labels make the grouping key (as Alertmanager's), per ``routes``.
    ``healing.group_wait_seconds`` is how long an incident waits for more signals before
    diagnosis, and ``services.<name>.depends_on`` is the dependency map (a dependency's incident
    absorbs its dependents' signals). A change (a config commit, a release) made within
    ``change_window_seconds`` before a failure began is suspect."""

    group_by: list[str] = Field(default_factory=lambda: ["service", "alertname"], min_length=1,
                                description="labels whose values make the grouping key of an incident "
                                            "(signals about one target join its incident whatever the key)")
    routes: list[CorrelationRoute] = Field(default_factory=list,
                                           description="per-signal group_by and group_wait_seconds, as Alertmanager's "
                                                       "routing tree: the first route whose matchers all match applies "
                                                       "(see correlation.routes[])")
    change_window_seconds: Seconds = Field(default=900.0,
                                           description="a change made this long before a failure began is suspect")
    inhibit_rules: list[InhibitRule] = Field(default_factory=list, description="label-based inhibition "
                                             "(the dependency map inhibits by services.<name>.depends_on)")


class SandboxConfig(_Section):
    """Where untrusted work runs (:mod:`heald.sandbox`): the backend and the hard limits of one
    run."""

    backend: Literal["auto", "bubblewrap", "docker"] = Field(
        default="auto", description="auto: bubblewrap if it works, else Docker if an engine answers, else refuse")
    memory_mb: int = Field(default=2048, ge=64, description=(
        "memory of the whole run (a cgroup: every process, page cache, /tmp and /dev/shm together) and "
        "the address space of each process (RLIMIT_AS), MiB"))
    cpu_seconds: int = Field(default=600, ge=1, description="CPU time per process (RLIMIT_CPU), seconds")
    max_processes: int = Field(default=256, ge=4, description=(
        "processes and threads alive at once in one run (the run's cgroup pids.max, and RLIMIT_NPROC)"))
    shm_size_mb: int = Field(default=64, ge=1, description="size of the run's private /dev/shm, MiB")
    disk_mb: int = Field(default=4096, ge=16, description=(
        "what all the runs in one work tree can write there together (the tree gets its own filesystem of "
        "this size), MiB; must hold the CI virtualenv (.heald/venv)"))
    aggregate_limits: Literal["auto", "required"] = Field(default="auto", description=(
        "auto: limit the whole run with a cgroup and bound its disk where this host allows (heald as root), "
        "and record in each run when it could not; required: refuse a run that cannot have them"))
    file_size_mb: int = Field(default=1024, ge=1, description="largest file a run may write (RLIMIT_FSIZE), MiB")
    open_files: int = Field(default=4096, ge=16, description="file descriptors per process (RLIMIT_NOFILE)")
    tmp_size_mb: int = Field(default=512, ge=1, description="size of the run's private /tmp, MiB")
    timeout_seconds: Seconds = Field(default=900.0,
                                     description="wall-clock limit of one run; the whole run is killed")
    output_limit_kb: int = Field(default=1024, ge=16, description="output kept per run (first and last parts), KiB")
    uid: int = Field(default=65534, ge=1, description="user the sandbox runs as when heald runs as root")
    gid: int = Field(default=65534, ge=1, description="group the sandbox runs as when heald runs as root")
    read_only_paths: list[Path] = Field(default_factory=list, description="extra host paths visible read-only")
    docker_image: str = Field(default="python:3.11-slim", min_length=1, description="image of the Docker backend")


class GitHubConfig(_Section):
    """GitHub's REST API for pull requests (``api_url`` for GitHub Enterprise:
    ``https://HOST/api/v3``). The token is read from the environment variable ``token_env`` at
    the moment it is needed; it is never written to the store or given to a sandbox."""

    api_url: str = Field(default="https://api.github.com", pattern=r"^https?://", description="REST API base URL")
    token_env: str = Field(default="GITHUB_TOKEN", min_length=1, description="environment variable holding the token")
    host: str = Field(default="github.com", min_length=1,
                      description="git host whose https URLs get the token for push")


class CiRepoConfig(_Section):
    """Per-repository settings (``ci.repos."owner/name"``), all optional."""

    url: str | None = Field(default=None, description="clone and push URL (default: the webhook's clone_url)")
    test_command: str | None = Field(default=None,
                                     description="shell command that runs the tests (default: detected)")
    base_branch: str | None = Field(default=None,
                                    description="branch pull requests target (default: the failing one)")
    install_command: str | None = Field(default=None, description="shell command that installs the dependencies")
    quarantine: list[str] = Field(default_factory=list, description="known-failing tests of this repository (pytest "
                                  "node ids or prefixes of them, unittest ids): never counted as the failure, never "
                                  "a reason to revert; added to ci.quarantine")


class PullRequestConfig(_Section):
    """Bounds on the pull requests heald opens."""

    max_per_repo: int = Field(default=5, ge=1, description="pull requests per repository per window")
    window_seconds: Seconds = Field(default=3600.0, description="the rate-limit window")
    draft: bool = Field(default=True, description="open pull requests as drafts")


class ForwardFixConfig(_Section):
    """Forward fixes (:mod:`heald.ci.repair`): a model writes a patch for a failing test that
    never passed, heald validates it in the sandbox. The endpoint is ``llm``'s (base URL, model,
    key, prices, timeout); these bound the loop per incident."""

    enabled: bool = Field(default=True, description="try a forward fix when an LLM endpoint is configured")
    max_rounds: int = Field(default=3, ge=1, le=10, description="model answers tried per incident")
    max_candidates: int = Field(default=1, ge=1, le=5,
                                description="valid candidates to collect before choosing the smallest")
    max_tokens: int = Field(default=60_000, ge=1000, description="prompt + completion tokens per incident")
    max_cost_usd: float = Field(default=1.0, ge=0, description="model cost per incident (from llm's prices)")
    context_tokens: int = Field(default=3000, ge=200, le=50_000,
                                description="budget of the code excerpts given to the model (4 characters a token)")
    max_changed_lines: int = Field(default=60, ge=1, description="largest change proposed (lines added + removed)")
    recent_commits: int = Field(default=3, ge=0, le=100, description="commits whose diff counts as recent evidence")


class CiConfig(_Section):
    """CI healing (:mod:`heald.ci`): where repositories are cached, how failures are reproduced
    and bisected, and where fixes go. Every loop is bounded here."""

    work_dir: Path | None = Field(default=None, description="clone cache and work trees (default <state_dir>/ci)")
    python: str = Field(default="python3", min_length=1, description="interpreter inside the sandbox for the venv")
    install_timeout_seconds: Seconds = Field(default=900.0,
                                             description="limit of installing a repository's dependencies")
    check_timeout_seconds: Seconds = Field(default=900.0, description="one run of one check (lint, tests): the "
                                           "per-run timeout; a run it kills is reported as such and not re-run")
    test_timeout_seconds: Seconds = Field(default=300.0, description="one test of a pytest suite (pytest-timeout, "
                                          "installed best-effort): a hanging test fails alone as a timeout instead "
                                          "of the whole run being killed")
    quarantine: list[str] = Field(default_factory=list, description="known-failing tests (pytest node ids or prefixes "
                                  "of them, unittest ids) of every repository: a failure of one is never the "
                                  "regression; a run adds its own (heal-ci --quarantine)")
    git_timeout_seconds: Seconds = Field(default=300.0, description="one git clone, fetch or push")
    flake_reruns: int = Field(default=2, ge=1, le=10, description="re-runs of failing tests before bisecting")
    max_lookback_commits: int = Field(default=64, ge=1, le=100_000,
                                      description="how far back to look for a passing commit when none is given")
    max_bisect_commits: int = Field(default=10_000, ge=2, description="largest good..bad range heald bisects")
    max_worktrees: int = Field(default=8, ge=2, description="work trees kept per repository (oldest removed)")
    pip_cache_dir: Path | None = Field(default=None, description="the package-index proxy's cache, on the host side, "
                                       "never visible to a sandbox; files verified by SHA-256 (default: "
                                       "<work_dir>/index-cache)")
    index_urls: list[str] | None = Field(default=None, description="package indexes (simple API) the install phase "
                                         "gets packages from, through heald's proxy (default: pip's configuration "
                                         "on the host, else PyPI)")
    find_links: list[str] | None = Field(default=None, description="directories of distribution files served too "
                                         "(default: pip's find-links on the host)")
    index_cache_mb: int = Field(default=4096, ge=16, description="bound on the proxy's cache (least recently used "
                                "files evicted)")
    dry_run: bool = Field(default=False, description="do everything (reproduce, bisect, make and validate the fix) "
                          "but push a branch or open a pull request (heal-ci --dry-run)")
    branch_prefix: str = Field(default="heald/", min_length=1, description="prefix of the branches heald pushes")
    author_name: str = Field(default="heald", description="author name of heald's commits")
    author_email: str = Field(default="heald@localhost", description="author email of heald's commits")
    pull_requests: PullRequestConfig = Field(default_factory=PullRequestConfig,
                                             description="bounds on pull requests (see ci.pull_requests)")
    github: GitHubConfig = Field(default_factory=GitHubConfig, description="the GitHub API (see ci.github)")
    repos: dict[str, CiRepoConfig] = Field(default_factory=dict, description="per repository (owner/name or path)")
    forward_fix: ForwardFixConfig = Field(default_factory=ForwardFixConfig,
                                          description="model-written fixes for tests that never passed (see ci.forward_fix)")

    @field_validator("index_urls")
    @classmethod
    def _index_urls(cls, v: list[str] | None) -> list[str] | None:
        for url in v or []:
            if not url.startswith(("https://", "http://", "file:///")):
                raise ValueError(f"{url!r}: expected an https://, http:// or file:/// simple-API URL")
        return v


class ApiConfig(_Section):
    """The HTTP API. With ``auth`` (the default) every ``/v1`` request needs an API token
    (``heald tokens create --role R``); ``auth: false`` opens the API to anyone who can reach
    it, for local development only."""

    host: str = Field(default="127.0.0.1", description="address the API and dashboard listen on")
    port: int = Field(default=8077, ge=0, le=65535,
                      description="TCP port the API and dashboard listen on (0: any free port)")
    auth: bool = Field(default=True, description="require API tokens with roles; false only for local development")
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=1024**3,
                                description="largest request body accepted, in bytes (413 above it, checked before "
                                            "authentication; GitHub sends up to 25 MB for some events)")
    max_signals_per_message: int = Field(default=1000, ge=1, le=100_000,
                                         description="most alerts or events one webhook message may carry (413 above)")
    signals_per_transaction: int = Field(default=500, ge=1, le=100_000,
                                         description="a message's signals are stored in transactions of at most this "
                                                     "many, so that reads and other writers are not held up by a big "
                                                     "message; the chunks already stored stay stored if a later one "
                                                     "fails (the answer is then 503 with Retry-After)")


class WebhookConfig(_Section):
    """How one webhook source (``POST /v1/webhooks/<source>``) authenticates.

    With a secret, a source that signs its requests (GitHub's ``X-Hub-Signature-256``) is
    checked by its signature; any other source must send the secret as a bearer token, as the
    basic-auth password, or in ``X-Heald-Webhook-Secret``. ``secret_env`` names an environment
    variable holding the secret, to keep it out of the file.
    """

    secret: str | None = Field(default=None, min_length=16, description="shared secret, at least 16 characters")
    secret_env: str | None = Field(default=None, min_length=1,
                                   description="environment variable that holds the secret")

    @model_validator(mode="after")
    def _one_secret(self) -> WebhookConfig:
        if self.secret and self.secret_env:
            raise ValueError("give either 'secret' or 'secret_env', not both")
        if self.secret_env is not None:
            value = os.environ.get(self.secret_env)
            if not value:
                raise ValueError(f"secret_env: environment variable {self.secret_env} is not set or empty")
            if len(value) < 16:
                raise ValueError(f"secret_env: the secret in {self.secret_env} is shorter than 16 characters")
        return self

    @property
    def resolved_secret(self) -> str | None:
        """The secret itself, from ``secret`` or the ``secret_env`` variable (None if neither)."""
        if self.secret_env is not None:
            return os.environ.get(self.secret_env) or None
        return self.secret


NotifyEvent = Literal["escalated", "awaiting_approval", "resolved", "failed", "reminder"]


class NotifyRetryConfig(_Section):
    """Bounded retries of one notification: ``attempts`` in all, exponential backoff between
    them (``backoff_initial_seconds`` doubling up to ``backoff_max_seconds``), each attempt
    limited to ``timeout_seconds``."""

    attempts: int = Field(default=3, ge=1, le=10, description="attempts in all")
    backoff_initial_seconds: float = Field(default=0.5, ge=0,
                                           description="first wait between attempts (doubles each time)")
    backoff_max_seconds: float = Field(default=8.0, ge=0, description="longest wait between attempts")
    timeout_seconds: Seconds = Field(default=10.0, description="limit of one attempt")


class _ChannelBase(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$", description="the channel's name in the audit log")
    events: list[NotifyEvent] = Field(
        default_factory=lambda: list[NotifyEvent](("escalated", "awaiting_approval", "failed")),
        description="what it is told about; escalated and its reminders are always sent (YAML reads a key 'on' "
                    "as true, hence 'events')")
    retry: NotifyRetryConfig = Field(default_factory=NotifyRetryConfig,
                                     description="bounded retries of one message (see retry)")

    def wants(self, event: str) -> bool:
        """Is this channel told about ``event``? Escalation and its reminders always are."""
        return event in ("escalated", "reminder") or event in self.events


def _env_secret(field: str, env: str | None) -> None:
    if env is not None and not os.environ.get(env):
        raise ValueError(f"{field}: environment variable {env} is not set or empty")


class SlackChannelConfig(_ChannelBase):
    """A Slack incoming webhook (https://api.slack.com/messaging/webhooks). Its URL is a
    secret: prefer ``url_env``."""

    type: Literal["slack"] = Field(description="slack")
    url: str | None = Field(default=None, pattern=r"^https?://",
                            description="the incoming webhook URL (a secret: prefer url_env)")
    url_env: str | None = Field(default=None, min_length=1, description="environment variable holding the URL")

    @model_validator(mode="after")
    def _one_url(self) -> SlackChannelConfig:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("give exactly one of 'url' or 'url_env'")
        _env_secret("url_env", self.url_env)
        return self

    @property
    def resolved_url(self) -> str:
        return self.url or os.environ[self.url_env or ""]


class WebhookChannelConfig(_ChannelBase):
    """A generic webhook: heald POSTs JSON; with a secret it signs the body
    (``X-Heald-Signature-256: sha256=<HMAC-SHA256 hex>``, as GitHub does)."""

    type: Literal["webhook"] = Field(description="webhook")
    url: str = Field(pattern=r"^https?://", description="the URL heald POSTs JSON to")
    headers: dict[str, str] = Field(default_factory=dict, description="extra request headers")
    secret: str | None = Field(default=None, min_length=16, description="HMAC key, at least 16 characters")
    secret_env: str | None = Field(default=None, min_length=1,
                                   description="environment variable holding the HMAC key")

    @model_validator(mode="after")
    def _one_secret(self) -> WebhookChannelConfig:
        if self.secret and self.secret_env:
            raise ValueError("give either 'secret' or 'secret_env', not both")
        _env_secret("secret_env", self.secret_env)
        return self

    @property
    def resolved_secret(self) -> str | None:
        return os.environ.get(self.secret_env) if self.secret_env else self.secret


class EmailChannelConfig(_ChannelBase):
    """Email over SMTP: plain, STARTTLS (``starttls``) or implicit TLS (``tls``), with optional
    login (``username`` and the password in the environment variable ``password_env``)."""

    type: Literal["email"] = Field(description="email")
    host: str = Field(min_length=1, description="SMTP server")
    port: int = Field(default=25, ge=1, le=65535, description="SMTP port")
    starttls: bool = Field(default=False, description="upgrade to TLS with STARTTLS")
    tls: bool = Field(default=False, description="implicit TLS (SMTPS, usually port 465)")
    ca_file: Path | None = Field(default=None, description="CA certificates to trust (default: the system's)")
    username: str | None = Field(default=None, description="login name (with password_env)")
    password_env: str | None = Field(default=None, min_length=1,
                                     description="environment variable holding the password")
    from_addr: str = Field(pattern=r"^[^@\s]+@[^@\s]+$", description="the sender address")
    to: list[str] = Field(min_length=1, description="recipient addresses")

    @field_validator("to")
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        for a in v:
            if "@" not in a or any(c.isspace() for c in a):
                raise ValueError(f"expected an email address like ops@example.com, got {a!r}")
        return v

    @model_validator(mode="after")
    def _login(self) -> EmailChannelConfig:
        if self.starttls and self.tls:
            raise ValueError("give 'starttls' or 'tls', not both")
        if (self.username is None) != (self.password_env is None):
            raise ValueError("'username' and 'password_env' go together")
        _env_secret("password_env", self.password_env)
        return self


ChannelConfig = Annotated[SlackChannelConfig | WebhookChannelConfig | EmailChannelConfig, Field(discriminator="type")]


class NotificationsConfig(_Section):
    """Where heald tells humans about incidents (:mod:`heald.notify`). ``link`` is the URL a
    message points at; ``{incident_id}`` is replaced."""

    channels: list[ChannelConfig] = Field(default_factory=list,
                                          description="where messages go: Slack, webhook or email (see notifications.channels[])")
    link: str = Field(default="http://127.0.0.1:8077/v1/incidents/{incident_id}/report", pattern=r"^https?://",
                      description="URL a message points at; {incident_id} is replaced")
    reminder_interval_seconds: float = Field(
        default=1800.0, ge=0, description="while an incident needs attention (handed over, target still failing) "
                                          "and no human acknowledged it, remind the channels this often (0: never)")

    @field_validator("link")
    @classmethod
    def _template(cls, v: str) -> str:
        try:
            v.format(incident_id=1)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"expected a URL whose only placeholder is {{incident_id}}, got {v!r}") from exc
        return v

    @model_validator(mode="after")
    def _unique(self) -> NotificationsConfig:
        names = [c.name for c in self.channels]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"channels: names must be unique, {', '.join(dupes)} repeats")
        return self


class AuditConfig(_Section):
    """Signed checkpoints of the audit chain, kept outside the database
    (:mod:`heald.store.checkpoints`). ``heald serve`` writes one every
    ``checkpoint_interval_seconds`` (when the log grew) and at shutdown. Keep ``checkpoint_file``
    and ``key_file`` where the database's users cannot write (the defaults are in the state
    directory, mode 0600); ``notify_channels`` names webhook channels of ``notifications`` that
    also receive each checkpoint, as a copy outside this machine."""

    checkpoints: bool = Field(default=True, description="write signed checkpoints")
    checkpoint_interval_seconds: Seconds = Field(default=300.0,
                                                 description="time between two checkpoints (when the log grew)")
    checkpoint_file: Path | None = Field(default=None, description="default <state_dir>/audit-checkpoints.jsonl")
    key_file: Path | None = Field(default=None, description="Ed25519 signing key (PEM, 0600); default "
                                                            "<state_dir>/audit-checkpoint.key, created when missing")
    notify_channels: list[str] = Field(default_factory=list, description="webhook channels sent each checkpoint")


class ClusterConfig(_Section):
    """Several heald workers on one PostgreSQL database (:mod:`heald.engine.cluster`; see
    docs/deploy.md). Each worker heartbeats in the database every
    ``heartbeat_interval_seconds``; one silent for ``heartbeat_timeout_seconds`` is dead: one
    live worker has DBOS recover its pending healings, and its probes and log tailers (leased
    for ``heartbeat_timeout_seconds`` at a time) move to live workers. On SQLite there is one
    worker only."""

    heartbeat_interval_seconds: Seconds = Field(default=2.0, description="time between two heartbeats of a worker")
    heartbeat_timeout_seconds: Seconds = Field(
        default=15.0, description="a worker whose last heartbeat is older is dead: its healings are recovered by a "
                                  "live worker and its probe and log leases expire (at least 3 heartbeat intervals)")
    dedup_window_seconds: float = Field(
        default=60.0, ge=0,
        description="with several workers (database_lock: false): a webhook message without a delivery id whose signals "
                    "(fingerprint, status, start, end) equal a message accepted by any worker this many seconds before "
                    "is the same notification sent to two workers (Alertmanager with several webhook URLs, an HA pair) "
                    "and is stored once; 0: off")
    advertise_url: str | None = Field(default=None, max_length=500,
                                      description="this worker's API URL as others reach it, shown by 'heald workers' "
                                                  "(default http://<host>:<api.port>)")

    @model_validator(mode="after")
    def _timeout_covers_beats(self) -> ClusterConfig:
        if self.heartbeat_timeout_seconds < 3 * self.heartbeat_interval_seconds:
            raise ValueError(f"heartbeat_timeout_seconds: expected at least 3 × heartbeat_interval_seconds "
                             f"({3 * self.heartbeat_interval_seconds:g}), got {self.heartbeat_timeout_seconds:g}")
        return self


class IdentityConfig(_Section):
    """How heald recognises itself in a signal, so that it never remedies itself however a
    signal names it (DESIGN.md invariant 7). A signal names heald when its ``service``, or its
    ``job``, ``service``, ``app``, ``app_kubernetes_io_name``, ``container`` or ``instance``
    label, is one of ``names``;
    when its ``instance`` is an address of heald's API (``api.host``:``api.port``,
    ``localhost``, a loopback address or this host's name with ``api.port``, or one of
    ``addresses``); or when its ``pid`` label is heald's process id. An incident with such a
    signal gets no remedy: it is escalated with the reason, whether or not heald is also
    declared under ``services``."""

    names: list[str] = Field(default_factory=lambda: ["heald"],
                             description="job, instance and service names that mean heald itself (compared without case)")
    addresses: list[str] = Field(default_factory=list,
                                 description="more host:port addresses that reach heald (a proxy's, a load balancer's)")


class HealdConfig(_Section):
    """The whole configuration (the top level of ``heald.yaml``)."""

    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default sqlite:///<state_dir>/heald.db"
    )
    state_dir: Path = Field(default=Path(".heald"),
                            description="directory of heald's own state: the SQLite store, DBOS's database, "
                                        "audit checkpoints and key, CI clones")
    environment: str = Field(default="development",
                             description="the environment incidents belong to; selects policy.environments.<name> (production is stricter)")
    executor_id: str = Field(default="local", pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.@:-]{0,99}$",
                             description="this worker's id, unique per heald process sharing a database (letters, "
                                         "digits and _.@:-, at most 100)")
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info",
                                                                    description="level of heald's own logs (on stderr)")
    log_format: Literal["json", "console"] = Field(
        default="json", description="format of all of heald's own log lines on stderr, uvicorn's and DBOS's included: "
                                    "'json' (one JSON object a line) or 'console' (key=value text)")
    api: ApiConfig = Field(default_factory=ApiConfig, description="the HTTP API and dashboard (see api)")
    webhooks: dict[str, WebhookConfig] = Field(default_factory=dict, description="per-source webhook secrets")
    services: dict[str, ServiceConfig] = Field(default_factory=dict,
                                               description="the services heald watches and heals, by name (see services.<name>)")
    containers: dict[str, ContainerConfig] = Field(default_factory=dict,
                                                   description="containers heald adopts through the Docker Engine API, "
                                                               "by name (see containers.<name>)")
    systemd_units: dict[str, SystemdUnitConfig] = Field(default_factory=dict,
                                                        description="systemd units heald adopts, by name "
                                                                    "(see systemd_units.<name>)")
    hosts: dict[str, SSHHostConfig] = Field(default_factory=dict,
                                            description="remote hosts heald reaches over SSH, by name (see hosts.<name>)")
    runbooks: list[Path] = Field(default_factory=list, description="extra runbook files or directories")
    logs: list[LogSourceConfig] = Field(default_factory=list, description="logs to tail and mine for errors")
    llm: LLMConfig = Field(default_factory=LLMConfig, description="the optional LLM reasoner (see llm)")
    default_runbooks: bool = Field(default=True,
                                   description="load the runbooks shipped with heald besides those in runbooks")
    healing: HealingConfig = Field(default_factory=HealingConfig,
                                   description="bounds on every healing loop (see healing)")
    policy: PolicyConfig = Field(default_factory=PolicyConfig,
                                 description="the gate: when to act, ask or escalate (see policy)")
    correlation: CorrelationConfig = Field(default_factory=CorrelationConfig,
                                           description="how signals become incidents (see correlation)")
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig,
                                   description="where untrusted work runs and its limits (see sandbox)")
    remedies: RemediesConfig = Field(default_factory=RemediesConfig,
                                     description="what remedies may touch beyond the services' own declarations (see remedies)")
    ci: CiConfig = Field(default_factory=CiConfig, description="CI healing (see ci)")
    notifications: NotificationsConfig = Field(default_factory=NotificationsConfig,
                                               description="where humans are told about incidents (see notifications)")
    audit: AuditConfig = Field(default_factory=AuditConfig,
                               description="signed checkpoints of the audit chain (see audit)")
    identity: IdentityConfig = Field(default_factory=IdentityConfig,
                                     description="how heald recognises itself in signals (see identity)")
    cluster: ClusterConfig = Field(default_factory=ClusterConfig,
                                   description="several workers on one PostgreSQL database (see cluster)")
    database_lock: bool = Field(
        default=True,
        description="hold an exclusive lock on the database (a PostgreSQL advisory lock; a lock file beside a SQLite "
                    "file outside state_dir) so that a second heald on it refuses to start; false only for a "
                    "multi-worker mode where several heald processes, each with its own state_dir, share one "
                    "PostgreSQL database (the state directory's lock is always held)")
    source_file: Path | None = Field(default=None, exclude=True, description="set by the loader")
    _deprecations: list[YamlProblem] = PrivateAttr(default_factory=list)

    @property
    def deprecations(self) -> list[YamlProblem]:
        """Deprecated keys the loaded file used, each with its file, line, old key and the new
        key to use instead (set by :func:`load_config`)."""
        return self._deprecations

    @field_validator("database_url")
    @classmethod
    def _known_scheme(cls, v: str | None) -> str | None:
        if v is None:
            return v
        scheme = v.split(":", 1)[0].split("+", 1)[0]
        if scheme not in ("sqlite", "postgresql", "postgres"):
            raise ValueError(f"expected a sqlite:/// or postgresql:// URL, got scheme {scheme!r}")
        return v

    @model_validator(mode="after")
    def _deps_exist(self) -> HealdConfig:
        for name, svc in self.services.items():
            for dep in svc.depends_on:
                if dep not in self.services:
                    raise ValueError(f"service {name!r} depends on {dep!r}, which is not a configured service")
        for name in self.services:  # a cycle would make every service the root cause of every other
            path = [name]
            todo = [(name, [name])]
            while todo:
                current, path = todo.pop()
                for dep in self.services[current].depends_on:
                    if dep == name:
                        raise ValueError(f"services: dependency cycle {' → '.join([*path, dep])}")
                    if dep not in path:
                        todo.append((dep, [*path, dep]))
        return self

    @model_validator(mode="after")
    def _targets_exist(self) -> HealdConfig:
        import re

        for section in ("containers", "systemd_units", "hosts"):
            for key in getattr(self, section):
                if not re.match(TARGET_KEY_PATTERN, key):
                    raise ValueError(f"{section}: {key!r} is not a valid name (letters, digits, _.@:- and no "
                                     "leading - or .)")
        for name, unit in self.systemd_units.items():
            if unit.host is not None and unit.host not in self.hosts:
                raise ValueError(f"systemd_units.{name}.host: {unit.host!r} is not a host of hosts")
        for name, cmd in self.remedies.commands.items():
            if cmd.host is not None and cmd.host not in self.hosts:
                raise ValueError(f"remedies.commands.{name}.host: {cmd.host!r} is not a host of hosts")
        for name, svc in self.services.items():
            for i, probe in enumerate(svc.probes):
                if probe.container is not None and probe.container not in self.containers:
                    raise ValueError(f"services.{name}.probes.{i}.container: {probe.container!r} is not a container "
                                     "of containers")
                if probe.unit is not None and probe.unit not in self.systemd_units:
                    raise ValueError(f"services.{name}.probes.{i}.unit: {probe.unit!r} is not a unit of systemd_units")
        return self

    @model_validator(mode="after")
    def _audit_channels(self) -> HealdConfig:
        types = {c.name: c.type for c in self.notifications.channels}
        for name in self.audit.notify_channels:
            if name not in types:
                raise ValueError(f"audit.notify_channels: {name!r} is not a channel of notifications.channels")
            if types[name] != "webhook":
                raise ValueError(f"audit.notify_channels: {name!r} is a {types[name]} channel; expected a webhook channel")
        return self

    def resolve_paths(self, base: Path) -> None:
        """Make relative paths absolute against ``base`` (the config file's directory)."""
        if not self.state_dir.is_absolute():
            self.state_dir = (base / self.state_dir).resolve()
        self.runbooks = [p if p.is_absolute() else (base / p).resolve() for p in self.runbooks]
        for lg in self.logs:
            if lg.path != "-" and not Path(lg.path).is_absolute():
                lg.path = str((base / lg.path).resolve())
        self.sandbox.read_only_paths = [p if p.is_absolute() else (base / p).resolve() for p in self.sandbox.read_only_paths]

        def absolute(p: Path) -> Path:
            return p if p.is_absolute() else (base / p).resolve()

        if self.ci.work_dir is not None and not self.ci.work_dir.is_absolute():
            self.ci.work_dir = (base / self.ci.work_dir).resolve()
        if self.ci.pip_cache_dir is not None and not self.ci.pip_cache_dir.is_absolute():
            self.ci.pip_cache_dir = (base / self.ci.pip_cache_dir).resolve()
        for svc in self.services.values():
            if svc.cwd is not None:
                svc.cwd = absolute(svc.cwd)
            for probe in svc.probes:
                if probe.path is not None:
                    probe.path = absolute(probe.path)
            if svc.config_repo is not None:
                svc.config_repo.path = absolute(svc.config_repo.path)
            if svc.releases is not None:
                svc.releases.dir = absolute(svc.releases.dir)
                # the symlink itself, not what it points to
                svc.releases.current = svc.releases.current if svc.releases.current.is_absolute() \
                    else base.resolve() / svc.releases.current
                if svc.releases.log is not None:
                    svc.releases.log = absolute(svc.releases.log)
            for c in svc.cleanup:
                c.path = absolute(c.path)
        for cmd in self.remedies.commands.values():
            if cmd.cwd is not None:
                cmd.cwd = absolute(cmd.cwd)
        for host in self.hosts.values():
            host.key_file = absolute(host.key_file.expanduser())
            host.known_hosts = absolute(host.known_hosts.expanduser())
        for ch in self.notifications.channels:
            if isinstance(ch, EmailChannelConfig) and ch.ca_file is not None:
                ch.ca_file = absolute(ch.ca_file)
        if self.audit.checkpoint_file is not None:
            self.audit.checkpoint_file = absolute(self.audit.checkpoint_file)
        if self.audit.key_file is not None:
            self.audit.key_file = absolute(self.audit.key_file)

    @property
    def database(self) -> str:
        """The SQLAlchemy URL of heald's store."""
        return self.database_url or f"sqlite:///{self.state_dir / 'heald.db'}"

    @property
    def audit_checkpoint_file(self) -> Path:
        """Where signed audit checkpoints are appended (``audit.checkpoint_file``, else
        ``<state_dir>/audit-checkpoints.jsonl``)."""
        return self.audit.checkpoint_file or self.state_dir / "audit-checkpoints.jsonl"

    @property
    def audit_key_file(self) -> Path:
        """The Ed25519 key that signs audit checkpoints (``audit.key_file``, else
        ``<state_dir>/audit-checkpoint.key``)."""
        return self.audit.key_file or self.state_dir / "audit-checkpoint.key"

    @property
    def ci_work_dir(self) -> Path:
        """Where CI healing keeps clones and work trees (``ci.work_dir``, else ``<state_dir>/ci``)."""
        return self.ci.work_dir or self.state_dir / "ci"

    @property
    def dbos_database(self) -> str:
        """The URL of DBOS's system database: a SQLite file beside the store, or the same
        PostgreSQL database (DBOS keeps its tables in the ``dbos`` schema)."""
        url = self.database
        if url.startswith("sqlite"):
            return f"sqlite:///{self.state_dir / 'dbos.sqlite'}"
        return url


class ConfigError(ValueError):
    """The configuration is invalid; the message names file, line, key and what was expected."""


ENV_OVERRIDES = {
    "HEALD_DATABASE_URL": "database_url",
    "HEALD_STATE_DIR": "state_dir",
    "HEALD_ENVIRONMENT": "environment",
    "HEALD_EXECUTOR_ID": "executor_id",
    "HEALD_LOG_LEVEL": "log_level",
    "HEALD_LOG_FORMAT": "log_format",
}


def config_path(explicit: Path | None = None) -> Path | None:
    """The config file to use: ``explicit``, else ``$HEALD_CONFIG``, else ``./heald.yaml`` if
    present, else None (embedded defaults)."""
    if explicit is not None:
        return explicit
    env = os.environ.get("HEALD_CONFIG")
    if env:
        return Path(env)
    default = Path("heald.yaml")
    return default if default.exists() else None


def load_config(path: Path | None = None, overrides: dict[str, Any] | None = None, *,
                remedies: Collection[str] | None = None) -> HealdConfig:
    """Load and validate the configuration (see the module docstring for the search order).

    ``overrides`` are top-level keys applied after the file and the environment. ``remedies``
    are the names of the remedy catalog (``heald.remedies.CATALOG``): remedy names in the
    configuration (``policy.allowed_remedies``, per environment) are checked against them;
    without them those names are not checked (this layer does not import the catalog).
    Raises ConfigError naming the file, line, key and what was expected.
    """
    path = config_path(path)
    data: dict[str, Any] = {}
    text = ""
    where = "(embedded defaults)"
    if path is not None:
        where = str(path)
        try:
            text, loaded = read_yaml(path)
        except YamlFileError as exc:
            raise ConfigError(str(exc)) from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}:1: (top level): expected a mapping of keys, got {type(loaded).__name__}")
        data = dict(loaded)
    env_keys = []
    for var, key in ENV_OVERRIDES.items():
        if os.environ.get(var):
            data[key] = os.environ[var]
            env_keys.append(key)
    data.update(overrides or {})
    import warnings

    from heald.yamlfile import key_line

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConfigDeprecationWarning)
            cfg = HealdConfig.model_validate(data, context={"remedies": remedies} if remedies is not None else None)
    except ValidationError as err:
        problems = describe_validation_error(where, text, err)
        problems = [
            YamlProblem(f"${next(v for v, k in ENV_OVERRIDES.items() if k == p.key)}", 0, p.key, p.message)
            if p.key in env_keys
            else p
            for p in problems
        ]
        raise ConfigError("\n".join(str(p) for p in problems)) from err
    for w in caught:
        if isinstance(w.message, ConfigDeprecationWarning):
            old_key = w.message.old
            cfg._deprecations.append(YamlProblem(where, key_line(text, old_key.split(".")) if text else 0, old_key,
                                                 f"deprecated: use {w.message.new} (the old name still works)"))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    cfg.source_file = path.resolve() if path is not None else None
    cfg.resolve_paths(path.resolve().parent if path is not None else Path.cwd())
    return cfg
