"""`app.client.Client` against a live server over real HTTP: a whole train → wait → download → cka round trip, the
rest of its surface, a sweep with seed replicates, paging through cursors, and errors raised as one exception
carrying the problem."""

import hashlib
import secrets

import pytest
from pydantic import SecretStr

from app.client import APIError, Client
from app.client.events import server_sent_events
from app.jobs.request import TrainRequest
from app.sweeps.request import SweepRequest
from models import load_model
from tests.support.liveserver import LiveServer

TOKEN = "client-" + secrets.token_hex(8)
CONV = [{"type": "Conv2d", "out_channels": 4, "kernel_size": 3}, {"type": "ReLU"}, {"type": "Flatten"}]
FLAT = [{"type": "Flatten"}]


@pytest.fixture(scope="module")
def served(seeded_settings):
    settings = seeded_settings.model_copy(update={"minio_model_bucket": f"models-client-{secrets.token_hex(3)}",
                                                  "api_token": SecretStr(TOKEN)})
    with LiveServer(settings) as server:
        yield server


@pytest.fixture
def client(served):
    with Client(served.url, TOKEN) as client:
        yield client


@pytest.fixture(scope="module")
def flat_models(served):
    """Two small models labelled `suite=client`, oldest first."""
    with Client(served.url, TOKEN) as client:
        versions = [client.train(dataset="mnist", layers=FLAT, seed=seed, labels={"suite": "client"}).version
                    for seed in (1, 2)]
        assert [client.wait(v).status for v in versions] == ["succeeded", "succeeded"]
    return versions


def test_train_wait_download_and_cka_round_trip(client, tmp_path):
    request = TrainRequest(dataset="mnist", version="client-round-trip", layers=CONV, epochs=2, batch_size=16)
    queued = client.train(request)
    assert queued.version == "client-round-trip" and queued.status in ("queued", "running")

    seen = []
    record = client.wait(queued.version, on_update=seen.append)
    assert record.status == "succeeded" and record.progress.epoch == 2 and record.metrics["test_accuracy"] is not None
    assert seen and seen[-1] == record and all(r.version == queued.version for r in seen)

    path, sha256, size = client.download(queued.version, tmp_path / "model.safetensors")
    assert path == tmp_path / "model.safetensors" and not (tmp_path / "model.safetensors.part").exists()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha256 == client.metadata(queued.version).sha256
    assert size == path.stat().st_size
    assert len(load_model(path)) == len(record.layers)

    cka = client.cka(queued.version)
    assert cka.estimator == "linear" and len(cka.layers) == len(record.layers)
    assert len(cka.matrix) == len(cka.layers) and all(abs(row[i] - 1) < 1e-6 for i, row in enumerate(cka.matrix))
    against = client.cka(queued.version, against=queued.version, estimator="debiased")
    assert against.estimator == "debiased" and against.other_layers == cka.layers

    snapshots = client.snapshots(queued.version).items
    assert [s.epoch for s in snapshots] == [0, 1, 2]
    initial = client.download(queued.version, tmp_path / "init.safetensors", epoch=0)
    assert initial.sha256 == snapshots[0].sha256 != sha256


def test_aliases_predict_datasets_and_delete(client, tmp_path):
    version = client.wait(client.train(dataset="mnist", layers=FLAT, version="client-doomed").version).version
    assert client.set_alias("client-best", version=version).version == version
    assert [a.alias for a in client.aliases()] == ["client-best"] and client.alias("client-best").version == version
    assert client.metadata("@client-best").version == version

    manifest = client.dataset("mnist")
    assert {d.name for d in client.datasets()} == {"mnist", "fashion_mnist", "cifar10", "svhn", "emnist"}
    image = [[[0] * manifest.image_shape[2]] * manifest.image_shape[1]]
    (prediction,) = client.predict("@client-best", [image]).predictions
    assert prediction.class_name == manifest.classes[prediction.label] and len(prediction.probabilities) == 10

    with pytest.raises(APIError) as aliased:
        client.delete(version)
    assert aliased.value.status == 409 and "client-best" in aliased.value.detail
    client.delete_alias("client-best")
    client.delete(version)
    with pytest.raises(APIError) as gone:
        client.download(version, tmp_path / "gone.safetensors")
    assert gone.value.status == 404 and not list(tmp_path.iterdir())


