"""The failure-signature knowledge base: each classifier on real output formats."""

from __future__ import annotations

import pytest

from heald.diagnose.categories import CATEGORIES, agree, explains
from heald.diagnose.signatures import classify
from heald.diagnose.signatures.python import parse_tracebacks

CHAINED = """\
2024-05-02 09:14:07,511 ERROR [shop.checkout] payment call failed
Traceback (most recent call last):
  File "/usr/lib/python3/dist-packages/urllib3/connection.py", line 198, in _new_conn
    sock = connection.create_connection(
  File "/usr/lib/python3/dist-packages/urllib3/util/connection.py", line 85, in create_connection
    raise err
ConnectionRefusedError: [Errno 111] Connection refused

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "/srv/shop/checkout.py", line 41, in pay
    resp = session.post(PAYMENTS_URL, json=order)
urllib3.exceptions.NewConnectionError: <urllib3.connection.HTTPConnection object at 0x7f>: Failed to establish a new connection: [Errno 111] Connection refused
"""  # noqa: E501 (a real traceback line, kept whole)


def top(text: str) -> tuple[str, float]:
    found = classify(text)
    assert found, f"nothing recognised in {text!r}"
    return found[0].category, found[0].confidence


def test_traceback_chain_is_parsed_with_frames_and_root_cause() -> None:
    chains = parse_tracebacks(CHAINED)
    assert len(chains) == 1 and [e.short_type for e in chains[0]] == ["ConnectionRefusedError", "NewConnectionError"]
    final = chains[0][-1]
    assert final.module == "urllib3.exceptions" and final.frames == [("/srv/shop/checkout.py", 41, "pay")]
    found = [c for c in classify(CHAINED) if c.classifier == "python_traceback"]
    assert found[0].category == "connection_refused"
    assert found[0].details["chain"] == ["ConnectionRefusedError", "urllib3.exceptions.NewConnectionError"]
    assert any(line.startswith("ConnectionRefusedError: [Errno 111]") for line in found[0].evidence)


def test_traceback_with_log_prefix_and_unknown_exception() -> None:
    text = "\n".join(f"shop-1  | {line}" for line in [
        "Traceback (most recent call last):",
        '  File "/app/orders.py", line 7, in total',
        "    return sum(i.price for i in items) / len(items)",
        "ZeroDivisionError: division by zero"])
    found = [c for c in classify(text) if c.classifier == "python_traceback"]
    assert found and found[0].category == "unhandled_exception"
    assert found[0].details["exception"] == "ZeroDivisionError" and found[0].details["line"] == 7


def test_config_error_in_traceback_is_bad_config() -> None:
    text = """Traceback (most recent call last):
  File "/srv/shop/app.py", line 12, in <module>
    settings = load_settings("/etc/shop/config.yaml")
  File "/srv/shop/settings.py", line 30, in load_settings
    return yaml.safe_load(f)
yaml.scanner.ScannerError: mapping values are not allowed here
  in "/etc/shop/config.yaml", line 4, column 12"""
    assert top(text)[0] == "bad_config"


