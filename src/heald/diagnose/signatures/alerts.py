"""Well-known alert names: what a firing alert of a standard rule set already says.

Names from the rule sets people actually run: the node-exporter and kubernetes mixins
(``NodeFilesystemSpaceFillingUp``, ``NodeFilesystemAlmostOutOfSpace``, ``KubePodCrashLooping``,
``KubePersistentVolumeFillingUp``, ``TargetDown``), the "awesome Prometheus alerts" collection
(``HostOutOfDiskSpace``, ``HostOutOfMemory``, ``HostOomKillDetected``, ``PostgresqlDown``,
``RedisDown``, ``MysqlDown``, ``BlackboxProbeFailed``, ``BlackboxSlowProbe``,
``BlackboxSslCertificateWillExpireSoon``, ``ContainerKilled``) and the usual service alerts
(``HighErrorRate``, ``HighLatency``, ``InstanceDown``). The name is read from a line
``alertname=<name>`` (how the knowledge-base reasoner writes a signal's labels) or
``alertname: <name>``.
"""

from __future__ import annotations

import re

from heald.diagnose.signatures.base import Classification, register

_NAME = re.compile(r"\balertname[=:]\s*\"?(?P<name>[A-Za-z_][\w:.-]*)")

# (category, confidence, regex over the alert name) — first match wins
_ALERTS: list[tuple[str, float, re.Pattern[str]]] = [
    ("out_of_memory", 0.88, re.compile(r"Oom|OOM|OutOfMemory")),
    ("disk_full", 0.88, re.compile(r"(?:Filesystem|Disk|Volume|Storage|Inode)\w*(?:Full|FillingUp|OutOfSpace|"
                                   r"OutOf\w*Space|SpaceLow|LowSpace|Usage|Quota|AlmostFull)|"
                                   r"OutOf(?:Disk|Inodes)|Disk(?:Pressure|Space)", re.IGNORECASE)),
    ("out_of_memory", 0.78, re.compile(r"Memory(?:Usage|Utili[sz]ation|Pressure|Leak|High|Limit|Overcommit)|"
                                       r"High(?:Memory|Rss|RSS)|Rss|RSS", re.IGNORECASE)),
    ("tls_error", 0.85, re.compile(r"Cert\w*(?:Expir|Invalid)|Ssl\w*Expir|SSL\w*Expir|X509|TLS", re.IGNORECASE)),
    ("database_unavailable", 0.85, re.compile(r"(?:Postgres(?:ql)?|Mysql|MySQL|Redis|Mongo(?:db)?|Database|Db)"
                                              r"(?:Down|Unavailable|NotUp|TooManyConnections|Unreachable)|"
                                              r"(?:Postgres(?:ql)?|Mysql|Redis|Mongodb)\w*Connection", re.IGNORECASE)),
    ("dns_failure", 0.8, re.compile(r"(?:Core)?Dns\w*(?:Down|Fail|Error)|DNS", re.IGNORECASE)),
    ("high_latency", 0.86, re.compile(r"Latency|Slow|ResponseTime|Duration\w*High|Apdex", re.IGNORECASE)),
    ("http_5xx", 0.86, re.compile(r"5xx|ErrorRate|Errors?High|HighErrors?|ErrorBudget|ServerErrors?|"
                                  r"Http\w*Fail|Http\w*Error|Availability", re.IGNORECASE)),
    ("dependency_down", 0.72, re.compile(r"(?:Upstream|Dependency|Backend)\w*(?:Down|Unavailable|Unhealthy)",
                                         re.IGNORECASE)),
    ("process_down", 0.72, re.compile(r"CrashLoop|ContainerKilled|ProcessDown|ServiceDown|InstanceDown|TargetDown|"
                                      r"JobDown|NotRunning|PodNotReady|Restarting", re.IGNORECASE)),
]


@register("alertname")
def alert_names(text: str) -> list[Classification]:
    """The category a standard alert name implies (one per alert name found)."""
    out: dict[str, Classification] = {}
    for line in text.splitlines():
        for m in _NAME.finditer(line):
            name = m.group("name")
            for category, conf, pattern in _ALERTS:
                if pattern.search(name):
                    if category not in out:
                        out[category] = Classification(category, conf, [line.strip()[:300]], {"alertname": name})
                    break
    return list(out.values())
