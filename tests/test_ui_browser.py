"""The dashboard in a real browser: Debian's Chromium (Selenium) against a real uvicorn server on seeded tiny data.

Each test ends by checking that the browser logged no console error and fetched nothing from another origin.
Screenshots go to a temporary folder; with SCV_UPDATE_SCREENSHOTS=1 they replace the README's ones in docs/.
"""

import io
import json
import os
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.support.liveserver import LiveServer
from tests.support.registry import store_model
from tests.support.s3 import make_settings
from tests.support.waiting import wait_for

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--window-size=1200,900"]
DOCS = Path(__file__).resolve().parents[1] / "docs"
TOKEN = "browser-test-token-" + "y" * 16
SMALL = [{"type": "Conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1}, {"type": "ReLU"},
         {"type": "MaxPool2d", "kernel_size": 2}, {"type": "Flatten"}]
WAIT_S = 120


class ApiClient(httpx.Client):
    """httpx with the bearer token; `.app` lets tests.support.registry.store_model reach the app's state."""

    def __init__(self, server: LiveServer, app):
        super().__init__(base_url=server.url, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"})
        self.app = app


@pytest.fixture(scope="module")
def server(s3, seeded_settings, tmp_path_factory):
    """A uvicorn server with SCV_API_TOKEN on the seeded datasets: `br-a` and `br-b` trained 3 epochs each (other
    seed and learning rate), and `br-untrained` stored."""
    settings = make_settings(s3, tmp_path_factory.mktemp("browser-data"), SCV_API_TOKEN=TOKEN,
                             MINIO_DATASET_BUCKET=seeded_settings.minio_dataset_bucket)
    with LiveServer(settings) as live, ApiClient(live, live.server.config.app) as api:
        for version, seed, rate in (("br-a", 0, 0.001), ("br-b", 1, 0.003)):
            response = api.post("/train", json={"dataset": "mnist", "version": version, "layers": SMALL, "epochs": 3,
                                                "batch_size": 16, "seed": seed, "learning_rate": rate,
                                                "labels": {"owner": "alice"}})
            assert response.status_code == 202, response.text
        for version in ("br-a", "br-b"):
            assert wait_for(api, version, timeout=WAIT_S)["status"] == "succeeded"
        store_model(api, "br-untrained", dataset="mnist", layers=SMALL, seed=1)
        assert api.put("/aliases/production", json={"version": "br-a"}).status_code == 200
        live.api = api
        yield live


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium with its console and network logs on."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        reason = "Chromium is not installed here: apt-get install -y chromium chromium-driver (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture
def page(browser, server):
    """The signed-in browser; after the test, its console must be clean and every request same-origin."""
    yield browser
    errors = [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors
    requested = {message["params"]["request"]["url"] for entry in browser.get_log("performance")
                 if (message := json.loads(entry["message"])["message"])["method"] == "Network.requestWillBeSent"}
    assert requested, "the performance log recorded no request"
    elsewhere = [url for url in requested if not url.startswith((server.url + "/", "data:", "blob:"))]
    assert not elsewhere, elsewhere
    timing = browser.execute_script("return performance.getEntries().map(e => e.name)")
    assert all(name.startswith((server.url + "/", "data:", "blob:")) or "://" not in name for name in timing), timing


def wait(driver, condition, timeout: float = WAIT_S):
    return WebDriverWait(driver, timeout, poll_frequency=0.1,
                         ignored_exceptions=[StaleElementReferenceException]).until(lambda d: condition(d))


def screenshot(driver, name: str, tmp_path: Path) -> None:
    """A small PNG of the viewport (256 colours); into docs/ only with SCV_UPDATE_SCREENSHOTS=1."""
    folder = DOCS if os.environ.get("SCV_UPDATE_SCREENSHOTS") == "1" else tmp_path
    folder.mkdir(exist_ok=True)
    image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB").quantize(256)
    image.save(folder / f"dashboard-{name}.png", optimize=True)


def text(driver, css: str) -> str:
    """The text of an element found now (read in the page: htmx may swap it between find and read)."""
    return driver.execute_script("return document.querySelector(arguments[0])?.innerText ?? ''", css)


def progress(driver) -> float:
    return driver.execute_script("return document.querySelector('#summary progress').value")


def test_sign_in(browser, server, page, tmp_path):
    page.get(server.url + "/")  # a browser asking for / lands on the dashboard, which asks for the token
    wait(page, lambda d: "/ui/login" in d.current_url)
    screenshot(page, "login", tmp_path)
    page.find_element(By.ID, "token").send_keys(TOKEN)
    page.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait(page, lambda d: d.current_url == server.url + "/ui")
    assert "br-a" in text(page, "#jobs-table") and "succeeded" in text(page, "#jobs-table")
    (cookie,) = page.get_cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"


def test_a_running_job_page_updates_and_draws_its_curves(server, page, tmp_path):
    response = server.api.post("/train", json={"dataset": "mnist", "version": "br-live", "layers": SMALL,
                                               "epochs": 100, "batch_size": 1})
    assert response.status_code == 202
    page.get(server.url + "/ui")
    wait(page, lambda d: "br-live" in text(d, "#jobs-table"))
    page.find_element(By.LINK_TEXT, "br-live").click()
    wait(page, lambda d: "running" in text(d, "#summary .status"))
    # Several progress reports arrive over SSE: the step table grows and the loss line is drawn in its colour.
    wait(page, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#step-table tr")) >= 3)
    first = progress(page)
    wait(page, lambda d: progress(d) > first)
    assert loss_pixels(page, "#step-chart") > 20
    page.execute_script("window.scrollTo(0, document.getElementById('summary').querySelector('table').offsetTop)")
    screenshot(page, "job", tmp_path)
    # The summary is swapped on every event: find and click in one go, again if it went stale in between.
    wait(page, lambda d: d.find_element(By.XPATH, "//button[text()='Cancel this job']").click() or True)
    wait(page, lambda d: "cancelled" in text(d, "#summary .status"))
    assert server.api.get("/train/br-live").json()["status"] == "cancelled"


def loss_pixels(driver, chart: str) -> int:
    """Pixels of the chart's canvas in the loss series' colour (#0072B2)."""
    return driver.execute_script("""
        const canvas = document.querySelector(arguments[0] + ' canvas');
        const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        let n = 0;
        for (let i = 0; i < data.length; i += 4)
          if (Math.abs(data[i]) < 24 && Math.abs(data[i + 1] - 114) < 24 && Math.abs(data[i + 2] - 178) < 24) n++;
        return n;""", chart)


def test_the_model_page_shows_cka_activations_and_top_images(server, page, tmp_path):
    page.get(server.url + "/ui/models/br-a")
    assert loss_pixels(page, "#history-chart") > 20
    screenshot(page, "model", tmp_path)
    layers = len(page.find_elements(By.CSS_SELECTOR, "#layer option"))
    wait(page, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#cka table.heatmap td[title]")) == layers ** 2)
    wait(page, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#activations button.channel")) == 4)
    page.find_element(By.CSS_SELECTOR, "#layer option[value='1']").click()  # ReLU: a new set of maps
    wait(page, lambda d: "1:ReLU" in text(d, "#activations figcaption"))
    channel = page.find_elements(By.CSS_SELECTOR, "#activations button.channel")[2]
    channel.click()
    wait(page, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#top-images li img")) == 9)
    assert "channel 2 of layer 1:ReLU" in text(page, "#top-images figcaption")
    page.execute_script("document.getElementById('cka-h').scrollIntoView()")
    screenshot(page, "analysis", tmp_path)


def test_the_dynamics_heatmap_and_the_snapshot_slider(server, page, tmp_path):
    page.get(server.url + "/ui/models/br-a")
    layers = len(page.find_elements(By.CSS_SELECTOR, "#layer option"))
    cells = "#dynamics table.heatmap td[title]"
    wait(page, lambda d: len(d.find_elements(By.CSS_SELECTOR, cells)) == layers * 4)  # epochs 0-3
    first = page.find_elements(By.CSS_SELECTOR, cells)[0].get_attribute("title")
    assert first.startswith("0:Conv2d at epoch 0: ")
    assert float(page.find_elements(By.CSS_SELECTOR, cells)[3].get_attribute("title").rsplit(": ", 1)[1]) == 1.0

    def cka_titles(d) -> list[str]:
        found = d.find_elements(By.CSS_SELECTOR, "#cka table.heatmap td[title]")
        return [cell.get_attribute("title") for cell in found]

    wait(page, lambda d: len(cka_titles(d)) == layers ** 2)
    final = cka_titles(page)
    slider = page.find_element(By.ID, "snapshot")
    page.execute_script("arguments[0].scrollIntoView({block: 'center'})", slider)
    slider.click()  # focus, then the keyboard: Home moves it to the first snapshot (epoch 0)
    slider.send_keys(Keys.HOME)
    wait(page, lambda d: text(d, "#snapshot-label") == "epoch 0")
    wait(page, lambda d: "at snapshot epoch 0" in text(d, "#cka figcaption"))
    assert len(cka_titles(page)) == layers ** 2 and cka_titles(page) != final
    wait(page, lambda d: "epoch=0" in d.find_element(By.CSS_SELECTOR, "#activations button.channel")
         .get_attribute("hx-get"))
    screenshot(page, "dynamics", tmp_path)


def test_drawing_a_digit_returns_a_prediction(server, page, tmp_path):
    page.get(server.url + "/ui/models/br-a")
    wait(page, lambda d: d.execute_script("return document.readyState") == "complete")  # the pad's handlers are set
    pad = page.find_element(By.ID, "pad")
    page.execute_script("arguments[0].scrollIntoView({block: 'center'})", pad)
    ActionChains(page).move_to_element_with_offset(pad, 10, -90).click_and_hold().move_by_offset(0, 60) \
        .move_by_offset(0, 60).move_by_offset(-5, 50).release().perform()
    assert page.execute_script("""
        const d = document.getElementById('pad').getContext('2d').getImageData(0, 0, 280, 280).data;
        let white = 0; for (let i = 0; i < d.length; i += 4) if (d[i] > 200) white++; return white;""") > 500
    page.find_element(By.ID, "predict-button").click()
    wait(page, lambda d: d.find_elements(By.ID, "predicted-class"))
    classes = [str(i) for i in range(10)]
    assert text(page, "#predicted-class") in classes
    assert len(page.find_elements(By.CSS_SELECTOR, "#prediction meter")) == 10
    screenshot(page, "predict", tmp_path)


def test_the_compare_page(server, page, tmp_path):
    page.get(server.url + "/ui/models")
    screenshot(page, "models", tmp_path)
    for version in ("br-a", "br-b"):
        page.find_element(By.CSS_SELECTOR, f"input[type=checkbox][value='{version}']").click()
    page.find_element(By.XPATH, "//button[text()='Compare the two ticked']").click()
    wait(page, lambda d: "/ui/compare?" in d.current_url)
    assert "seed" in text(page, "#differences") and "learning_rate" in text(page, "#differences")
    wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#cka table.heatmap"))
    assert "br-b" in text(page, "#cka figcaption")
    assert page.find_elements(By.CSS_SELECTOR, "#history-chart canvas")
    screenshot(page, "compare", tmp_path)


def test_the_datasets_and_jobs_pages(server, page, tmp_path):
    page.get(server.url + "/ui/datasets")
    grid = page.find_element(By.CSS_SELECTOR, "img[src='/ui/datasets/mnist/cka.png']")
    assert page.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", grid)
    screenshot(page, "datasets", tmp_path)
    page.get(server.url + "/ui")
    assert "cancelled" in text(page, "#jobs-table") and "✓" in text(page, "#jobs-table")
    screenshot(page, "jobs", tmp_path)
    page.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme",
                                                                        "value": "dark"}]})
    page.get(server.url + "/ui/models/br-a")
    wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#activations button.channel"))
    assert page.execute_script("return getComputedStyle(document.body).backgroundColor") == "rgb(15, 20, 25)"
    screenshot(page, "model-dark", tmp_path)
    page.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})


# Two drawn configurations × two seeds, 2 epochs, ASHA η=2: random_seed 22 draws Adam at 7.5e-3 first and SGD at
# 1.2e-5 second, so the second one's trials reach epoch 1 behind two learning ones and are stopped there.
SWEEP = {"name": "browser sweep", "base": {"dataset": "mnist", "layers": SMALL, "epochs": 2, "batch_size": 16,
                                           "validation_split": 0.5, "snapshot_every": 0},
         "space": {"learning_rate": {"min": 1e-5, "max": 1e-2, "log": True}, "optimizer": ["adam", "sgd"]},
         "strategy": "random", "trials": 2, "random_seed": 22, "seeds": [0, 1],
         "early_stop": {"type": "asha", "min_epochs": 1, "reduction_factor": 2}}


def column(driver, index: int) -> list[str]:
    return driver.execute_script("return [...document.querySelectorAll('#trials-table tbody tr')]"
                                 ".map(row => row.cells[arguments[0]].innerText.trim())", index)


def test_the_sweep_page_follows_the_sweep_and_sorts_draws_and_lists_asha(server, page, tmp_path):
    response = server.api.post("/sweeps", json=SWEEP)
    assert response.status_code == 201, response.text
    sweep_id = response.json()["id"]
    page.get(server.url + "/ui/sweeps")
    page.find_element(By.LINK_TEXT, sweep_id).click()
    # the live part is polled until every trial has ended; the charts follow each swap
    wait(page, lambda d: "succeeded" in text(d, "#sweep-summary .status"))
    wait(page, lambda d: "4 of 4 trials ended" in text(d, "#sweep-ended"))
    assert not page.find_elements(By.XPATH, "//button[text()='Cancel this sweep']")
    record = server.api.get(f"/sweeps/{sweep_id}").json()
    assert {3, 4} <= {t["trial"] for t in record["trials"] if t["stopped_early"]}, record["trials"]
    assert "log axis" in text(page, "#params-h + .charts figcaption")
    wait(page, lambda d: loss_pixels(d, "#scatter-learning_rate") > 20)  # the learning trials' points
    wait(page, lambda d: loss_pixels(d, "#curves-chart") > 20)  # trial 1's line
    assert "sgd" in text(page, "#category-optimizer") and "adam" in text(page, "#category-optimizer")
    # ASHA: every trial judged at rung 0 (epoch 1); the second configuration's two stopped there (trial 2 maybe too)
    rows = page.find_elements(By.CSS_SELECTOR, "#decisions-table tbody tr")
    assert len(rows) == len(record["decisions"]) == 4
    assert [row.text.split()[-1] for row in rows][2:] == ["stop", "stop"]
    assert "3, 4" in text(page, "#rungs-table tbody")
    # a header click sorts the table by that column, a second click reverses it
    metric = 2 + len(SWEEP["space"]) + 2  # trial, the parameters, seed, status, then the metric
    page.find_elements(By.CSS_SELECTOR, "#trials-table thead button.sort")[metric].click()
    values = [float(v) for v in column(page, metric)]
    assert values == sorted(values) and len(set(values)) > 1
    assert page.find_elements(By.CSS_SELECTOR, "#trials-table thead th")[metric].get_attribute("aria-sort") == \
        "ascending"
    page.find_elements(By.CSS_SELECTOR, "#trials-table thead button.sort")[metric].click()
    assert [float(v) for v in column(page, metric)] == sorted(values, reverse=True)
    page.find_elements(By.CSS_SELECTOR, "#trials-table thead button.sort")[0].click()
    assert column(page, 0) == ["1", "2", "3", "4"]
    wait(page, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#similarity table.similarity")) == 2)
    page.execute_script("window.scrollTo(0, document.getElementById('trials-h').offsetTop - 8)")
    screenshot(page, "sweep", tmp_path)
    # two trials compared: their same-layer CKA beside the seed floor of the first one's configuration
    a, b = (trial["version"] for trial in record["trials"][::2])
    page.get(f"{server.url}/ui/compare?v={a}&v={b}")
    wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#seed-floor tbody tr"))
    assert "optimizer=adam" in text(page, "#seed-floor caption") and "seeds 0, 1" in text(page, "#seed-floor caption")
    assert "seed noise" in text(page, "#seed-floor tbody")
