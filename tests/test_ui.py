"""The dashboard through the app (TestClient): every page for an empty and a full catalog, sign-in, CSRF."""

import io
import re
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.ui.session import COOKIE, SessionSigner
from tests.support.registry import store_model
from tests.support.s3 import make_settings
from tests.support.waiting import TERMINAL, wait_for, wait_until

TOKEN = "ui-test-token-" + "x" * 20
API = {"Authorization": f"Bearer {TOKEN}"}
SMALL = [{"type": "Conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1}, {"type": "ReLU"},
         {"type": "MaxPool2d", "kernel_size": 2}, {"type": "Flatten"}]
PAGES = ["/ui", "/ui?status=succeeded&dataset=mnist&label=owner:alice", "/ui/jobs/new", "/ui/jobs/new?template=mlp",
         "/ui/models", "/ui/models?sort=test_accuracy&dataset=mnist&label=owner:alice", "/ui/datasets", "/ui/sweeps"]
# Two learning rates × two seeds under ASHA (η=2, a rung at epoch 1): the hopeless rate's trials arrive after the
# good one's and are stopped there, and both configurations still have two succeeded replicates.
SWEEP_BASE = {"dataset": "mnist", "layers": SMALL, "epochs": 2, "batch_size": 16, "validation_split": 0.5,
              "snapshot_every": 0}
SWEEP = {"name": "ui-sweep", "base": SWEEP_BASE, "space": {"learning_rate": [0.01, 0.00001]}, "seeds": [0, 1],
         "early_stop": {"type": "asha", "min_epochs": 1, "reduction_factor": 2}}


@pytest.fixture(scope="module")
def lab(s3, seeded_settings, tmp_path_factory):
    """An app with SCV_API_TOKEN on the seeded datasets: `ui-a` trained (labels, alias `best`), `ui-b` stored."""
    settings = make_settings(s3, tmp_path_factory.mktemp("ui-data"), SCV_API_TOKEN=TOKEN,
                             MINIO_DATASET_BUCKET=seeded_settings.minio_dataset_bucket)
    with TestClient(create_app(settings), headers=API) as api:
        response = api.post("/train", json={"dataset": "mnist", "version": "ui-a", "layers": SMALL, "epochs": 2,
                                            "batch_size": 16, "labels": {"owner": "alice"}})
        assert response.status_code == 202, response.text
        assert wait_for(api, "ui-a")["status"] == "succeeded"
        store_model(api, "ui-b", dataset="mnist", layers=SMALL, seed=1)
        assert api.put("/aliases/best", json={"version": "ui-a"}).status_code == 200
        yield api


@pytest.fixture(scope="module")
def swept(lab) -> dict:
    """The lab's SWEEP, ended."""
    response = lab.post("/sweeps", json=SWEEP)
    assert response.status_code == 201, response.text
    sweep_id = response.json()["id"]
    return wait_until(lambda: (r := lab.get(f"/sweeps/{sweep_id}").json())["status"] != "running" and r,
                      timeout=300, what=f"the end of {sweep_id}")


def signed_in(lab) -> TestClient:
    """A browser of the lab's app (no bearer header) that signed in with the token."""
    browser = TestClient(lab.app)
    response = browser.post("/ui/login", data={"token": TOKEN, "next": "/ui/models"}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/ui/models"
    return browser


def csrf_of(page) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page.text)[1]


def ok_html(client, url: str, **kwargs):
    response = client.get(url, **kwargs)
    assert response.status_code == 200, (url, response.text[:500])
    assert response.headers["content-type"].startswith("text/html")
    return response


def test_every_page_renders_for_an_empty_catalog(client):
    for url in PAGES:
        page = ok_html(client, url)
        assert "<main" in page.text and "Traceback" not in page.text
    assert "No jobs" in client.get("/ui").text and "No models" in client.get("/ui/models").text
    assert "No sweeps" in client.get("/ui/sweeps").text
    assert client.get("/ui/sweeps/nope").status_code == 404 and "nope" in client.get("/ui/sweeps/nope").text
    assert "Not seeded yet" in client.get("/ui/datasets").text
    missing = client.get("/ui/models/nope")
    assert missing.status_code == 404 and "nope" in missing.text
    assert missing.headers["content-type"].startswith("text/html")
    assert client.get("/ui/jobs/nope").status_code == 404
    assert client.get("/ui/compare?v=a").status_code == 422


def test_every_page_renders_for_a_full_catalog(lab):
    browser = signed_in(lab)
    for url in [*PAGES, "/ui/jobs/ui-a", "/ui/models/ui-a", "/ui/models/@best", "/ui/compare?v=ui-a&v=ui-b"]:
        ok_html(browser, url)
    jobs = browser.get("/ui").text
    assert "ui-a" in jobs and "✓" in jobs and "succeeded" in jobs and "<progress" in jobs
    models = browser.get("/ui/models?sort=test_accuracy").text
    assert "ui-a" in models and "ui-b" in models and "@best" in models and "owner=alice" in models
    assert "ui-b" not in browser.get("/ui/models?label=owner:alice").text
    model = browser.get("/ui/models/ui-a").text
    for expected in ("Output shape", "4×14×14", "/ui/models/ui-a/download", "@best", "history-data"):
        assert expected in model
    compare = browser.get("/ui/compare?v=ui-a&v=ui-b").text
    assert "Request differences" in compare and "seed" in compare and "against=ui-b" in compare
    assert 'src="/ui/datasets/mnist/cka.png"' in browser.get("/ui/datasets").text
    assert browser.get("/ui/datasets/mnist/cka.png").headers["content-type"] == "image/png"


def test_the_analysis_partials_render(lab):
    browser = signed_in(lab)
    htmx = {"HX-Request": "true"}
    cka = ok_html(browser, "/ui/models/ui-a/cka", headers=htmx).text
    assert "heatmap" in cka and "background:rgb(" in cka and "CKA values" in cka and "<html" not in cka
    assert "ui-b" in ok_html(browser, "/ui/models/ui-a/cka?against=ui-b", headers=htmx).text
    maps = ok_html(browser, "/ui/models/ui-a/activations?layer=0&sample=3", headers=htmx).text
    assert maps.count('class="channel"') == 4 and "data:image/png;base64," in maps
    assert "top-images?layer=0&amp;channel=3" in maps
    top = ok_html(browser, "/ui/models/ui-a/top-images?layer=0&channel=1", headers=htmx).text
    assert top.count("<li>") == 9
    bad = browser.get("/ui/models/ui-a/activations?layer=99&sample=0", headers=htmx)
    assert bad.status_code == 422 and 'role="alert"' in bad.text and "<html" not in bad.text


def test_the_download_is_the_model_file(lab):
    browser = signed_in(lab)
    response = browser.get("/ui/models/@best/download")
    assert response.status_code == 200 and response.content == lab.get("/models/ui-a").content
    assert 'filename="ui-a.safetensors"' in response.headers["content-disposition"]


def test_a_drawn_image_gets_class_probabilities(lab):
    browser = signed_in(lab)
    csrf = csrf_of(browser.get("/ui/models/ui-a"))
    png = io.BytesIO()
    Image.new("L", (28, 28), 0).save(png, format="PNG")
    response = browser.post("/ui/models/ui-a/predict", files={"file": ("d.png", png.getvalue(), "image/png")},
                            headers={"X-CSRF-Token": csrf})
    assert response.status_code == 200, response.text
    assert 'id="predicted-class"' in response.text and response.text.count("<meter") == 10
    wrong = Image.new("L", (5, 5), 0)
    png = io.BytesIO()
    wrong.save(png, format="PNG")
    response = browser.post("/ui/models/ui-a/predict", files={"file": ("d.png", png.getvalue(), "image/png")},
                            headers={"X-CSRF-Token": csrf})
    assert response.status_code == 422 and "28×28" in response.text


def test_the_job_event_stream_follows_the_session(lab):
    browser = signed_in(lab)
    with browser.stream("GET", "/ui/jobs/ui-a/events") as stream:
        assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
        body = "".join(stream.iter_text())
    assert "event: job" in body and '"status":"succeeded"' in body.replace(" ", "")
    assert TestClient(lab.app).get("/ui/jobs/ui-a/events", follow_redirects=False).status_code == 303


def test_pages_need_the_session_when_a_token_is_set(lab):
    browser = TestClient(lab.app)
    for url in ["/ui", "/ui/models/ui-a", "/ui/datasets", "/ui/models/ui-a/download"]:
        response = browser.get(url, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"].startswith("/ui/login?next=")
    htmx = browser.get("/ui/models/ui-a/cka", headers={"HX-Request": "true", "HX-Current-URL": "http://t/ui/models/ui-a"})
    assert htmx.status_code == 401 and htmx.headers["hx-redirect"] == "/ui/login?next=%2Fui%2Fmodels%2Fui-a"
    login = ok_html(browser, "/ui/login?next=/ui/datasets")
    assert 'type="password"' in login.text and 'value="/ui/datasets"' in login.text
    assert browser.get("/ui/static/dashboard.css").status_code == 200  # static files need no session
    wrong = browser.post("/ui/login", data={"token": "nope", "next": "/ui"}, follow_redirects=False)
    assert wrong.status_code == 401 and COOKIE not in wrong.cookies
    away = browser.post("/ui/login", data={"token": TOKEN, "next": "https://evil.example/ui"}, follow_redirects=False)
    assert away.headers["location"] == "/ui"
    cookie = away.headers["set-cookie"]
    assert all(part in cookie for part in ("HttpOnly", "SameSite=strict", "Path=/ui", "Max-Age="))
    ok_html(browser, "/ui/models/ui-a")
    # The cookie is the UI's: the API still wants the bearer token; a browser's `/` goes to the dashboard.
    assert browser.get("/models").status_code == 401 and browser.get("/").status_code == 401
    assert browser.get("/", headers={"Accept": "text/html"}, follow_redirects=False).headers["location"] == "/ui"
    assert lab.get("/").status_code == 404
    copied = browser.cookies[COOKIE]
    logout = browser.post("/ui/logout", data={"csrf_token": csrf_of(browser.get("/ui"))}, follow_redirects=False)
    assert logout.status_code == 303 and logout.headers["location"] == "/ui/login"
    assert browser.get("/ui", follow_redirects=False).status_code == 303
    # Sign-out ends the session itself: a copy of its cookie (another tab, a stolen one) is refused too.
    stale = TestClient(lab.app).get("/ui", headers={"Cookie": f"{COOKIE}={copied}"}, follow_redirects=False)
    assert stale.status_code == 303 and stale.headers["location"].startswith("/ui/login")
    assert ok_html(signed_in(lab), "/ui/models/ui-a").status_code == 200  # a new sign-in works


def test_a_forged_or_expired_session_is_refused(lab):
    browser = signed_in(lab)
    good = browser.cookies[COOKIE]
    payload, mac = good.split(".", 1)  # the signed JSON, then its timestamp and signature
    for forged in (f"{payload}.{mac[:-2]}AA", f"{payload[:-2]}AA.{mac}", "garbage", SessionSigner("other").issue()[1]):
        response = TestClient(lab.app).get("/ui", headers={"Cookie": f"{COOKIE}={forged}"}, follow_redirects=False)
        assert response.status_code == 303
    signer = SessionSigner(TOKEN)
    assert signer.read(good) is not None and signer.read(good, now=time.time() + 13 * 3600) is None


def test_writes_without_the_csrf_token_are_refused(lab):
    browser = signed_in(lab)
    csrf = csrf_of(browser.get("/ui/models/ui-b"))
    writes = [("/ui/models/ui-b/delete", {"confirm": "ui-b"}), ("/ui/models/ui-b/aliases", {"alias": "x"}),
              ("/ui/aliases/best/delete", {}), ("/ui/jobs/ui-a/cancel", {}), ("/ui/logout", {}),
              ("/ui/jobs/new", {"dataset": "mnist"}), ("/ui/models/ui-b/predict", {})]
    for url, data in writes:
        for token in (None, "wrong"):
            form = data if token is None else {**data, "csrf_token": token}
            response = browser.post(url, data=form, follow_redirects=False)
            assert response.status_code == 403 and "CSRF" in response.text, url
    assert lab.get("/models/ui-b/metadata").status_code == 200 and lab.get("/aliases/best").status_code == 200
    # With the token the same forms work: an alias set and removed, the model deleted after confirmation.
    assert browser.post("/ui/models/ui-b/aliases", data={"alias": "spare", "csrf_token": csrf},
                        follow_redirects=False).status_code == 303
    assert lab.get("/aliases/spare").json()["version"] == "ui-b"
    refused = browser.post("/ui/models/ui-b/delete", data={"confirm": "ui-b", "csrf_token": csrf})
    assert refused.status_code == 409 and "spare" in refused.text
    assert browser.post("/ui/aliases/spare/delete", data={"csrf_token": csrf, "next": "/ui/models/ui-b"},
                        follow_redirects=False).headers["location"] == "/ui/models/ui-b"
    assert browser.post("/ui/models/ui-b/delete", data={"confirm": "typo", "csrf_token": csrf}).status_code == 422
    assert browser.post("/ui/models/ui-b/delete", data={"confirm": "ui-b", "csrf_token": csrf},
                        follow_redirects=False).status_code == 303
    assert lab.get("/models/ui-b/metadata").status_code == 404
    store_model(lab, "ui-b", dataset="mnist", layers=SMALL, seed=1)  # back for the other tests


def test_a_new_job_form_shows_a_422_at_the_layer_it_names(lab):
    browser = signed_in(lab)
    csrf = csrf_of(browser.get("/ui/jobs/new"))
    form = {"csrf_token": csrf, "dataset": "mnist", "epochs": "1", "batch_size": "16", "optimizer": "adam",
            "layer_type": ["Conv2d", "MaxPool2d", "Flatten"],
            "layer_args": ["out_channels=4, kernel_size=3", "kernel_size=64", ""], "labels": "owner=bob"}
    response = browser.post("/ui/jobs/new", data=form)
    assert response.status_code == 422
    assert re.search(r'id="layer-1-error"[^>]*>layers\[1\] \(MaxPool2d\)', response.text)
    assert 'aria-describedby="layer-1-error"' in response.text and 'value="kernel_size=64"' in response.text
    bad_args = browser.post("/ui/jobs/new", data={**form, "layer_args": ["out_channels=4 kernel_size", "", ""]})
    good = {**form, "layer_args": ["out_channels=4, kernel_size=3", "kernel_size=2", ""]}
    assert bad_args.status_code == 422 and 'id="layer-0-error"' in bad_args.text
    bad_epochs = browser.post("/ui/jobs/new", data={**good, "epochs": "0"})
    assert bad_epochs.status_code == 422 and 'id="epochs-error"' in bad_epochs.text
    taken = browser.post("/ui/jobs/new", data={**good, "version": "ui-a"})
    assert taken.status_code == 422 and 'id="version-error"' in taken.text
    started = browser.post("/ui/jobs/new", data={**good, "version": "ui-new"},
                           follow_redirects=False)
    assert started.status_code == 303 and started.headers["location"] == "/ui/jobs/ui-new"
    record = lab.get("/train/ui-new").json()
    assert record["labels"] == {"owner": "bob"} and record["layers"][0]["out_channels"] == 4
    wait_for(lab, "ui-new")


def test_the_new_job_form_offers_the_recipe_and_a_strong_one_per_dataset(lab):
    browser = signed_in(lab)
    strong = browser.get("/ui/jobs/new", params={"dataset": "fashion_mnist", "recipe": "strong"}).text
    assert '<option selected>onecycle</option>' in strong and 'id="flip" name="flip" checked' in strong
    assert re.search(r'id="shift" name="shift" inputmode="decimal" value="2"', strong)
    digits = browser.get("/ui/jobs/new", params={"dataset": "mnist", "recipe": "strong"}).text
    assert 'id="flip" name="flip" checked' not in digits  # a mirrored digit is not its class
    csrf = csrf_of(browser.get("/ui/jobs/new"))
    form = {"csrf_token": csrf, "dataset": "mnist", "epochs": "2", "batch_size": "16", "optimizer": "adam",
            "layer_type": ["Flatten"], "layer_args": [""], "shift": "2", "flip": "on", "cutout": "0",
            "schedule": "onecycle", "label_smoothing": "0.1", "validation_split": "0.2", "stop_metric": "val_loss",
            "patience": "3", "restore_best": "on", "snapshot_every": "2", "version": "ui-recipe"}
    bad = browser.post("/ui/jobs/new", data={**form, "shift": "9"})
    assert bad.status_code == 422 and 'id="augment-error"' in bad.text
    started = browser.post("/ui/jobs/new", data=form, follow_redirects=False)
    assert started.status_code == 303, started.text
    request = wait_for(lab, "ui-recipe")["request"]
    assert request["augment"] == {"shift": 2, "flip": True, "cutout": 0} and request["schedule"] == "onecycle"
    assert request["early_stopping"] == {"metric": "val_loss", "patience": 3, "restore_best": True}
    assert (request["label_smoothing"], request["validation_split"], request["snapshot_every"]) == (0.1, 0.2, 2)


def test_the_jobs_table_stops_polling_when_nothing_can_change(lab):
    browser = signed_in(lab)
    wait_for(lab, "ui-new") if lab.get("/train/ui-new").status_code == 200 else None
    table = browser.get("/ui", headers={"HX-Request": "true"})
    assert table.status_code == 286 and "<table" in table.text and "<html" not in table.text
    assert "hx-trigger" not in browser.get("/ui").text


def test_an_open_dashboard_still_wants_the_csrf_token(client):
    page = ok_html(client, "/ui/jobs/new")
    assert "Sign out" not in page.text and COOKIE in client.cookies
    assert client.post("/ui/jobs/new", data={"dataset": "mnist"}).status_code == 403
    response = client.post("/ui/jobs/new", data={"dataset": "mnist", "csrf_token": csrf_of(page)})
    assert response.status_code == 422 and "not seeded" in response.text
    assert client.get("/ui/login", follow_redirects=False).headers["location"] == "/ui"


def test_the_dashboard_is_not_in_the_api_schema(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert not [path for path in paths if path.startswith("/ui") or path == "/"]


def test_the_form_queues_the_job_post_train_queues(settings, seeded_settings):
    """Both skins submit through the job service: a precision left out is SCV_PRECISION, a subset larger than the
    split trains on all of it, and the form's job asks for what the same JSON asks for."""
    quiet = settings.model_copy(update={"minio_dataset_bucket": seeded_settings.minio_dataset_bucket,
                                        "precision": "fp32", "max_concurrent_jobs": 0})  # jobs stay queued
    with TestClient(create_app(quiet)) as client:
        api = client.post("/train", json={"dataset": "mnist", "version": "via-api", "train_subset": 10**6,
                                          "layers": SMALL, "labels": {"owner": "carol"}})
        assert api.status_code == 202 and api.headers["location"] == "/train/via-api"
        form = {"csrf_token": csrf_of(client.get("/ui/jobs/new")), "dataset": "mnist", "version": "via-form",
                "train_subset": str(10**6), "labels": "owner=carol", "layer_type": [layer["type"] for layer in SMALL],
                "layer_args": ["out_channels=4, kernel_size=3, padding=1", "", "kernel_size=2", ""]}
        assert client.post("/ui/jobs/new", data=form, follow_redirects=False).status_code == 303
        via_api, via_form = api.json(), client.get("/train/via-form").json()
    assert via_api["request"]["precision"] == "fp32" and via_api["request"]["train_subset"] is None
    assert {**via_form["request"], "version": "via-api"} == via_api["request"]
    assert via_form["layers"] == via_api["layers"] and via_form["labels"] == via_api["labels"] == {"owner": "carol"}


def test_the_sweep_pages_show_trials_rungs_and_the_seed_floor(lab, swept):
    browser = signed_in(lab)
    sweep_id, trials = swept["id"], swept["trials"]
    assert swept["status"] == "succeeded" and "Sweeps" in ok_html(browser, "/ui").text  # in the nav
    listing = ok_html(browser, "/ui/sweeps").text
    assert sweep_id in listing and "ui-sweep" in listing and "4 / 4" in listing and "✓" in listing
    page = ok_html(browser, f"/ui/sweeps/{sweep_id}").text
    assert all(f'href="/ui/models/{t["version"]}"' in page for t in trials)
    assert 'id="scatter-learning_rate"' in page and 'id="curves-chart"' in page and "sweep-data" in page
    assert 'hx-trigger="every' not in page and "Cancel this sweep" not in page  # ended: nothing polls
    stopped = [t for t in trials if t["stopped_early"]]
    assert {3, 4} <= {t["trial"] for t in stopped}, trials  # the hopeless rate's, at least
    assert f"at epoch {stopped[0]['stopped_early']['epoch']}" in page
    decisions = re.search(r'id="decisions-table".*?</table>', page, re.S)[0]
    assert decisions.count("<tr>") == len(swept["decisions"]) + 1 and "stop" in decisions
    assert re.search(r"<td>(2, )?3, 4</td></tr>", page)  # the rungs table: whom rung 0 stopped
    # the live part, as htmx polls it: 286 once the sweep has ended, its ASHA tables swapped out of band
    htmx = {"HX-Request": "true"}
    live = browser.get(f"/ui/sweeps/{sweep_id}", headers=htmx)
    assert live.status_code == 286 and "<html" not in live.text and 'hx-swap-oob="true"' in live.text
    similarity = ok_html(browser, f"/ui/sweeps/{sweep_id}/similarity", headers=htmx).text
    assert similarity.count('class="data similarity"') == 2 and similarity.count("seeds 0, 1") == 2
    # two trials compared: the seed floor of the first one's configuration goes beside their CKA
    a, b = trials[0]["version"], trials[2]["version"]
    compare = ok_html(browser, f"/ui/compare?v={a}&v={b}").text
    assert f"/ui/sweeps/{sweep_id}/floor?v={a}&amp;v={b}" in compare
    floor = ok_html(browser, f"/ui/sweeps/{sweep_id}/floor?v={a}&v={b}", headers=htmx).text
    assert 'id="seed-floor"' in floor and "learning_rate=0.01" in floor and "seeds 0, 1" in floor
    assert "seed noise" in floor and floor.count("<tr>") == 1 + len(lab.get(f"/models/{a}/cka").json()["layers"])
    assert "/floor?" not in ok_html(browser, "/ui/compare?v=ui-a&v=ui-b").text  # not trials of one sweep
    missing = browser.get("/ui/sweeps/nope")
    assert missing.status_code == 404 and missing.headers["content-type"].startswith("text/html")


def test_the_sweep_page_polls_until_the_sweep_is_cancelled(lab, swept):
    browser = signed_in(lab)
    record = lab.post("/sweeps", json={"base": {**SWEEP_BASE, "epochs": 100, "batch_size": 1},
                                       "space": {"learning_rate": [0.01, 0.001]}}).json()
    page = ok_html(browser, f"/ui/sweeps/{record['id']}")
    assert 'hx-trigger="every' in page.text and "Cancel this sweep" in page.text
    live = browser.get(f"/ui/sweeps/{record['id']}", headers={"HX-Request": "true"})
    assert live.status_code == 200 and "Cancel this sweep" in live.text
    url = f"/ui/sweeps/{record['id']}/cancel"
    assert browser.post(url, data={}, follow_redirects=False).status_code == 403  # no CSRF token
    done = browser.post(url, data={"csrf_token": csrf_of(page)}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == f"/ui/sweeps/{record['id']}"
    for trial in record["trials"]:
        assert wait_for(lab, trial["version"], statuses=TERMINAL)["status"] == "cancelled"
    ended = browser.get(f"/ui/sweeps/{record['id']}", headers={"HX-Request": "true"})
    assert ended.status_code == 286 and "Cancel this sweep" not in ended.text and "cancelled" in ended.text
    assert 'hx-trigger="every' not in ok_html(browser, f"/ui/sweeps/{record['id']}").text


def test_the_lists_page_with_first_and_next_links(lab, monkeypatch):
    from app.ui import jobs, models

    browser = signed_in(lab)
    for module, url in ((models, "/ui/models"), (jobs, "/ui?dataset=mnist")):  # one item a page
        monkeypatch.setattr(module, "PAGE_SIZE", 1)
        first = ok_html(browser, url).text
        assert "First page" not in first
        following = re.search(r'<a href="([^"]+)" rel="next">Next page</a>', first)
        assert following, url
        second = ok_html(browser, following[1].replace("&amp;", "&")).text
        assert "First page" in second
        rows = [set(re.findall(r'href="/ui/(?:models|jobs)/([\w.-]+)"', page)) - {"new"} for page in (first, second)]
        assert len(rows[0]) == len(rows[1]) == 1 and rows[0] != rows[1], rows  # the second page goes on from the first
