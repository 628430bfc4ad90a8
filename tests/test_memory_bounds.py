"""SCV_ANALYSIS_MAX_BYTES where requests set memory: predict in batches that fit, training batches refused at submit."""

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

import models
from app.db.engine import Database
from app.errors import InvalidInput
from app.registry import inference
from app.storage.s3 import store_from_settings
from tests.support.analysis_memory import growth_of
from tests.support.registry import put_model
from tests.support.replicas import Replica
from tests.support.s3 import make_settings

MiB = 1024 * 1024
# At the layer limits: 1024 channels of 62×62 (3.9 M values, LIMITS allows 4 M) per image, twice (Conv2d, ReLU):
# 31.5 MB of float32 activations per image, so 32 images in one batch would need about 1 GB.
WIDE = [{"type": "Conv2d", "out_channels": 1024, "kernel_size": 3, "padding": 16}, {"type": "ReLU"},
        {"type": "AdaptiveAvgPool2d", "output_size": 1}]
WIDE_SHAPE = (1, 32, 32)
SMALL = [{"type": "Conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1}, {"type": "BatchNorm2d"},
         {"type": "ReLU"}, {"type": "MaxPool2d", "kernel_size": 2}, {"type": "Flatten"},
         {"type": "Linear", "out_features": 16}, {"type": "GELU"}]
BUDGET = 64 * MiB
# What the budget does not count: freed activation blocks glibc keeps rather than reuses (its mmap threshold adapts
# to the first large block freed: one more batch's worth here, 98-99 MiB of growth in all, every run), and the
# request's own buffers (JSON, decoded images, logits). Predictions run on the registry's one compute thread: run on
# the request's threadpool thread, each thread kept its own freed blocks (98-158 MiB, once 249), and four requests
# at once grew it by 211 MiB. One batch of all 32 images grows it by about 1 GB.
MARGIN = BUDGET + 32 * MiB


def small_model(count: int) -> tuple[torch.nn.Sequential, dict, torch.Tensor]:
    layers = models.resolve_layers(SMALL, input_shape=(3, 12, 12), num_classes=5)
    net = models.seeded_model(layers, seed=3).eval()
    net.to(memory_format=models.memory_format(net))
    meta = {"layers": layers, "input_shape": [3, 12, 12], "classes": list("abcde"),
            "normalization": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}}
    images = torch.randint(0, 256, (count, 3, 12, 12), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    return net, meta, images


def test_predictions_do_not_depend_on_the_budget():
    net, meta, images = small_model(23)
    per_image = models.memory.footprint(meta["layers"], input_shape=meta["input_shape"]).per_sample
    norm = meta["normalization"]
    whole = torch.softmax(models.logits(net, images, mean=norm["mean"], std=norm["std"], device="cpu",
                                        batch_size=len(images)), dim=1)  # one batch, as before the budget
    for images_per_batch in (1, 2, 5, 22, 23, 256):
        got = inference.predict(net, meta, images, max_bytes=images_per_batch * per_image, precision="fp32")
        assert [p["label"] for p in got] == whole.argmax(dim=1).tolist(), images_per_batch
        probabilities = torch.tensor([p["probabilities"] for p in got])
        if images_per_batch >= len(images):  # one batch: exactly today's computation
            assert torch.equal(probabilities, whole)
        else:  # oneDNN picks its kernels by batch size: float32 rounding, as between requests of 1 and 23 images
            torch.testing.assert_close(probabilities, whole, rtol=0, atol=1e-6)


def test_predict_refuses_a_network_whose_single_image_does_not_fit():
    layers = models.resolve_layers(WIDE, input_shape=WIDE_SHAPE, num_classes=3)
    meta = {"layers": layers, "input_shape": list(WIDE_SHAPE), "classes": list("abc"),
            "normalization": {"mean": [0.5], "std": [0.25]}}
    with pytest.raises(InvalidInput) as caught:
        inference.predict(torch.nn.Sequential(), meta, torch.zeros((1, *WIDE_SHAPE), dtype=torch.uint8),
                          max_bytes=10 * MiB)
    problem = caught.value
    assert problem.status == 422 and problem.extra["field"] == "layers[0]"
    assert "layers[0] (Conv2d)" in problem.detail and "15,745,024 bytes" in problem.detail
    assert "SCV_ANALYSIS_MAX_BYTES" in problem.detail


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc (VmHWM reset)")
def test_predict_at_the_layer_limits_stays_within_the_budget(s3, tmp_path):
    settings = make_settings(s3, tmp_path)
    db, store = Database(settings.catalog_url), store_from_settings(settings)  # the replica's catalog, filled first
    db.migrate()
    store.ensure_buckets(settings.minio_model_bucket, settings.minio_dataset_bucket)
    put_model(store, settings.minio_model_bucket, "wide", db=db, layers=WIDE, input_shape=WIDE_SHAPE)
    db.engine.dispose()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MINIO_", "SCV_"))}
    env |= {**settings.to_env(), "SCV_ANALYSIS_MAX_BYTES": str(BUDGET), "SCV_MAX_CONCURRENT_JOBS": "0",
            "SCV_PRECISION": "fp32"}
    replica = Replica(tmp_path, env)
    try:
        images = torch.randint(0, 256, (32, *WIDE_SHAPE), generator=torch.Generator().manual_seed(0)).tolist()
        warm = replica.client.post("/models/wide/predict", json={"images": images[:1]})  # loads the network
        assert warm.status_code == 200, warm.text
        pid = replica.process.pid
        answer, growth = growth_of(lambda: replica.client.post("/models/wide/predict", json={"images": images}), pid)
        # Four requests at once: the process still holds one budget of activations (they take turns).
        with ThreadPoolExecutor(4) as pool:
            together, together_growth = growth_of(lambda: list(pool.map(
                lambda _: replica.client.post("/models/wide/predict", json={"images": images[:8]}), range(4))), pid)
    finally:
        replica.stop()
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["predictions"]) == 32
    assert growth <= BUDGET + MARGIN, f"grew {growth / MiB:.0f} MiB"
    assert [r.status_code for r in together] == [200] * 4, together[0].text
    assert all(r.json()["predictions"] == answer.json()["predictions"][:8] for r in together)
    assert together_growth <= BUDGET + MARGIN, f"grew {together_growth / MiB:.0f} MiB"


def test_a_training_batch_that_cannot_fit_is_refused_at_submit(seeded_client):
    default = seeded_client.post("/train", json={"dataset": "mnist", "batch_size": 4096, "version": "too-big"})
    assert default.status_code == 422, default.text
    problem = default.json()
    assert problem["field"] == "batch_size" and problem["errors"][0]["field"] == "batch_size"
    fits = problem["max_batch_size"]
    assert 1 <= fits < 4096 and f"batch_size {fits} or less" in problem["detail"]
    assert "SCV_ANALYSIS_MAX_BYTES" in problem["detail"]
    assert seeded_client.get("/train/too-big").status_code == 404  # nothing queued

    wide = seeded_client.post("/train", json={"dataset": "mnist", "layers": WIDE, "batch_size": 64})
    assert wide.status_code == 422 and wide.json()["field"] == "batch_size", wide.text
    assert wide.json()["max_batch_size"] < 64

    fitting = seeded_client.post("/train", json={"dataset": "mnist", "batch_size": fits, "version": "fits",
                                                 "epochs": 1, "train_subset": 8})
    assert fitting.status_code == 202, fitting.text
    seeded_client.delete("/train/fits")
