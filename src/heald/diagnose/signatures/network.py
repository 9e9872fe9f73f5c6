"""Network failures in log lines: connection refused, timeouts, DNS, TLS, unreachable upstreams
and databases.

Formats recognised (each a real message of the named program):
- errno text from libc / Python: ``[Errno 111] Connection refused``, ``[Errno 110] Connection
  timed out``, ``[Errno -2] Name or service not known``, ``[Errno -3] Temporary failure in name
  resolution``;
- Go's net package: ``dial tcp 10.0.0.5:5432: connect: connection refused``, ``i/o timeout``,
  ``lookup db on 127.0.0.11:53: no such host``, ``context deadline exceeded``;
- Node.js: ``connect ECONNREFUSED 127.0.0.1:6379``, ``ETIMEDOUT``, ``getaddrinfo ENOTFOUND``;
- curl: ``curl: (7) Failed to connect to host port 80: Connection refused``, ``(28) Operation
  timed out``, ``(6) Could not resolve host``, ``(60) SSL certificate problem``;
- nginx error log: ``connect() failed (111: Connection refused) while connecting to upstream``,
  ``upstream timed out (110: Connection timed out)``, ``no live upstreams``; Envoy ``upstream
  connect error or disconnect/reset before headers``; HAProxy ``no server available``;
- Java: ``java.net.ConnectException: Connection refused``, ``java.net.SocketTimeoutException``,
  ``java.net.UnknownHostException``;
- databases: libpq ``could not connect to server`` / ``connection to server at "db"
  (10.0.0.3), port 5432 failed``, ``FATAL:  the database system is starting up``, ``sorry, too
  many clients already``; MySQL ``Can't connect to MySQL server``; redis-py ``Error 111
  connecting to localhost:6379``; error codes such as ``DB_CONNECTION_FAILED``.
"""

from __future__ import annotations

from heald.diagnose.signatures.base import Rule, register, rule_classifier, rx

_ADDR = r"(?P<target>[\w.\-]+:\d+|\[[0-9a-f:]+\]:\d+)"

RULES = [
    # connection refused
    Rule("connection_refused", rx(r"\[Errno 111\]|errno 111\b|\(111: Connection refused\)"), 0.86),
    Rule("connection_refused", rx(r"dial (?:tcp|udp)\S* " + _ADDR + r": connect: connection refused"), 0.88, ("target",)),
    Rule("connection_refused", rx(r"connect ECONNREFUSED " + _ADDR), 0.88, ("target",)),
    Rule("connection_refused", rx(r"\bECONNREFUSED\b|\bconnection refused\b|actively refused|"
                                  r"java\.net\.ConnectException"), 0.82),
    Rule("connection_refused", rx(r"Failed to (?:establish a new )?connect(?:ion)?"), 0.6),
    # timeouts
    Rule("network_timeout", rx(r"\[Errno 110\]|\(110: Connection timed out\)|\bETIMEDOUT\b|\bESOCKETTIMEDOUT\b"), 0.85),
    Rule("network_timeout", rx(r"\bi/o timeout\b|context deadline exceeded|Client\.Timeout exceeded"), 0.84),
    Rule("network_timeout", rx(r"\b(?:connection|connect|read|write|request|operation|socket|handshake)"
                               r"(?: has)? timed out\b|\btimed out (?:after|while|waiting)|"
                               r"\b(?:Read|Connect|Pool|Socket)Timeout(?:Error|Exception)?\b|"
                               r"java\.net\.SocketTimeoutException|curl: \(28\)|deadline exceeded"), 0.8),
    Rule("network_timeout", rx(r"\b504 Gateway Time-?out\b|upstream timed out|\bGATEWAY_TIMEOUT\b|_TIMEOUT\b"), 0.72),
    # DNS
    Rule("dns_failure", rx(r"\[Errno -[235]\]|Name or service not known|Temporary failure in name resolution|"
                           r"nodename nor servname provided|No address associated with hostname"), 0.9),
    Rule("dns_failure", rx(r"getaddrinfo (?:ENOTFOUND|EAI_AGAIN)\s*(?P<host>[\w.\-]*)|"
                           r"lookup (?P<host2>[\w.\-]+)(?: on [\w.:\[\]]+)?: (?:no such host|server misbehaving)|"
                           r"Could not resolve host:?\s*(?P<host3>[\w.\-]*)|java\.net\.UnknownHostException|"
                           r"\bNXDOMAIN\b|could not translate host name|Failed to resolve|DNS resolution failed|"
                           r"\bSERVFAIL\b|socket\.gaierror|NameResolutionError"), 0.88, ("host",)),
    # TLS
    Rule("tls_error", rx(r"CERTIFICATE_VERIFY_FAILED|certificate verify failed|certificate has expired|"
                         r"x509: certificate|SSL certificate problem|SSLHandshakeException|"
                         r"tls: (?:handshake failure|bad certificate)|ERR_TLS_CERT|self[- ]signed certificate|"
                         r"unable to get local issuer certificate|sslv3 alert"), 0.88),
    # unreachable upstream behind a proxy
    Rule("dependency_down", rx(r"no live upstreams|upstream connect error or disconnect/reset before headers|"
                               r"no healthy upstream|no server available|\b503 Service Unavailable\b.*upstream|"
                               r"upstream prematurely closed|\bUPSTREAM_UNAVAILABLE\b|\bDEPENDENCY_(?:DOWN|UNAVAILABLE)\b|"
                               r"circuit breaker (?:is )?open"), 0.8),
    Rule("dependency_down", rx(r"while connecting to upstream|\b502 Bad Gateway\b"), 0.7),
    Rule("connection_refused", rx(r"network is unreachable|No route to host|\bEHOSTUNREACH\b|\bENETUNREACH\b|"
                                  r"\[Errno 113\]|\[Errno 101\]"), 0.7),
    # databases and caches
    Rule("database_unavailable", rx(r"could not connect to server|connection to server (?:at|on) .* failed|"
                                    r"the database system is (?:starting up|shutting down|in recovery mode)|"
                                    r"sorry, too many clients already|remaining connection slots are reserved|"
                                    r"Can't connect to (?:local )?MySQL server|MySQL server has gone away|"
                                    r"Lost connection to MySQL server|Too many connections|"
                                    r"Error \d+ connecting to [\w.\-]+:\d+|redis\.exceptions\.ConnectionError|"
                                    r"ServerSelectionTimeoutError|MongoNetworkError|"
                                    r"\bDB_CONNECTION_(?:FAILED|ERROR|REFUSED|TIMEOUT)\b|"
                                    r"\bDATABASE_(?:UNAVAILABLE|DOWN|ERROR)\b|"
                                    r"(?:psycopg2?|sqlalchemy\.exc|asyncpg\S*|pymysql\.err)\.(?:Operational|Interface)Error|"
                                    r"QueuePool limit of size \d+ overflow \d+ reached|connection pool exhausted"), 0.9),
]

register("network")(rule_classifier(RULES))
