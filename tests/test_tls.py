"""TLS to the S3 server: a self-signed CA trusted through MINIO_SECURE and MINIO_CA_CERT."""

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.storage.s3 import Store
from tests.support.s3 import ACCESS_KEY, SECRET_KEY, buckets_exist, make_settings
from tests.support.tlscerts import TlsS3, write_ca_and_server_cert


@pytest.fixture(scope="module")
def tls_s3(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls")
    ca, cert, key = write_ca_and_server_cert(directory)
    server = TlsS3(data_dir=directory / "s3", access_key=ACCESS_KEY, secret_key=SECRET_KEY, tls=(cert, key))
    server.start(ready_check=lambda: buckets_exist(Store(endpoint=server.endpoint, access_key=ACCESS_KEY,
                                                         secret_key=SECRET_KEY, secure=True, ca_cert=str(ca)), "probe"))
    yield server, ca
    server.stop()


def test_service_talks_tls_when_it_trusts_the_ca(tls_s3, tmp_path):
    server, ca = tls_s3
    settings = make_settings(server, tmp_path, MINIO_SECURE="true", MINIO_CA_CERT=str(ca))
    with TestClient(create_app(settings)) as client:
        r = client.get("/readyz")
        assert r.status_code == 200, r.text
    store = Store(endpoint=server.endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY, secure=True, ca_cert=str(ca))
    assert buckets_exist(store, settings.minio_model_bucket, settings.minio_dataset_bucket)


def test_untrusted_certificate_is_a_clear_503(tls_s3, tmp_path, caplog):
    server, _ = tls_s3
    with TestClient(create_app(make_settings(server, tmp_path, MINIO_SECURE="true"))) as client:
        r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["dependency"] == "storage"  # open to anyone: no address
    logged = [rec.getMessage() for rec in caplog.records if rec.name == "app.api.health"]
    assert any("MINIO_CA_CERT" in m and server.endpoint in m for m in logged), logged  # the operator's log says