def test_a_sweep_with_seed_replicates_through_the_client(client):
    request = SweepRequest(name="client-lr", base=TrainRequest(dataset="mnist", layers=FLAT, batch_size=16),
                           space={"learning_rate": [0.02, 0.002]}, seeds=[0, 1])
    created = client.create_sweep(request)
    assert created.status == "running" and created.name == "client-lr" and created.metric == "test_accuracy"
    assert [(t.trial, t.config, t.seed) for t in created.trials] == [
        (1, {"learning_rate": 0.02}, 0), (2, {"learning_rate": 0.02}, 1),
        (3, {"learning_rate": 0.002}, 0), (4, {"learning_rate": 0.002}, 1)]

    seen = []
    done = client.wait_sweep(created.id, on_update=seen.append, poll_s=0.2)
    assert done.status == "succeeded" and [t.status for t in done.trials] == ["succeeded"] * 4
    assert seen[-1] == done and all(r.id == created.id for r in seen)
    assert all(t.epochs_run == 1 and t.metric == client.job(t.version).metrics["test_accuracy"] for t in done.trials)
    top = max(t.metric for t in done.trials)
    assert done.best == min((t for t in done.trials if t.metric == top), key=lambda t: t.trial)
    assert client.sweep(created.id) == done

    similar = client.sweep_similarity(created.id).configurations
    assert [(c.config, c.seeds) for c in similar] == [({"learning_rate": 0.02}, [0, 1]),
                                                      ({"learning_rate": 0.002}, [0, 1])]
    for configuration in similar:
        assert len(configuration.layers) == len(configuration.mean) == len(configuration.min) >= 1
        assert all(lo == mean == hi and -1e-6 <= mean <= 1 + 1e-6  # one pair of seeds: all three are its CKA
                   for lo, mean, hi in zip(configuration.min, configuration.mean, configuration.max, strict=True))

    # a dict body, paging, and cancelling: the second sweep is cancelled before it ends
    other = client.create_sweep({"base": {"dataset": "mnist", "layers": FLAT, "epochs": 100, "batch_size": 1},
                                 "space": {"learning_rate": [0.01, 0.001]}})
    assert [s.id for s in client.sweeps(limit=1)][:2] == [other.id, created.id]
    assert client.sweep_page(limit=1).next is not None
    cancelled = client.cancel_sweep(other.id)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at
    ended_too = client.wait_sweep(other.id, poll_s=0.2)  # returns once its trials have ended as well
    assert ended_too.status == "cancelled" and [t.status for t in ended_too.trials] == ["cancelled"] * 2
    with pytest.raises(APIError) as ended:
        client.cancel_sweep(created.id)
    assert ended.value.status == 409


def test_pages_follow_their_cursors(client, flat_models):
    newest = flat_models[1]
    page = client.model_page(labels={"suite": "client"}, limit=1)
    assert len(page.items) == 1 and page.next is not None
    assert page.items[0].version == newest
    assert [m.version for m in client.models(labels={"suite": "client"}, limit=1)] == flat_models[::-1]
    jobs = [j.version for j in client.jobs(labels={"suite": "client"}, limit=1)]
    assert jobs == flat_models[::-1]
    assert [j.version for j in client.jobs(labels={"suite": "none"})] == []


def test_errors_raise_one_exception_carrying_the_problem(client, served):
    with pytest.raises(APIError) as missing:
        client.job("no-such-job")
    problem = missing.value
    assert problem.status == 404 and problem.title == "Not found" and "no-such-job" in problem.detail
    assert problem.problem.type.startswith("https://")

    with pytest.raises(APIError) as invalid:
        client.train(dataset="mnist", layers=[{"type": "Conv3d", "out_channels": 4}])
    assert invalid.value.status == 422 and invalid.value.field == "layers[0]"
    assert "unknown layer type" in invalid.value.detail

    with Client(served.url, "wrong-token-0123456789") as stranger, pytest.raises(APIError) as refused:
        stranger.models().__next__()
    assert refused.value.status == 401 and "bearer token" in refused.value.detail


def test_dynamics_and_a_test_split_analysis_waited_for_through_202s(client, flat_models):
    dynamics = client.dynamics(flat_models[1])
    assert dynamics.data == "cka" and dynamics.epochs[0] == 0
    assert len(dynamics.to_final) == len(dynamics.layers) and all(row[-1] > 0.999 for row in dynamics.to_final)
    on_test = client.dynamics(flat_models[1], data="test")  # a worker computes it: the client waits out the 202s
    assert on_test.data == "test" and on_test.estimator == "debiased" and on_test.batches >= 1
    assert on_test.ci is not None and len(on_test.ci.low) == len(on_test.layers)


def test_event_lines_are_read_as_the_sse_format_says():
    lines = [": a comment", "event: job", "id: 3", 'data: {"a":', "data: 1}", "", "retry: 10", "", "data: [2]"]
    assert list(server_sent_events(iter(lines))) == [("job", "3", {"a": 1}), ("message", "3", [2])]
