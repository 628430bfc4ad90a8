"""Analyses as stored results: the dynamics ready with the model, test-split CKA and dynamics computed by analysis
jobs (202 until ready), every result stored under `<version>/analyses/` and served from there after a restart,
gone with the model; checked against the independent float64 reference."""

import os
import signal

import pytest
import torch
from fastapi.testclient import TestClient

import models
from app.datasets.service import DatasetService
from app.main import create_app
from app.storage import layout
from app.storage.s3 import store_from_settings
from tests.support.reference import linear_cka, outputs, reference
from tests.support.waiting import train, wait_for, wait_until

NET = [{"type": "Conv2d", "out_channels": 4, "kernel_size": 3}, {"type": "ReLU"},
       {"type": "MaxPool2d", "kernel_size": 2}, {"type": "Flatten"}, {"type": "Linear", "out_features": 10}]
BATCH = 8  # the seeded test split is small: several minibatches of it, for an interval that means something


@pytest.fixture(scope="module")
def lab_settings(seeded_settings, tmp_path_factory):
    return seeded_settings.model_copy(update={"data_dir": tmp_path_factory.mktemp("analyses"),
                                              "minio_model_bucket": "models-analyses"})


@pytest.fixture(scope="module")
def lab(lab_settings):
    with TestClient(create_app(lab_settings)) as client:
        yield client


@pytest.fixture(scope="module")
def model(lab) -> dict:
    """Three epochs in float32, every epoch kept."""
    record = wait_for(lab, train(lab, dataset="mnist", layers=NET, epochs=3, batch_size=8, precision="fp32",
                                 seed=3)["version"])
    assert record["status"] == "succeeded", record["error"]
    return record


def stored(client, version: str) -> list[str]:
    settings = client.app.state.settings
    return sorted(o.key for o in store_from_settings(settings).list(
        bucket=settings.minio_model_bucket, prefix=f"{version}/analyses/"))


def ready(client, url: str, **params) -> dict:
    """The result of an analysis a worker computes: 202 with Location and Retry-After first, then 200."""
    first = client.get(url, params=params)
    assert first.status_code == 202, first.text
    assert first.headers["location"].startswith(url) and int(first.headers["retry-after"]) >= 1
    assert first.json()["status"] in ("queued", "running")
    location = first.headers["location"]
    wait_until(lambda: client.get(location).status_code != 202, timeout=120, what=f"{url} computed")
    answer = client.get(location)
    assert answer.status_code == 200, answer.text
    return answer.json()


def networks(client, version: str, epochs: list[int]) -> tuple[list, torch.nn.Sequential, dict]:
    snapshots = [models.load_model(client.get(f"/models/{version}/snapshots/{e}").content) for e in epochs]
    blob = client.get(f"/models/{version}").content
    return snapshots, models.load_model(blob), models.read_header(blob)["normalization"]


def images(settings, split: str) -> torch.Tensor:
    service = DatasetService(store=store_from_settings(settings), settings=settings)
    return service.cka_set("mnist")[0] if split == "cka" else service.load_split("mnist", "test")[0]


