"""Schemathesis against the OpenAPI spec the running API serves: no input makes it fail (5xx).

Each operation gets a few dozen generated requests with a valid token; operations on a
repository are also sent for a real, published repository so that generated queries and bodies
reach the reader, the registry and Prefect, not only the 404 for a random name.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from service.settings import Settings
from tests.test_api_support import ApiWorld, api_world

pytestmark = [pytest.mark.stack, pytest.mark.slow]
EXAMPLES_PER_OPERATION = 30


@pytest.fixture(scope="module")
def world(
    rabbitmq: Settings, vault: Settings, prefect_server: Settings, stratum0_http: Settings
) -> Iterator[ApiWorld]:
    with api_world(rabbitmq, vault) as started:
        yield started


OPERATIONS = [
    ("GET", "/health"),
    ("POST", "/repositories"),
    ("GET", "/repositories"),
    ("GET", "/requests/{request_id}"),
    ("GET", "/repositories/{fqrn}"),
    ("GET", "/repositories/{fqrn}/client-config"),
    ("GET", "/repositories/{fqrn}/keys"),
    ("GET", "/repositories/{fqrn}/publisher"),
    ("GET", "/repositories/{fqrn}/files"),
    ("GET", "/repositories/{fqrn}/history"),
    ("POST", "/repositories/{fqrn}/sync"),
    ("POST", "/repositories/{fqrn}/rollback"),
    ("POST", "/repositories/{fqrn}/tag"),
    ("POST", "/webhooks/registry"),
]


@pytest.fixture(scope="module")
def api_schema(world: ApiWorld) -> Any:
    return schemathesis.openapi.from_url(f"{world.base_url}/openapi.json")


def test_every_served_operation_is_fuzzed(api_schema: Any) -> None:
    served = {(r.ok().method.upper(), r.ok().path) for r in api_schema.get_all_operations()}
    assert served == set(OPERATIONS)


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_no_generated_request_makes_the_api_fail(
    api_schema: Any, world: ApiWorld, method: str, path: str
) -> None:
    operation = api_schema[path][method]
    checks = [not_a_server_error, response_schema_conformance]
    statuses: list[int] = []

    @given(case=operation.as_strategy())
    @hypothesis_settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def exercise(case: Any) -> None:
        headers = {"Authorization": f"Bearer {world.alice()}"}
        answer = case.call_and_validate(base_url=world.base_url, headers=headers, checks=checks)
        statuses.append(answer.status_code)
        if case.path_parameters and "fqrn" in case.path_parameters:
            case.path_parameters["fqrn"] = world.alice_repo
            answer = case.call_and_validate(base_url=world.base_url, headers=headers, checks=checks)
            statuses.append(answer.status_code)

    exercise()
    print(f"{method} {path}: {len(statuses)} requests, statuses {sorted(set(statuses))}")
    assert statuses
