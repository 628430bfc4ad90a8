"""Load over real HTTP: 50 concurrent downloads plus listing while a job trains; everything completes intact."""

import hashlib
import secrets
from concurrent.futures import ThreadPoolExecutor

from tests.support.liveserver import LiveServer
from tests.support.waiting import train, wait_for


def test_fifty_downloads_and_listing_while_training(seeded_settings):
    settings = seeded_settings.model_copy(update={"minio_model_bucket": f"models-load-{secrets.token_hex(3)}",
                                                  "max_concurrent_jobs": 2})
    with LiveServer(settings) as server, server.client() as client:
        model = train(client, dataset="cifar10", version="load-model")["version"]
        assert wait_for(client, model)["status"] == "succeeded"
        expected = client.get(f"/models/{model}").content
        busy = train(client, dataset="mnist", layers=[{"type": "Flatten"}], epochs=100, batch_size=1)["version"]
        wait_for(client, busy, {"running"})

        def download(_):
            with server.client() as c:
                return hashlib.sha256(c.get(f"/models/{model}").content).hexdigest()

        def listing(_):
            with server.client() as c:
                return [c.get("/models").status_code, c.get("/readyz").status_code]

        with ThreadPoolExecutor(max_workers=60) as pool:
            downloads = pool.map(download, range(50))
            listings = pool.map(listing, range(10))
            digests, statuses = list(downloads), [s for pair in listings for s in pair]
        assert digests == [hashlib.sha256(expected).hexdigest()] * 50
        assert statuses == [200] * 20
        assert client.get(f"/train/{busy}").json()["status"] == "running"
        client.delete(f"/train/{busy}")
