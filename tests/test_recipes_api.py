"""The recipe fields through POST /train: validated (422 naming the field), recorded resolved in the job and the
model's metadata, and trained by a worker: validation metrics, early stopping and its best weights."""

import pytest
import torch
from safetensors.torch import load as load_tensors

from tests.support.waiting import train, wait_for

SMALL_NET = [{"type": "Conv2d", "out_channels": 4, "kernel_size": 3}, {"type": "ReLU"},
             {"type": "MaxPool2d", "kernel_size": 2}, {"type": "Flatten"}]
PLAIN = {"augment": None, "schedule": "constant", "warmup_epochs": 0.0, "label_smoothing": 0.0,
         "validation_split": 0.0, "early_stopping": None}


@pytest.mark.parametrize(("fields", "field"), [
    ({"augment": {"shift": 9}}, "augment.shift"),
    ({"augment": {"cutout": 17}}, "augment.cutout"),
    ({"augment": {"flip": "sometimes"}}, "augment.flip"),
    ({"augment": {"rotate": 10}}, "augment.rotate"),
    ({"schedule": "linear"}, "schedule"),
    ({"schedule": "cosine", "warmup_epochs": -1}, "warmup_epochs"),
    ({"schedule": "onecycle", "warmup_epochs": 1}, "warmup_epochs"),  # a warmup is the cosine schedule's
    ({"schedule": "cosine", "epochs": 2, "warmup_epochs": 3}, "warmup_epochs"),
    ({"label_smoothing": 0.6}, "label_smoothing"),
    ({"validation_split": 0.51}, "validation_split"),
    ({"validation_split": -0.1}, "validation_split"),
    ({"early_stopping": {"metric": "train_loss"}}, "early_stopping.metric"),
    ({"early_stopping": {"patience": 3}}, "early_stopping.metric"),
    ({"early_stopping": {"metric": "test_loss", "patience": 0}}, "early_stopping.patience"),
    ({"early_stopping": {"metric": "val_accuracy"}}, "early_stopping"),  # no validation split to judge on
])
def test_a_bad_recipe_field_is_422_naming_it(seeded_client, fields, field):
    r = seeded_client.post("/train", json={"dataset": "mnist", **fields})
    assert r.status_code == 422, r.text
    assert [e["field"] for e in r.json()["errors"]] == [field]


def test_a_request_without_recipe_fields_records_the_plain_recipe(seeded_client):
    record = train(seeded_client, dataset="mnist", layers=SMALL_NET, batch_size=16)
    assert {k: record["request"][k] for k in PLAIN} == PLAIN
    done = wait_for(seeded_client, record["version"])
    assert done["status"] == "succeeded" and done["stopped_early"] is None
    assert set(done["metrics"]) == {"train_loss", "train_accuracy", "test_loss", "test_accuracy"}


def test_a_recipe_job_records_its_resolved_recipe_and_validation_metrics(seeded_client):
    body = {"dataset": "mnist", "layers": SMALL_NET, "epochs": 2, "batch_size": 8, "augment": {"shift": 2},
            "schedule": "cosine", "warmup_epochs": 0.5, "label_smoothing": 0.1, "validation_split": 0.5,
            "early_stopping": {"metric": "val_loss", "patience": 3}}
    record = wait_for(seeded_client, train(seeded_client, **body)["version"])
    assert record["status"] == "succeeded", record["error"]
    resolved = {**PLAIN, "augment": {"shift": 2, "flip": False, "cutout": 0}, "schedule": "cosine",
                "warmup_epochs": 0.5, "label_smoothing": 0.1, "validation_split": 0.5,
                "early_stopping": {"metric": "val_loss", "patience": 3, "restore_best": False}}
    assert {k: record["request"][k] for k in PLAIN} == resolved
    assert all({"val_loss", "val_accuracy"} <= entry.keys() for entry in record["history"])
    assert {"val_loss", "val_accuracy"} <= record["metrics"].keys()
    meta = seeded_client.get(f"/models/{record['version']}/metadata").json()
    assert {k: meta["request"][k] for k in PLAIN} == resolved and meta["stopped_early"] is None


def test_a_job_stops_early_and_stores_its_best_epochs_weights(seeded_client):
    # a high learning rate on 60 images: the test loss soon rises as the network grows overconfident
    body = {"dataset": "mnist", "layers": SMALL_NET, "epochs": 40, "batch_size": 8, "learning_rate": 0.02, "seed": 5,
            "snapshot_every": 3}
    stopping = {"metric": "test_loss", "patience": 2, "restore_best": True}
    record = wait_for(seeded_client, train(seeded_client, **body, early_stopping=stopping)["version"], timeout=300)
    assert record["status"] == "succeeded", record["error"]
    losses = [entry["test_loss"] for entry in record["history"]]
    best = losses.index(min(losses)) + 1
    assert record["stopped_early"]["epoch"] == len(losses) == best + 2 < 40
    assert "test_loss did not improve for 2 epochs" in record["stopped_early"]["reason"]
    assert record["metrics"] == {k: v for k, v in record["history"][best - 1].items() if k != "epoch"}
    meta = seeded_client.get(f"/models/{record['version']}/metadata").json()
    assert meta["stopped_early"] == record["stopped_early"] and meta["metrics"] == record["metrics"]
    # the same request trained for `best` epochs, without early stopping, gives the very weights stored
    at_best = wait_for(seeded_client, train(seeded_client, **{**body, "epochs": best})["version"])
    stored, expected = (load_tensors(seeded_client.get(f"/models/{v}").content)
                        for v in (record["version"], at_best["version"]))
    assert stored.keys() == expected.keys() and all(torch.equal(stored[k], expected[k]) for k in stored)
    assert at_best["history"] == record["history"][:best]
    # snapshots: every third epoch and the last one run (not the best, which is the model)
    last = len(losses)
    kept = [item["epoch"] for item in seeded_client.get(f"/models/{record['version']}/snapshots").json()["items"]]
    assert kept == sorted({*range(0, last + 1, 3), last})
