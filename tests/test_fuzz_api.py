"""Schema-driven fuzzing of the whole API over real HTTP: no 5xx, and every response matches the schema in status,
content type and body; plus the schema's own promises (named response schemas, problem+json errors)."""

import secrets
import zlib

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from pydantic import SecretStr
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.liveserver import LiveServer
from tests.support.waiting import train, wait_for

TOKEN = "fuzz-" + secrets.token_hex(8)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# What exists on the live server, put in place of generated path parameters so that routes are reached past 404.
EXISTING = {"version": ["fuzz-model"], "alias": ["fuzz-alias"], "name": ["mnist"], "epoch": [0, 1]}
MODEL_VERSIONS = ["fuzz-model", "@fuzz-alias"]  # every /models/{version}… route also takes `@alias`
DISPOSABLE_ALIAS = "fuzz-disposable"  # what DELETE /aliases/{alias} removes: put back before each such case


@pytest.fixture(scope="module")
def live(seeded_settings, tmp_path_factory):
    # Its own catalog too: the jobs and sweeps the fuzzer queues must not wait in the queue other modules share.
    app_settings = seeded_settings.model_copy(update={
        "minio_model_bucket": f"models-fuzz-{secrets.token_hex(3)}", "api_token": SecretStr(TOKEN),
        "data_dir": tmp_path_factory.mktemp("fuzz")})
    with LiveServer(app_settings) as trainer, trainer.client(headers=AUTH) as client:
        # One real model (aliased, so no fuzzed DELETE removes it), so that model routes find something.
        train(client, dataset="mnist", version="fuzz-model", layers=[{"type": "Flatten"}])
        wait_for(client, "fuzz-model")
        assert client.put("/aliases/fuzz-alias", json={"version": "fuzz-model"}).status_code == 200
        sweep = client.post("/sweeps", json={"base": {"dataset": "mnist", "layers": [{"type": "Flatten"}]},
                                             "space": {"learning_rate": [0.001]}, "seeds": [0]})
        assert sweep.status_code == 201, sweep.text
        EXISTING["sweep_id"] = [sweep.json()["id"]]
        wait_for(client, sweep.json()["trials"][0]["version"])
    # The fuzzed server trains nothing: the jobs and sweeps it queues would only compete for the CPU.
    with LiveServer(app_settings.model_copy(update={"max_concurrent_jobs": 0})) as server:
        yield server


@pytest.fixture(scope="module")
def api_schema(live):
    return schemathesis.openapi.from_url(f"{live.url}/openapi.json", headers=AUTH)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck), database=None)
def test_no_server_errors_and_responses_match_schema(case, live):
    case.call_and_validate(base_url=live.url, headers=AUTH,
                           checks=[not_a_server_error, response_schema_conformance], timeout=60)


@schema.parametrize()
@settings(max_examples=16, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck), database=None)
def test_every_status_content_type_and_body_is_the_declared_one(case, live):
    # Most cases (picked by a checksum of what was generated, so that a failing case replays alike) name what exists.
    # (Not `@schema.given`: schemathesis refuses it beside the schema's examples.)
    pick = zlib.crc32(repr(sorted((case.path_parameters or {}).items())).encode())
    if pick % 4:
        for name in case.path_parameters or {}:
            values = MODEL_VERSIONS if name == "version" and case.path.startswith("/models") else EXISTING[name]
            case.path_parameters[name] = values[pick % len(values)]
        if case.method == "DELETE" and case.path == "/aliases/{alias}":
            case.path_parameters["alias"] = DISPOSABLE_ALIAS
            with live.client(headers=AUTH) as client:
                client.put(f"/aliases/{DISPOSABLE_ALIAS}", json={"version": "fuzz-model"}).raise_for_status()
        if case.method == "PUT" and case.path == "/aliases/{alias}" and isinstance(case.body, dict):
            case.body = {**case.body, "version": "fuzz-model"}
        if case.path.endswith("/predict") and case.media_type == "application/json":
            case.body = {"images": [[[pick % 256] * 28] * 28]}  # one MNIST-sized image
    case.call_and_validate(base_url=live.url, headers=AUTH, timeout=60, checks=[
        not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance])


def _is_named(schema: dict) -> bool:
    return "$ref" in schema or (schema.get("type") == "array" and "$ref" in schema.get("items", {}))


def test_every_json_success_names_a_schema_and_every_error_is_a_problem(live):
    document = httpx.get(f"{live.url}/openapi.json", headers=AUTH).json()
    assert not [path for path in document["paths"] if path.startswith("/ui")]  # the dashboard is no API
    unnamed, untyped_errors = [], []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                content = response.get("content", {})
                if status.startswith("2"):
                    unnamed += [f"{method.upper()} {path} {status} {media}" for media, body in content.items()
                                if "json" in media and not _is_named(body.get("schema", {}))]
                elif int(status) >= 400 and content != {
                        "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}:
                    untyped_errors.append(f"{method.upper()} {path} {status}")
    assert unnamed == [] and untyped_errors == []


@pytest.mark.parametrize("body,content_type", [(b'{"dataset": "mnist",', "application/json"),
                                               (b"\xff\xfe\x00{", "application/json"),
                                               (b'{"dataset": "mn\xffist"}', "application/json")])
def test_a_malformed_body_is_a_400_problem_naming_the_body(live, body, content_type):
    r = httpx.post(f"{live.url}/train", content=body, headers={**AUTH, "Content-Type": content_type})
    assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["title"] == "Malformed request body" and problem["field"] == "body"
    assert "not valid JSON" in problem["detail"] and "Content-Type: application/json" in problem["detail"]
