"""schemathesis against the served OpenAPI document: no request makes a server error.

The capture behind it is the fake module (each valid POST is a real reload of
it), so the examples stay bounded and the run takes seconds. (schemathesis's
pytest plugin does not load under this pytest: its strategies are driven
here with hypothesis directly.)"""

from __future__ import annotations

from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from .fakes import FakeModule
from .server import api_server

EXAMPLES_PER_OPERATION = 20


def test_no_request_is_a_server_error(tmp_path: Path) -> None:
    FakeModule.budget = 50  # a bounded file however many reloads
    try:
        with api_server(tmp_path) as api:
            schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
            operations = [result.ok() for result in schema.get_all_operations()]
            assert len(operations) >= 6  # schemathesis leaves out /openapi.json itself
            tried: dict[str, set[int]] = {}
            for operation in operations:
                @given(case=operation.as_strategy())
                @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                          suppress_health_check=list(HealthCheck))
                def check(case: schemathesis.Case) -> None:
                    response = case.call(base_url=api.url, timeout=30)
                    assert response.status_code < 500, (
                        case.method, case.path, case.body, response.status_code,
                        response.text[:300])
                    case.validate_response(response, checks=[not_a_server_error])
                    tried.setdefault(case.operation.label, set()).add(response.status_code)

                check()
            # Reloads were tried for real: some were accepted, some refused.
            assert 200 in tried["POST /config"] | tried["POST /fake"]
            assert 400 in tried["POST /config"]
    finally:
        FakeModule.budget = None