@pytest.mark.parametrize("text,category", [
    ("2024/05/02 10:01:02 [error] 31#31: *7 connect() failed (111: Connection refused) while connecting to upstream, "
     'client: 10.0.0.9, server: shop, request: "GET /products HTTP/1.1", upstream: "http://127.0.0.1:8081/products"',
     "connection_refused"),
    ('level=error msg="dial tcp 10.0.3.4:6379: connect: connection refused"', "connection_refused"),
    ("Error: connect ECONNREFUSED 127.0.0.1:5672", "connection_refused"),
    ("requests.exceptions.ReadTimeout: HTTPSConnectionPool(host='api.stripe.com', port=443): Read timed out. "
     "(read timeout=5)", "network_timeout"),
    ('2024/05/02 10:01:02 [error] 31#31: *9 upstream timed out (110: Connection timed out) while reading response '
     'header from upstream', "network_timeout"),
    ("socket.gaierror: [Errno -2] Name or service not known", "dns_failure"),
    ('dial tcp: lookup payments.internal on 127.0.0.11:53: no such host', "dns_failure"),
    ("curl: (6) Could not resolve host: payments.internal", "dns_failure"),
    ("ssl.SSLCertVerificationError: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: certificate has "
     "expired (_ssl.c:1006)", "tls_error"),
    ('psycopg2.OperationalError: connection to server at "db" (10.0.0.3), port 5432 failed: FATAL:  the database '
     "system is starting up", "database_unavailable"),
    ("redis.exceptions.ConnectionError: Error 111 connecting to cache:6379. Connection refused.", "database_unavailable"),
    ("[Thu May  2 10:00:01 2024] Out of memory: Killed process 4321 (python3) total-vm:2345678kB, "
     "anon-rss:1987654kB, file-rss:0kB, shmem-rss:0kB, UID:1000 pgtables:4000kB oom_score_adj:0", "out_of_memory"),
    ("shop.service: A process of this unit has been killed by the OOM killer.", "out_of_memory"),
    ("    Last State:     Terminated\n      Reason:       OOMKilled\n      Exit Code:    137", "out_of_memory"),
    ("FATAL ERROR: Reached heap limit Allocation failed - JavaScript heap out of memory", "out_of_memory"),
    ("OSError: [Errno 28] No space left on device: '/var/log/shop/app.log'", "disk_full"),
    ('2024-05-02 10:00:00.123 UTC [77] PANIC:  could not write to file "pg_wal/xlogtemp.77": No space left on device',
     "disk_full"),
    ("PermissionError: [Errno 13] Permission denied: '/var/run/shop.pid'", "permission_denied"),
    ("shop.service: Main process exited, code=killed, status=9/KILL", "process_down"),
    ("Warning  BackOff  2m (x14 over 5m)  kubelet  Back-off restarting failed container shop in pod shop-7d9f",
     "process_down"),
    ("2024/05/02 10:01:02 [error] 31#31: *3 no live upstreams while connecting to upstream", "dependency_down"),
])
def test_line_classifiers(text: str, category: str) -> None:
    assert top(text)[0] == category


def test_http_5xx_burst_from_access_logs() -> None:
    lines = [f'10.0.0.{i} - - [02/May/2024:10:00:{i:02d} +0000] "GET /products HTTP/1.1" '
             f'{500 if i % 3 else 200} 57 "-" "k6/0.50"' for i in range(30)]
    lines += [f'INFO:     127.0.0.1:5{i:04d} - "POST /checkout HTTP/1.1" 500 Internal Server Error' for i in range(5)]
    found = [c for c in classify("\n".join(lines)) if c.category == "http_5xx"]
    assert found and found[0].confidence >= 0.85
    assert found[0].details["server_errors"] == 25 and found[0].details["requests"] == 35
    assert "/products" in found[0].details["paths"]


def test_a_few_5xx_among_many_requests_is_no_burst() -> None:
    lines = [f'"GET /p HTTP/1.1" {500 if i == 3 else 200} 1' for i in range(200)]
    assert all(c.confidence < 0.6 for c in classify("\n".join(lines)) if c.category == "http_5xx")


def test_json_access_logs_and_error_codes() -> None:
    lines = [f'{{"ts":"2024-05-02T10:00:{i:02d}Z","method":"GET","path":"/products","status":500,'
             f'"error":"DB_CONNECTION_FAILED"}}' for i in range(6)]
    found = classify("\n".join(lines))
    cats = {c.category: c for c in found}
    assert "http_5xx" in cats and cats["http_5xx"].details["error_codes"] == {"DB_CONNECTION_FAILED": 6}
    assert "database_unavailable" in cats


def test_alert_names_from_standard_rule_sets() -> None:
    for name, category in [("NodeFilesystemAlmostOutOfSpace", "disk_full"), ("HostOutOfMemory", "out_of_memory"),
                           ("HostOomKillDetected", "out_of_memory"), ("KubePodCrashLooping", "process_down"),
                           ("PostgresqlDown", "database_unavailable"), ("HighErrorRate", "http_5xx"),
                           ("BlackboxSslCertificateWillExpireSoon", "tls_error"), ("HighLatency", "high_latency")]:
        assert top(f"alertname={name} severity=critical")[0] == category, name


def test_nothing_recognised_in_healthy_output() -> None:
    text = ('INFO:     Started server process [4242]\nINFO:     Application startup complete.\n'
            'INFO:     127.0.0.1:50000 - "GET /healthz HTTP/1.1" 200 OK')
    assert classify(text) == []


def test_category_relations_have_no_cycles_and_name_known_categories() -> None:
    for c in CATEGORIES.values():
        assert not explains(c.name, c.name), c.name
        for s in c.explains:
            assert s in CATEGORIES, (c.name, s)
    assert agree("process_down", "connection_refused") and agree("connection_refused", "process_down")
    assert not agree("disk_full", "dns_failure")
