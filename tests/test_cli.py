"""The `scv` client commands against a running service over real HTTP: train --wait, models ls/pull/rm, sweep --wait,
sweeps ls/show."""

import hashlib
import json
import os
import re
import secrets
import subprocess
import sys

import pytest

from tests.support.liveserver import LiveServer
from tests.support.waiting import wait_until


@pytest.fixture(scope="module")
def served(seeded_settings):
    settings = seeded_settings.model_copy(update={"minio_model_bucket": f"models-cli-{secrets.token_hex(3)}"})
    with LiveServer(settings) as server:
        yield server


LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) ")  # the CLI's log format


def _scv(server, tmp_path, *args, timeout=300, **env_vars):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MINIO_", "SCV_"))}
    env.update(SCV_URL=server.url, **env_vars)
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_train_wait_then_list_pull_and_remove(served, tmp_path):
    layers = tmp_path / "layers.json"
    layers.write_text(json.dumps([{"type": "Conv2d", "out_channels": 4, "kernel_size": 3}, {"type": "ReLU"},
                                  {"type": "Flatten"}]))
    trained = _scv(served, tmp_path, "train", "mnist", "--epochs", "2", "--batch-size", "16", "--layers", str(layers),
                   "--version", "cli-model", "--wait")
    assert trained.returncode == 0, trained.stderr[-2000:]
    result = json.loads(trained.stdout)
    assert result["version"] == "cli-model" and result["status"] == "succeeded"
    assert "epoch 2/2" in trained.stderr  # the live progress bar
    assert f"cli-model: succeeded, test accuracy {result['metrics']['test_accuracy']}" in trained.stderr
    assert not LOG_LINE.search(trained.stderr), trained.stderr[-2000:]  # only what the command reports

    listed = _scv(served, tmp_path, "models", "ls")
    assert listed.returncode == 0 and listed.stdout.split()[0] == "cli-model"
    assert listed.stderr == ""

    pulled = _scv(served, tmp_path, "models", "pull", "cli-model", "-o", "m.safetensors")
    assert pulled.returncode == 0, pulled.stderr[-2000:]
    digest = hashlib.sha256((tmp_path / "m.safetensors").read_bytes()).hexdigest()
    assert pulled.stdout.strip() == f"m.safetensors sha256 {digest}"
    with served.client() as client:
        assert client.head("/models/cli-model").headers["etag"] == f'"{digest}"'

    assert _scv(served, tmp_path, "models", "rm", "cli-model").returncode == 0
    missing = _scv(served, tmp_path, "models", "pull", "cli-model")
    assert missing.returncode != 0 and "404" in missing.stderr


def test_sweep_wait_then_list_and_show(served, tmp_path):
    body = {"name": "cli-lr", "base": {"dataset": "mnist", "layers": [{"type": "Flatten"}], "batch_size": 16},
            "space": {"learning_rate": [0.02, 0.002]}, "seeds": [0, 1]}
    (tmp_path / "sweep.json").write_text(json.dumps(body))
    swept = _scv(served, tmp_path, "sweep", "sweep.json", "--wait")
    assert swept.returncode == 0, swept.stderr[-2000:]
    sweep_id = re.search(r"created (sweep-\S+): 4 trials, metric test_accuracy", swept.stderr)[1]
    assert "4/4" in swept.stderr and f"{sweep_id}: succeeded" in swept.stderr  # the progress bar, then the end
    assert not LOG_LINE.search(swept.stderr), swept.stderr[-2000:]
    with served.client() as http:
        record = http.get(f"/sweeps/{sweep_id}").json()
    header, *rows, _, best = swept.stdout.strip().splitlines()
    assert header.split() == ["trial", "version", "config", "seed", "status", "metric", "epochs_run"]
    assert [row.split() for row in rows] == [
        [str(t["trial"]), t["version"], f"learning_rate={t['config']['learning_rate']}", str(t["seed"]), "succeeded",
         f"{t['metric']:.4f}", "1"] for t in record["trials"]]
    winner = record["best"]
    assert best == (f"best: trial {winner['trial']} {winner['version']} learning_rate="
                    f"{winner['config']['learning_rate']} seed {winner['seed']}: test_accuracy {winner['metric']:.4f}")

    listed = _scv(served, tmp_path, "sweeps", "ls")
    assert listed.returncode == 0 and listed.stderr == ""
    assert listed.stdout.splitlines()[0].split() == [sweep_id, "cli-lr", "succeeded", "trials", "4/4", "test_accuracy",
                                                     f"{winner['metric']:.4f}"]

    shown = _scv(served, tmp_path, "sweeps", "show", sweep_id)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert f"id:          {sweep_id}" in shown.stdout and "status:      succeeded" in shown.stdout
    assert "seeds:       [0, 1]" in shown.stdout and best in shown.stdout
    assert all(t["version"] in shown.stdout for t in record["trials"])
    floors = re.findall(r"seed-to-seed CKA of (\S+) \(seeds 0, 1\)\nlayer +mean +min +max\n", shown.stdout)
    assert floors == ["learning_rate=0.02", "learning_rate=0.002"], shown.stdout

    missing = _scv(served, tmp_path, "sweeps", "show", "sweep-nope")
    assert missing.returncode == 1 and missing.stderr.startswith("scv: error 404") and "Traceback" not in missing.stderr
    (tmp_path / "bad.json").write_text(json.dumps({**body, "space": {"dropout": [0.1]}}))
    refused = _scv(served, tmp_path, "sweep", "bad.json")
    assert refused.returncode == 1 and "error 422" in refused.stderr and "space.dropout" in refused.stderr
    unreadable = _scv(served, tmp_path, "sweep", "absent.json")
    assert unreadable.returncode == 2 and unreadable.stderr.startswith("scv: cannot read the sweep file absent.json")
    assert len(unreadable.stderr.splitlines()) == 1


