"""Sweeps through the HTTP API on real storage and a real catalog: validation, expansion, trials as labelled jobs,
the best trial, paging, cancelling, a restart of the service, and ASHA's saving."""

import pytest
from fastapi.testclient import TestClient

import models
from app.datasets.service import DatasetService
from app.main import create_app
from app.storage.s3 import store_from_settings
from app.sweeps import expansion
from tests.support.reference import linear_cka, outputs
from tests.support.waiting import wait_for, wait_until

SMALL_NET = [{"type": "Conv2d", "out_channels": 4, "kernel_size": 3}, {"type": "ReLU"},
             {"type": "MaxPool2d", "kernel_size": 2}, {"type": "Flatten"}]
BASE = {"dataset": "mnist", "layers": SMALL_NET, "batch_size": 16, "validation_split": 0.5, "snapshot_every": 0}


def sweep(client, **body) -> dict:
    response = client.post("/sweeps", json={"base": BASE, **body})
    assert response.status_code == 201, response.text
    assert response.headers["location"] == f"/sweeps/{response.json()['id']}"
    return response.json()


def stored_analyses(client, version: str) -> list[str]:
    settings = client.app.state.settings
    return [o.key for o in store_from_settings(settings).list(bucket=settings.minio_model_bucket,
                                                               prefix=f"{version}/analyses/")]


def wait_sweep(client, sweep_id: str, *, timeout: float = 300.0) -> dict:
    return wait_until(lambda: (r := client.get(f"/sweeps/{sweep_id}").json())["status"] != "running" and r,
                      timeout=timeout, what=f"end of sweep {sweep_id}")


@pytest.mark.parametrize(("body", "field"), [
    ({"space": {"dropout": [0.1]}}, "space.dropout"),
    ({"space": {"learning_rate": []}}, "space.learning_rate"),
    ({"space": {"learning_rate": {"min": 1e-3, "max": 1e-1}}}, "space.learning_rate"),  # a range needs random
    ({"space": {"learning_rate": {"min": 0, "max": 1, "log": True}}, "strategy": "random", "trials": 2},
     "space.learning_rate"),
    ({"space": {"optimizer": {"min": 0, "max": 1}}}, "space.optimizer"),
    ({"space": {"learning_rate": [0.01, -1]}}, "space.learning_rate"),
    ({"space": {"optimizer": ["adam", "lion"]}}, "space.optimizer"),
    ({"space": {"layers": [SMALL_NET, [{"type": "Conv2d", "out_channels": 4, "kernel_size": 99}]]}},
     "space.layers"),
    ({"strategy": "random"}, "trials"),
    ({"trials": 3}, "trials"),
    ({"metric": "train_loss"}, "metric"),
    ({"base": {**BASE, "validation_split": 0.0}, "metric": "val_accuracy"}, "metric"),
    ({"base": {**BASE, "version": "mine"}}, "base.version"),
    ({"base": {**BASE, "epochs": 0}}, "base.epochs"),
    ({"base": {"layers": SMALL_NET}}, "base.dataset"),
    ({"early_stop": {"type": "asha", "reduction_factor": 1}}, "early_stop.reduction_factor"),
    ({"early_stop": {"type": "hyperband"}}, "early_stop.type"),
    ({"labels": {"sweep": "mine"}}, "labels"),
    ({"seeds": []}, "seeds"),
])
def test_a_bad_sweep_is_422_naming_the_field(seeded_client, body, field):
    r = seeded_client.post("/sweeps", json={"base": BASE, **body})
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert [e["field"] for e in r.json()["errors"]] == [field], r.json()


def test_an_unknown_sweep_is_404_and_an_unknown_dataset_too(seeded_client):
    assert seeded_client.get("/sweeps/sweep-nope").status_code == 404
    assert seeded_client.delete("/sweeps/sweep-nope").status_code == 404
    assert seeded_client.post("/sweeps", json={"base": {"dataset": "imagenet"}}).status_code == 404