def test_the_dynamics_on_the_cka_set_is_ready_with_the_model_and_equals_the_reference(lab, lab_settings, model):
    version = model["version"]
    assert len(stored(lab, version)) == 1  # stored by the training job, before the model was listed
    r = lab.get(f"/models/{version}/dynamics")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["epochs"] == [0, 1, 2, 3] and body["estimator"] == "linear" and body["data"] == "cka"
    assert body["metrics"] == [None, *model["history"]]
    assert body["layers"] == [f"{i}:{name}" for i, name in enumerate(("Conv2d", "ReLU", "MaxPool2d", "Flatten",
                                                                         "Linear"))]
    snapshots, final, norm = networks(lab, version, body["epochs"])
    x = images(lab_settings, "cka")
    finals = outputs(final, x, norm)
    for e, net in enumerate(snapshots):
        for layer, out in enumerate(outputs(net, x, norm)):
            assert body["to_final"][layer][e] == pytest.approx(linear_cka(out, finals[layer]), abs=1e-6)
    assert all(row[-1] == pytest.approx(1.0) for row in body["to_final"])  # the last snapshot is the model
    assert min(row[0] for row in body["to_final"]) < 0.99  # training moved the layers: the data leave room to fail

    png = lab.get(f"/models/{version}/dynamics", params={"format": "png"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG") and b"CKA to the final model" in png.content


def test_test_split_dynamics_and_cka_are_computed_by_workers_and_equal_the_reference(lab, lab_settings, model):
    version = model["version"]
    url = f"/models/{version}/dynamics"
    body = ready(lab, url, data="test", batch_size=BATCH)
    assert body["estimator"] == "debiased" and body["data"] == "test" and body["batches"] >= 3
    snapshots, final, norm = networks(lab, version, body["epochs"])
    x, layers = images(lab_settings, "test"), len(final)
    for e, net in enumerate(snapshots):
        expected = reference(x, [(net, norm), (final, norm)], BATCH)[:layers, layers:].diagonal()
        got = torch.tensor([row[e] for row in body["to_final"]], dtype=torch.float64)
        assert got == pytest.approx(expected, abs=1e-6)
        for layer in range(layers):
            assert body["ci"]["low"][layer][e] <= body["to_final"][layer][e] <= body["ci"]["high"][layer][e]

    cka = ready(lab, f"/models/{version}/cka", data="test", batch_size=BATCH, epoch=1)
    assert cka["estimator"] == "debiased" and cka["n"] == body["n"] and cka["batches"] == body["batches"]
    expected = reference(x, [(snapshots[1], norm)], BATCH)
    assert torch.tensor(cka["matrix"], dtype=torch.float64) == pytest.approx(expected, abs=1e-6)
    low, high = (torch.tensor(cka["ci"][bound]) for bound in ("low", "high"))
    assert (low <= torch.tensor(cka["matrix"]) + 1e-12).all() and (torch.tensor(cka["matrix"]) <= high + 1e-12).all()
    again = lab.get(f"/models/{version}/cka", params={"data": "test", "batch_size": BATCH, "epoch": 1})
    assert again.status_code == 200 and again.json() == cka  # stored: no second job

    refused = lab.get(f"/models/{version}/cka", params={"data": "test", "estimator": "linear"})
    assert refused.status_code == 422 and refused.json()["field"] == "estimator"
    assert "debiased" in refused.json()["detail"]


def test_epoch_picks_a_snapshot_for_every_analysis(lab, model):
    version = model["version"]
    at_init, final = (lab.get(f"/models/{version}/cka", params=p).json() for p in ({"epoch": 0}, {}))
    assert at_init["layers"] == final["layers"] and at_init["matrix"] != final["matrix"]
    vs = lab.get(f"/models/{version}/cka", params={"against": version, "against_epoch": 0}).json()
    assert vs["matrix"] != final["matrix"] and vs["other_layers"] == final["layers"]
    maps = [lab.get(f"/models/{version}/activations", params={"layer": 0, "sample": 0, "format": "json", **p}).json()
            for p in ({"epoch": 0}, {})]
    assert maps[0]["shape"] == maps[1]["shape"] and maps[0]["values"] != maps[1]["values"]
    top = lab.get(f"/models/{version}/top-images", params={"layer": 0, "channel": 0, "k": 5, "epoch": 0})
    assert top.status_code == 200 and len(top.json()["indices"]) == 5
    missing = lab.get(f"/models/{version}/cka", params={"epoch": 9})
    assert missing.status_code == 404 and "epoch 9" in missing.json()["detail"]
    alone = lab.get(f"/models/{version}/cka", params={"against_epoch": 1})
    assert alone.status_code == 422 and alone.json()["field"] == "against_epoch"


def test_stored_results_are_served_after_a_restart_without_computing(lab, lab_settings, model, monkeypatch):
    version = model["version"]
    wanted = {"/dynamics": {}, "/cka": {"epoch": 2}}
    answers = {path: lab.get(f"/models/{version}{path}", params=params).json() for path, params in wanted.items()}
    keys = stored(lab, version)
    assert len(keys) >= 2 and all(k.endswith(".json") for k in keys)
    with TestClient(create_app(lab_settings)) as second:  # another process's view: nothing in memory
        def no_networks(*args, **kwargs):
            raise AssertionError("a stored result was computed again")

        monkeypatch.setattr(second.app.state.registry, "load", no_networks)
        for path, params in wanted.items():
            r = second.get(f"/models/{version}{path}", params=params)
            assert r.status_code == 200 and r.json() == answers[path]


def test_a_model_without_snapshots_has_no_dynamics_and_its_analyses_go_with_it(lab):
    record = wait_for(lab, train(lab, dataset="mnist", layers=NET, epochs=1, batch_size=8, snapshot_every=0)["version"])
    version = record["version"]
    r = lab.get(f"/models/{version}/dynamics")
    assert r.status_code == 404 and r.json()["snapshot_every"] == 0 and "snapshot_every" in r.json()["detail"]
    assert lab.get(f"/models/{version}/cka").status_code == 200 and len(stored(lab, version)) == 1
    assert lab.delete(f"/models/{version}").status_code == 204
    assert stored(lab, version) == []


def test_an_analysis_worker_killed_mid_job_is_finished_by_another_attempt(lab, model):
    version, queue = model["version"], lab.app.state.jobs.queue
    for batch_size in (4, 5, 6):  # a fresh analysis each try, in case one ends before it can be killed
        url = f"/models/{version}/cka"
        first = lab.get(url, params={"data": "test", "batch_size": batch_size})
        assert first.status_code == 202
        job_id = next(j for j in _analysis_jobs(lab) if j["request"]["analysis"]["batch_size"] == batch_size)
        pid = _running_pid(queue, job_id["version"])
        if pid is None:
            continue
        os.kill(pid, signal.SIGKILL)
        body = ready_after(lab, url, data="test", batch_size=batch_size)
        assert body["batches"] >= 3
        return
    pytest.fail("every analysis ended before it could be killed")


def _analysis_jobs(client) -> list[dict]:
    from sqlalchemy import select

    from app.db.tables import Job

    with client.app.state.db.read() as conn:
        rows = conn.execute(select(Job).where(Job.version.like(f"{layout.ANALYSIS_JOB}%"))).all()
    return [{"version": row.version, "request": row.request, "status": row.status} for row in rows]


def _running_pid(queue, job_id: str) -> int | None:
    def started():
        try:
            record = queue.get(job_id)
        except Exception:  # noqa: BLE001 - ended and forgotten already
            return "gone"
        return record["worker"] and record["worker"]["pid"] if record["status"] == "running" else None

    found = wait_until(started, timeout=60, what="the analysis job's worker")
    return None if found == "gone" else found


def ready_after(client, url: str, **params) -> dict:
    wait_until(lambda: client.get(url, params=params).status_code != 202, timeout=120, what="analysis after a kill")
    answer = client.get(url, params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_the_dashboard_polls_a_test_split_analysis_and_shows_its_interval(lab, model):
    url = f"/ui/models/{model['version']}/cka"
    params = {"data": "test", "epoch": "2"}
    first = lab.get(url, params=params)
    assert first.status_code == 200 and 'hx-trigger="load delay:2s"' in first.text
    assert "A worker is computing CKA on the whole test split" in first.text
    wait_until(lambda: "hx-trigger=\"load delay:2s\"" not in lab.get(url, params=params).text, timeout=120,
               what="the dashboard's CKA on the test split")
    page = lab.get(url, params=params).text
    assert "Unbiased minibatch CKA" in page and "at snapshot epoch 2" in page
    assert 'class="heatmap interval"' in page and "95 % interval" in page
    dynamics = lab.get(f"/ui/models/{model['version']}/dynamics").text
    assert "epoch 3" in dynamics and "to the same layer of the final model" in dynamics
