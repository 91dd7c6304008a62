"""Schemathesis against the running service's own OpenAPI (``/docs.json``): generated requests to
every documented operation, a bounded number of examples each, and not one 5xx response.

Cases are drawn with plain Hypothesis from schemathesis' per-operation strategies (its pytest
plugin does not run under pytest 9).
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings

#: Generated examples per operation (bounded: the whole module runs in well under a minute).
EXAMPLES = 12


def test_no_server_errors(service_url: str) -> None:
    schema = schemathesis.openapi.from_url(f"{service_url}/docs.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert any(op.path == "/segment" for op in operations)
    called: list[str] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
        def no_5xx(case) -> None:
            response = case.call(base_url=service_url, timeout=60)
            called.append(case.path)
            assert response.status_code < 500, f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"

        no_5xx()
    assert set(called) == {op.path for op in operations}