def test_the_random_expansion_is_seeded_and_recorded():
    space = expansion.check_space({"learning_rate": {"min": 1e-4, "max": 1e-1, "log": True},
                                   "batch_size": {"min": 8, "max": 64}, "optimizer": ["adam", "sgd"]})
    drawn = expansion.draw(space, trials=20, seed=7)
    assert drawn == expansion.draw(space, trials=20, seed=7) != expansion.draw(space, trials=20, seed=8)
    assert all(1e-4 <= c["learning_rate"] <= 1e-1 and isinstance(c["batch_size"], int) and 8 <= c["batch_size"] <= 64
               for c in drawn)
    assert {c["optimizer"] for c in drawn} == {"adam", "sgd"}
    assert expansion.grid({"a": [1, 2], "b": ["x", "y"]}) == [{"a": 1, "b": "x"}, {"a": 1, "b": "y"},
                                                              {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]


def test_a_random_sweep_records_its_seed_and_repeats_its_draw_with_it(seeded_client):
    space = {"learning_rate": {"min": 1e-4, "max": 1e-1, "log": True}, "batch_size": [8, 16]}
    first = sweep(seeded_client, space=space, strategy="random", trials=3)
    again = sweep(seeded_client, space=space, strategy="random", trials=3, random_seed=first["random_seed"])
    for record in (first, again):
        assert seeded_client.delete(f"/sweeps/{record['id']}").json()["status"] == "cancelled"
    assert isinstance(first["random_seed"], int)
    assert [t["config"] for t in first["trials"]] == [t["config"] for t in again["trials"]]


def test_a_grid_sweep_with_two_seeds_trains_labelled_trials_and_names_the_best(seeded_client):
    record = sweep(seeded_client, name="lr", space={"learning_rate": [0.02, 0.002]}, seeds=[0, 1],
                   labels={"owner": "alice"})
    assert record["status"] == "running" and record["metric"] == "val_accuracy" and record["seeds"] == [0, 1]
    assert [(t["trial"], t["config"], t["seed"]) for t in record["trials"]] == [
        (1, {"learning_rate": 0.02}, 0), (2, {"learning_rate": 0.02}, 1),
        (3, {"learning_rate": 0.002}, 0), (4, {"learning_rate": 0.002}, 1)]
    versions = [t["version"] for t in record["trials"]]
    assert versions == [f"{record['id']}-t{n}" for n in range(1, 5)]
    done = wait_sweep(seeded_client, record["id"])
    assert done["status"] == "succeeded" and {t["status"] for t in done["trials"]} == {"succeeded"}
    for trial in done["trials"]:
        job = seeded_client.get(f"/train/{trial['version']}").json()
        assert job["labels"] == {"owner": "alice", "sweep": record["id"], "trial": str(trial["trial"])}
        assert job["request"]["seed"] == trial["seed"] and job["request"]["learning_rate"] == trial["config"][
            "learning_rate"]
        assert trial["metric"] == job["metrics"]["val_accuracy"] and trial["epochs_run"] == 1
    top = max(t["metric"] for t in done["trials"])
    assert done["best"] == min((t for t in done["trials"] if t["metric"] == top), key=lambda t: t["trial"])
    # listed and paged in /train and /models like any job
    label = f"label=sweep:{record['id']}"
    first = seeded_client.get(f"/train?{label}&limit=3").json()
    rest = seeded_client.get(f"/train?{label}&limit=3&cursor={first['next']}").json()
    assert sorted(j["version"] for j in first["items"] + rest["items"]) == versions and rest["next"] is None
    assert sorted(m["version"] for m in seeded_client.get(f"/models?{label}").json()["items"]) == versions
    assert seeded_client.delete(f"/sweeps/{record['id']}").status_code == 409  # nothing left to cancel

    # the seed-to-seed floor: per configuration, the same-layer linear CKA of its two replicates
    similar = seeded_client.get(f"/sweeps/{record['id']}/similarity").json()["configurations"]
    assert [(c["config"], c["seeds"]) for c in similar] == [({"learning_rate": 0.02}, [0, 1]),
                                                             ({"learning_rate": 0.002}, [0, 1])]
    settings = seeded_client.app.state.settings
    x = DatasetService(store=store_from_settings(settings), settings=settings).cka_set("mnist")[0]
    for configuration, (a, b) in zip(similar, (versions[:2], versions[2:]), strict=True):
        blobs = [seeded_client.get(f"/models/{v}").content for v in (a, b)]
        norm = models.read_header(blobs[0])["normalization"]
        outs = [outputs(models.load_model(blob), x, norm) for blob in blobs]
        expected = [linear_cka(p, q) for p, q in zip(*outs, strict=True)]
        assert len(configuration["layers"]) == len(expected)
        for stat in ("mean", "min", "max"):  # one pair: all three are its CKA
            assert configuration[stat] == pytest.approx(expected, abs=1e-6)
    assert len(stored_analyses(seeded_client, a)) >= 1  # computed once, stored with the model


def test_sweeps_page_newest_first(seeded_client):
    made = [sweep(seeded_client, space={"learning_rate": [0.01]})["id"] for _ in range(3)]
    for sweep_id in made:
        seeded_client.delete(f"/sweeps/{sweep_id}")
    seen, cursor = [], None
    while True:
        page = seeded_client.get("/sweeps", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        assert len(page["items"]) <= 2
        seen += [item["id"] for item in page["items"]]
        if not (cursor := page["next"]):
            break
    assert [s for s in seen if s in made] == made[::-1] and len(seen) == len(set(seen))
    assert seeded_client.get("/sweeps", params={"cursor": "forged"}).status_code == 422


def test_cancelling_a_sweep_cancels_its_queued_and_running_trials(seeded_client):
    long = {**BASE, "epochs": 100, "batch_size": 1}  # a trial that runs for a while
    record = sweep(seeded_client, base=long, space={"learning_rate": [0.01, 0.003, 0.001]})
    versions = [t["version"] for t in record["trials"]]
    wait_for(seeded_client, versions[0], statuses={"running"})
    assert seeded_client.get(f"/train/{versions[1]}").json()["status"] == "queued"
    cancelled = seeded_client.delete(f"/sweeps/{record['id']}")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled" and cancelled.json()["cancelled_at"]
    for version in versions:
        assert wait_for(seeded_client, version)["status"] == "cancelled"
    assert seeded_client.delete(f"/sweeps/{record['id']}").status_code == 409


def test_a_sweep_survives_a_restart_of_the_service(seeded_settings):
    with TestClient(create_app(seeded_settings)) as first:
        record = sweep(first, space={"weight_decay": [0.0, 0.01]})
    with TestClient(create_app(seeded_settings)) as second:  # a new process on the same catalog and buckets
        again = second.get(f"/sweeps/{record['id']}").json()
        assert [(t["version"], t["config"], t["seed"]) for t in again["trials"]] == [
            (t["version"], t["config"], t["seed"]) for t in record["trials"]]
        done = wait_sweep(second, record["id"])
        assert done["status"] == "succeeded" and [t["version"] for t in done["trials"]] == [
            t["version"] for t in record["trials"]]
        assert {k: done[k] for k in ("name", "space", "seeds", "metric", "created_at")} == {
            k: record[k] for k in ("name", "space", "seeds", "metric", "created_at")}


ASHA_SPACE = {"learning_rate": {"min": 1e-4, "max": 3e-2, "log": True}, "batch_size": [8, 16, 32]}


def test_asha_spends_at_most_half_the_epochs_of_the_same_random_sweep_without_it(seeded_client):
    halved = sweep(seeded_client, base={**BASE, "epochs": 9}, space=ASHA_SPACE, strategy="random", trials=9,
                   random_seed=1, early_stop={"type": "asha", "min_epochs": 1, "reduction_factor": 3})
    halved = wait_sweep(seeded_client, halved["id"], timeout=600)
    # without ASHA nothing ends a trial early (the base has no early_stopping): each runs all its epochs
    jobs = [seeded_client.get(f"/train/{t['version']}").json() for t in halved["trials"]]
    without = sum(job["request"]["epochs"] for job in jobs)
    spent = sum(t["epochs_run"] for t in halved["trials"])
    assert without == 81 and spent <= without / 2, (spent, without)
    assert {t["status"] for t in halved["trials"]} == {"succeeded"}
    # every trial was judged at rung 0 (epoch 1); those it stopped end there with its reason, and a model
    assert {d["trial"] for d in halved["decisions"] if d["rung"] == 0} == set(range(1, 10))
    assert all(d["epoch"] == 3 ** d["rung"] for d in halved["decisions"])
    for trial in halved["trials"]:
        stops = [d for d in halved["decisions"] if d["trial"] == trial["trial"] and d["decision"] == "stop"]
        if stops:
            assert trial["epochs_run"] == stops[0]["epoch"]
            assert trial["stopped_early"]["epoch"] == stops[0]["epoch"]
            assert f"ASHA stopped trial {trial['trial']}" in trial["stopped_early"]["reason"]
            assert f"rung {stops[0]['rung']}" in trial["stopped_early"]["reason"]
            assert seeded_client.get(f"/models/{trial['version']}/metadata").json()["stopped_early"] == trial[
                "stopped_early"]
        else:
            assert trial["epochs_run"] == 9 and trial["stopped_early"] is None
