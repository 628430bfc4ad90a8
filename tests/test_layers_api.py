"""Any JSON as `layers` either builds a network within the limits that runs on the dataset's shape, or a 422."""

import json

import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import models
from app.main import create_app
from tests.support.waiting import train, wait_for

TYPES = ["Conv2d", "Linear", "ReLU", "LeakyReLU", "GELU", "Sigmoid", "Tanh", "MaxPool2d", "AvgPool2d",
         "AdaptiveAvgPool2d", "BatchNorm2d", "BatchNorm1d", "Dropout", "Dropout2d", "Flatten", "Conv3d", "Module",
         "__import__", "", None, 3]
KEYS = ["out_channels", "kernel_size", "stride", "padding", "out_features", "p", "output_size", "start_dim",
        "negative_slope", "in_features", "in_channels", "num_features", "bias", "inplace", "eval", "__class__"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 70), st.integers(), st.floats(allow_nan=True),
                    st.text(max_size=8))
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=4), scalars, max_size=2))
layer = st.fixed_dictionaries({"type": st.sampled_from(TYPES)},
                              optional={k: values for k in KEYS}) | st.dictionaries(st.text(max_size=6), values)
layers_json = st.one_of(st.lists(layer, max_size=8), scalars, st.dictionaries(st.text(max_size=4), scalars))


@pytest.fixture(scope="module")
def held_client(seeded_settings, tmp_path_factory):
    """A client whose only job slot is held by a long job, so accepted requests stay queued (no training); its own
    catalog, so that the jobs it leaves queued wait in no other module's queue."""
    settings = seeded_settings.model_copy(update={"minio_model_bucket": "models-layers-api",
                                                  "data_dir": tmp_path_factory.mktemp("layers-api")})
    with TestClient(create_app(settings)) as c:
        blocker = train(c, dataset="mnist", layers=[{"type": "Flatten"}], epochs=100, batch_size=1)["version"]
        wait_for(c, blocker, {"running"})
        yield c
        c.delete(f"/train/{blocker}")


@given(layers=layers_json)
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_any_layers_json_is_a_network_or_a_422(held_client, layers):
    # json.dumps writes NaN/Infinity as Python's parser (and so FastAPI's) accepts them: hostile on purpose.
    r = held_client.post("/train", content=json.dumps({"dataset": "mnist", "layers": layers}),
                         headers={"content-type": "application/json"})
    assert r.status_code in (202, 422), r.text
    if r.status_code == 422:
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["detail"]
        return
    record = r.json()
    assert held_client.delete(f"/train/{record['version']}").json()["status"] == "cancelled"
    net = models.build_sequential(record["layers"])
    assert sum(p.numel() for p in net.parameters()) <= models.LIMITS.max_parameters
    assert net.eval()(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
