"""Polling helpers for tests that follow training jobs through the HTTP API."""

import time

TERMINAL = {"succeeded", "failed", "cancelled"}


def wait_for(client, version: str, statuses=TERMINAL, *, timeout: float = 120.0) -> dict:
    """Poll GET /train/{version} until its status is one of `statuses` (fails the test on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        record = client.get(f"/train/{version}").json()
        if record.get("status") in statuses:
            return record
        assert time.monotonic() < deadline, f"job {version} still {record.get('status')} after {timeout}s"
        time.sleep(0.1)


def train(client, **body) -> dict:
    """POST /train and return the accepted job record."""
    response = client.post("/train", json=body)
    assert response.status_code == 202, response.text
    return response.json()


def wait_until(predicate, timeout: float = 120.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.05)
    return value
