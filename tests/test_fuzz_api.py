"""Schema-driven fuzzing of the whole API over real HTTP: no 5xx, and every response matches the schema."""

import secrets

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from pydantic import SecretStr
from schemathesis.checks import not_a_server_error, response_schema_conformance

from tests.support.liveserver import LiveServer
from tests.support.waiting import train, wait_for

TOKEN = "fuzz-" + secrets.token_hex(8)


@pytest.fixture(scope="module")
def live(seeded_settings):
    app_settings = seeded_settings.model_copy(update={
        "minio_model_bucket": f"models-fuzz-{secrets.token_hex(3)}", "api_token": SecretStr(TOKEN)})
    with LiveServer(app_settings) as server:
        with server.client(headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            # One real model, so that model routes have something to find besides 404s.
            wait_for(client, train(client, dataset="mnist", version="fuzz-model",
                                   layers=[{"type": "Flatten"}])["version"])
        yield server


@pytest.fixture(scope="module")
def api_schema(live):
    return schemathesis.openapi.from_url(f"{live.url}/openapi.json",
                                         headers={"Authorization": f"Bearer {TOKEN}"})


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck), database=None)
def test_no_server_errors_and_responses_match_schema(case, live):
    case.call_and_validate(base_url=live.url, headers={"Authorization": f"Bearer {TOKEN}"},
                           checks=[not_a_server_error, response_schema_conformance], timeout=60)
