"""Shared dataset fixtures: tiny raw torchvision files for all five datasets, seeded once per session."""

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.storage.s3 import store_from_settings
from tests.support.rawdata import K_TEST, PER_CLASS_TEST, PER_CLASS_TRAIN, seed_raw, write_raw
from tests.support.s3 import make_settings


@pytest.fixture(scope="session")
def raw_root(tmp_path_factory):
    """A torchvision root with raw files of all five datasets (see tests.support.rawdata.make_split)."""
    root = tmp_path_factory.mktemp("raw")
    write_raw(root, per_class_train=PER_CLASS_TRAIN, per_class_test=PER_CLASS_TEST)
    return root


@pytest.fixture(scope="session")
def seeded_settings(s3, raw_root, tmp_path_factory):
    """Settings whose own dataset bucket holds all five datasets, seeded from `raw_root` with K_TEST."""
    settings = make_settings(s3, tmp_path_factory.mktemp("seeded-data"))
    seed_raw(store_from_settings(settings), settings, raw_root, cka_per_class=K_TEST)
    return settings


@pytest.fixture(scope="module")
def seeded_client(seeded_settings):
    """A client of an app on `seeded_settings` (its buckets included), shared by one test module.

    Module-scoped so that module-scoped fixtures (a model trained once per module) can use it.
    """
    with TestClient(create_app(seeded_settings)) as client:
        yield client
