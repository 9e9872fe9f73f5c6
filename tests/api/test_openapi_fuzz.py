"""Schemathesis against heald's own OpenAPI document (issue 11 item 9): every operation, with
data that fits the schema and data that does not, sent over real HTTP on loopback with an
admin token, must never get a 5xx. Bounded: a few examples per operation and mode, no
deadline, no example database (the run is the same on every machine)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from heald.sources import WEBHOOK_SOURCES

#: Examples per operation and generation mode; ~20 operations x 2 modes.
MAX_EXAMPLES = 40
#: The whole run stops generating after this many seconds (a CI bound on 2 cores).
BUDGET_SECONDS = 150


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")  # from schemathesis internals
@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_no_operation_answers_a_server_error(api_server, database: str, request: pytest.FixtureRequest) -> None:
    extra = {"database_url": request.getfixturevalue("pg_url")} if database == "postgresql" else {}
    client, rt = api_server(**extra)
    base = str(client.base_url)
    token = client.headers["authorization"]
    # some records to find, so that ids hit real rows too
    for i in range(3):
        client.post("/v1/signals", json={"source": "mon", "service": f"s{i}", "labels": {"alertname": f"A{i}"}})
    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    failures: list[str] = []
    unsatisfiable: list[str] = []
    calls = 0
    deadline = time.monotonic() + BUDGET_SECONDS
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15, [op.label for op in operations]
    webhook = next(op for op in operations if op.path == "/v1/webhooks/{source}")
    rounds = [(op, mode, None) for op in operations for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]
    # the webhook operation once per registered source, with arbitrary JSON bodies
    rounds += [(webhook, GenerationMode.POSITIVE, {"source": name}) for name in sorted(WEBHOOK_SOURCES)]
    for operation, mode, path_parameters in rounds:
        if time.monotonic() > deadline:
            break

        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters))
        def run(case: Any) -> None:
            nonlocal calls
            if time.monotonic() > deadline:
                return
            response = case.call(base_url=base, headers={"Authorization": token}, timeout=30)
            calls += 1
            if response.status_code >= 500:
                failures.append(f"{case.operation.label} [{mode.value}] -> {response.status_code}: "  # noqa: B023 (run() runs in this iteration)
                                f"{response.text[:200]}\n  reproduce: {case.as_curl_command()[:600]}")

        try:
            run()
        except Unsatisfiable:  # nothing can break an operation without inputs (GET /healthz, negative)
            unsatisfiable.append(f"{operation.label} [{mode.value}]")
    print(f"schemathesis: {calls} requests over {len(operations)} operations, {len(failures)} server errors; "
          f"no cases for {unsatisfiable}")
    assert calls >= len(operations) * 5
    assert not failures, "\n".join(failures[:20])