def test_a_sweep_cancelled_while_waited_for_exits_1(served, tmp_path):
    # Trials that take minutes (60 images, 100 epochs of single-image steps through two 256-channel convolutions): a
    # lighter network's trial could end before the cancel reaches it (a Flatten-only one took 6 s).
    conv = {"type": "Conv2d", "out_channels": 256, "kernel_size": 3, "padding": 1}
    body = {"name": "cli-cancelled", "base": {"dataset": "mnist", "layers": [conv, {"type": "ReLU"}, conv,
                                                                           {"type": "Flatten"}],
                                              "epochs": 100, "batch_size": 1},
            "space": {"learning_rate": [0.01, 0.001]}}
    (tmp_path / "long.json").write_text(json.dumps(body))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MINIO_", "SCV_"))}
    waiting = subprocess.Popen([sys.executable, "-m", "app.cli", "sweep", "long.json", "--wait"], cwd=tmp_path,
                               env={**env, "SCV_URL": served.url}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        with served.client() as http:
            sweep_id = wait_until(lambda: next((s["id"] for s in http.get("/sweeps").json()["items"]
                                                if s["name"] == "cli-cancelled"), None), timeout=120, what="the sweep")
            assert http.delete(f"/sweeps/{sweep_id}").status_code == 200
        out, err = waiting.communicate(timeout=120)
    finally:
        waiting.kill()
    assert waiting.returncode == 1 and f"{sweep_id}: cancelled" in err and "Traceback" not in err
    assert [line.split()[4] for line in out.splitlines()[1:]] == ["cancelled", "cancelled"]
    assert "best:" not in out


def test_client_errors_are_one_line_not_a_traceback(served, tmp_path):
    r = _scv(served, tmp_path, "train", "imagenet")
    assert r.returncode != 0
    assert "error 404" in r.stderr and "imagenet" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("flags,env", [(["--verbose"], {}), ([], {"SCV_LOG_LEVEL": "debug"})],
                         ids=["--verbose", "SCV_LOG_LEVEL=debug"])
def test_request_lines_only_when_verbose(served, tmp_path, flags, env):
    listed = _scv(served, tmp_path, *flags, "models", "ls", **env)
    assert listed.returncode == 0 and "HTTP Request: GET" in listed.stderr and "HTTP Request" not in listed.stdout
    refused = _scv(served, tmp_path, "train", "imagenet", *flags, **env)  # after the subcommand too
    assert "HTTP Request: POST" in refused.stderr and "error 404" in refused.stderr


def test_clients_read_their_settings_from_dot_env_too(served, tmp_path):
    (tmp_path / ".env").write_text(f"SCV_URL={served.url}\nSCV_LOG_LEVEL=debug\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MINIO_", "SCV_"))}
    listed = subprocess.run([sys.executable, "-m", "app.cli", "models", "ls"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert f"HTTP Request: GET {served.url}/models" in listed.stderr  # the service of SCV_URL, at debug level
