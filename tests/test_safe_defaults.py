"""Safe by default (SPEC §3): no weak token, no answer to a rebound host name, a /readyz that says nothing of where."""

import os
import subprocess
import sys

import httpx
import pytest

from app.settings import SettingsError, check_bind, load_settings
from tests.support.liveserver import LiveServer
from tests.support.s3 import make_settings


@pytest.mark.parametrize("token", ["", "short-token", " " * 15])
def test_an_empty_or_short_token_stops_start_up_naming_the_variable(monkeypatch, tmp_path, token):
    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    monkeypatch.setenv("SCV_API_TOKEN", token)
    with pytest.raises(SettingsError) as refused:
        load_settings()
    message = str(refused.value)
    assert "SCV_API_TOKEN" in message and "16 characters" in message
    assert token.strip() == "" or token not in message  # the refused value is never echoed


def test_a_token_of_16_characters_is_taken(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SCV_API_TOKEN", "x" * 16)
    assert load_settings().api_token.get_secret_value() == "x" * 16


@pytest.fixture(scope="module")
def loopback(s3, tmp_path_factory):
    """A real server on 127.0.0.1 (the Host check looks at the address a connection came in on), one that also
    answers for two more names, and the first one's settings."""
    settings = make_settings(s3, tmp_path_factory.mktemp("loopback"))
    allowed = make_settings(s3, tmp_path_factory.mktemp("allowed"),
                            SCV_ALLOWED_HOSTS="scv.example.test, Other.Example.Test")
    with LiveServer(settings) as plain, LiveServer(allowed) as allowing:
        yield plain, allowing, settings


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]"])
def test_loopback_names_are_answered_on_any_port(loopback, host):
    plain, _, _ = loopback
    for port in ("", f":{plain.port}", ":1"):
        r = httpx.get(f"{plain.url}/healthz", headers={"Host": host + port})
        assert r.status_code == 200, (host + port, r.text)


def test_a_foreign_host_on_a_loopback_bind_is_421_naming_the_setting(loopback):
    plain, _, _ = loopback
    for path in ("/healthz", "/train", "/ui", "/docs"):  # every route, the open ones too
        r = httpx.get(f"{plain.url}{path}", headers={"Host": "attacker.example:8000"})
        assert r.status_code == 421, (path, r.status_code)
        assert r.headers["content-type"] == "application/problem+json"
        assert "SCV_ALLOWED_HOSTS" in r.json()["detail"]
    r = httpx.post(f"{plain.url}/train", headers={"Host": "scv.example.test"}, json={"dataset": "mnist"})
    assert r.status_code == 421  # nothing was queued: the request never reached the route
    assert httpx.get(f"{plain.url}/train", headers={"Host": "localhost"}).json()["items"] == []


def test_names_in_scv_allowed_hosts_are_answered_and_others_still_refused(loopback):
    _, allowing, _ = loopback
    for host in ("scv.example.test", "SCV.example.test:8443", "other.example.test"):
        assert httpx.get(f"{allowing.url}/healthz", headers={"Host": host}).status_code == 200, host
    assert httpx.get(f"{allowing.url}/healthz", headers={"Host": "attacker.example"}).status_code == 421


def test_readyz_says_ready_and_nothing_about_where(loopback):
    plain, _, settings = loopback
    r = httpx.get(f"{plain.url}/readyz")
    assert r.status_code == 200 and r.json() == {"status": "ready"}
    for secretish in (settings.minio_endpoint, settings.minio_access_key, "127.0.0.1", "catalog.db"):
        assert secretish not in r.text


@pytest.mark.parametrize(("host", "env", "refused"), [
    ("0.0.0.0", {}, True), ("::", {}, True), ("scv.example.test", {}, True),
    ("127.0.0.1", {}, False), ("localhost", {}, False), ("::1", {}, False),
    ("0.0.0.0", {"SCV_ALLOW_NO_TOKEN": "1"}, False), ("0.0.0.0", {"SCV_API_TOKEN": "t" * 16}, False)])
def test_an_open_api_on_a_non_loopback_address_needs_scv_allow_no_token(monkeypatch, tmp_path, host, env, refused):
    monkeypatch.chdir(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    if refused:
        with pytest.raises(SettingsError, match="SCV_API_TOKEN.*SCV_ALLOW_NO_TOKEN=1"):
            check_bind(settings, host)
    else:
        check_bind(settings, host)


def test_scv_serve_on_every_interface_without_a_token_exits_saying_why(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MINIO_", "SCV_"))}
    done = subprocess.run([sys.executable, "-m", "app.cli", "serve", "--host", "0.0.0.0", "--port", "9"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "SCV_ALLOW_NO_TOKEN" in done.stderr
    assert not (tmp_path / ".scv").exists()  # refused before starting anything


@pytest.mark.parametrize("trusted", [True, False])
def test_the_session_cookie_is_secure_behind_a_trusted_tls_proxy_only(s3, tmp_path, monkeypatch, trusted):
    """uvicorn's forwarded headers, from the addresses in FORWARDED_ALLOW_IPS (default 127.0.0.1): a TLS proxy
    there says `X-Forwarded-Proto: https` and the cookie gets `Secure`; from anywhere else the header counts for
    nothing."""
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "127.0.0.1" if trusted else "192.0.2.1")
    settings = make_settings(s3, tmp_path, SCV_API_TOKEN="a-token-of-sixteen-or-more")
    with LiveServer(settings) as server, server.client() as client:
        response = client.post("/ui/login", data={"token": "a-token-of-sixteen-or-more", "next": "/ui"},
                               headers={"X-Forwarded-Proto": "https"})
        assert response.status_code == 303 and response.headers["location"] == "/ui"
        attributes = [part.strip().lower() for part in response.headers["set-cookie"].split(";")]
        assert ("secure" in attributes) is trusted, attributes
