"""The browser side: the page at /, the pictures endpoint, the reports, Swagger UI at /docs; in
the Flask test client and, end to end, in headless Chromium against a real server."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cvpipe.images import is_image_name
from service import create_app
from service.registry import ModelRegistry
from tests import synthetic
from tests.conftest import _REAL_SOURCE
from tests.test_api import CNN, MLP, SVM, api_models_dir, encode
from tests.test_api_server import free_port, serve, stop, wait_ready

STATIC = Path(__file__).resolve().parents[1] / "service" / "static"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    return api_models_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def registry(models) -> ModelRegistry:
    return ModelRegistry(models).load_all()


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> Path:
    """A reports folder as cvpipe compare and cvpipe summary leave it, plus things not to serve."""
    root = tmp_path_factory.mktemp("reports")
    run = root / "mnist-full"
    run.mkdir()
    (run / "report.html").write_text("<h1>the mnist report</h1>")
    (run / "fig00-accuracy.png").write_bytes(encode(np.zeros((4, 4, 3), np.uint8)))
    (run / "notes.txt").write_text("not a report file")
    (run / "results.json").write_text(json.dumps({
        "dataset": {"name": "mnist", "title": "MNIST"},
        "run": {"profile": {"name": "full"}, "created": "2026-12-01T00:00:00+00:00"}}))
    (root / "summary").mkdir()
    (root / "summary" / "index.html").write_text("<h1>summary</h1>")
    (root / "scratch").mkdir()  # no report in it: not listed
    (root / "secret.html").write_text("outside every report folder")
    return root


def _client(registry, models, **settings):
    app = create_app({"TESTING": True, "MODELS_DIR": str(models), "API_TOKEN": None, **settings},
                     registry=registry)
    return app.test_client()


def _png_files(*images: np.ndarray) -> dict:
    return {"images": [(io.BytesIO(encode(img)), f"{i}.png") for i, img in enumerate(images)]}


def test_page_and_assets_are_served_by_the_app_alone(registry, models):
    client = _client(registry, models)
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert 'id="drop"' in html and "/ui/app.js" in html and "/ui/app.css" in html
    for asset, mimetype in (("/ui/app.js", "text/javascript"), ("/ui/app.css", "text/css"),
                            ("/ui/docs.js", "text/javascript")):
        resp = client.get(asset)
        assert resp.status_code == 200 and resp.mimetype == mimetype, asset
    # offline and on a locked-down network: nothing is fetched from another origin
    for f in STATIC.iterdir():
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", f.read_text()), f.name
    docs = client.get("/docs").get_data(as_text=True)
    assert not re.search(r"https?://", docs)
    for asset in re.findall(r'(?:src|href)="(/docs/assets/[^"]+)"', docs):
        assert client.get(asset).status_code == 200, asset
    assert client.get("/docs/assets/index.html").status_code == 404  # only the listed files
    assert client.get("/docs/assets/../../../setup.py").status_code == 404


def test_pictures_show_what_a_model_receives(registry, models):
    client = _client(registry, models)
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)
    for model in (MLP, SVM, CNN):
        resp = client.post(f"/v1/models/{model}/pictures", data=_png_files(photo),
                           content_type="multipart/form-data")
        assert resp.status_code == 200, resp.get_json()
        body = resp.get_json()
        shown = {}
        for key in ("input", "hog", "histogram"):
            uri = body["pictures"][key]
            assert uri.startswith("data:image/png;base64,")
            shown[key] = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
        h, w = body["input_size"]
        assert shown["input"].size[0] % w == 0 and shown["input"].size[0] > w  # enlarged, whole factor
        # nearest neighbour: each model pixel is a block of one colour
        px = np.asarray(shown["input"])
        factor = px.shape[0] // h
        assert (px[:factor, :factor] == px[0, 0]).all()
    two = client.post(f"/v1/models/{MLP}/pictures", data=_png_files(photo, photo),
                      content_type="multipart/form-data")
    assert two.status_code == 413
    auth = _client(registry, models, API_TOKEN="tok")
    denied = auth.post(f"/v1/models/{MLP}/pictures", data=_png_files(photo),
                       content_type="multipart/form-data")
    assert denied.status_code == 401


def test_reports_listed_and_only_report_files_served(registry, models, reports):
    assert _client(registry, models).get("/v1/reports").get_json() == {"reports": []}
    client = _client(registry, models, REPORTS_DIR=str(reports))
    listed = client.get("/v1/reports").get_json()["reports"]
    assert [r["name"] for r in listed] == ["mnist-full", "summary"]
    assert listed[0]["title"] == "MNIST, profile full" and listed[0]["dataset"] == "mnist"
    assert "the mnist report" in client.get(listed[0]["url"]).get_data(as_text=True)
    assert client.get("/reports/mnist-full/fig00-accuracy.png").mimetype == "image/png"
    assert client.get("/reports/summary/index.html").status_code == 200
    for bad in ("/reports/mnist-full/notes.txt", "/reports/scratch/report.html",
                "/reports/mnist-full/..%2Fsecret.html", "/reports/../secret.html",
                "/reports/.hidden/report.html"):
        assert client.get(bad).status_code == 404, bad


def test_a_report_whose_results_were_edited_is_still_listed(registry, models, tmp_path):
    for name, results in (("odd-date", {"run": {"created": 5}}), ("odd-dataset", {"dataset": [1]}),
                          ("fine", {"run": {"created": "2026-12-01T00:00:00+00:00"}})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.html").write_text("<h1>a report</h1>")
        (tmp_path / name / "results.json").write_text(json.dumps(results))
    listed = _client(registry, models, REPORTS_DIR=str(tmp_path)).get("/v1/reports")
    assert listed.status_code == 200
    assert [r["name"] for r in listed.get_json()["reports"]][0] == "fine"  # dated, so first


def test_pages_and_reports_carry_a_security_policy(registry, models, reports, tmp_path):
    client = _client(registry, models, REPORTS_DIR=str(reports))
    for path in ("/", "/docs", "/v1/models", "/healthz", "/reports/mnist-full/report.html", "/nothing"):
        resp = client.get(path)
        assert resp.headers["X-Content-Type-Options"] == "nosniff", path
        assert resp.headers["X-Frame-Options"] == "DENY", path
        assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"], path
    page = client.get("/").headers["Content-Security-Policy"]
    assert "script-src 'self'" in page and "'unsafe-eval'" not in page
    report = client.get("/reports/mnist-full/report.html").headers["Content-Security-Policy"]
    assert report.startswith("sandbox;") and "script-src" not in report  # no script runs there
    # Swagger UI does not keep the token in localStorage
    assert "persistAuthorization: false" in client.get("/ui/docs.js").get_data(as_text=True)


def test_a_link_out_of_the_reports_folder_is_not_served(registry, models, reports, tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(encode(np.zeros((2, 2, 3), np.uint8)))
    (reports / "mnist-full" / "fig99-leak.png").symlink_to(secret)
    try:
        client = _client(registry, models, REPORTS_DIR=str(reports))
        assert client.get("/reports/mnist-full/fig99-leak.png").status_code == 404
        assert client.get("/reports/mnist-full/fig00-accuracy.png").status_code == 200
    finally:
        (reports / "mnist-full" / "fig99-leak.png").unlink()


def test_only_allowed_host_names_are_answered(registry, models):
    client = _client(registry, models)
    # a page on evil.example whose name now resolves to 127.0.0.1 (DNS rebinding)
    assert client.get("/v1/models", headers={"Host": "evil.example"}).status_code == 400
    for host in ("localhost", "127.0.0.1:8000", "[::1]:8000", "localhost:5000"):
        assert client.get("/v1/models", headers={"Host": host}).status_code == 200, host
    named = _client(registry, models, ALLOWED_HOSTS="cvpipe.example.org, .lab.example")
    assert named.get("/healthz", headers={"Host": "cvpipe.example.org"}).status_code == 200
    assert named.get("/healthz", headers={"Host": "gpu1.lab.example:80"}).status_code == 200
    assert named.get("/healthz", headers={"Host": "localhost"}).status_code == 400
    anyone = _client(registry, models, ALLOWED_HOSTS="*")
    assert anyone.get("/healthz", headers={"Host": "evil.example"}).status_code == 200


# ----------------------------------------------------------------------------- in a real browser

pytestmark_browser = pytest.mark.skipif(
    not (shutil.which("chromium") and shutil.which("chromedriver")),
    reason="Debian's chromium and chromium-driver are not installed (.ci/run installs them)")


def browser(tmp_path: Path, width: int = 1300, height: int = 1000):
    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run",
                 "--disable-sync", f"--window-size={width},{height}",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)


def wait_for(driver, script: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {script}")


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    """A real image: the first test image of the real CIFAR-10 copy when it is there (CI),
    else a CIFAR-style synthetic one enlarged to 96x128 as a photo would come."""
    folder = tmp_path_factory.mktemp("upload")
    if _REAL_SOURCE and Path(_REAL_SOURCE).is_file():
        with tarfile.open(_REAL_SOURCE) as tar:
            for member in tar:
                if member.isfile() and "/test/" in f"/{member.name}" and is_image_name(member.name):
                    path = folder / Path(member.name).name
                    path.write_bytes(tar.extractfile(member).read())
                    return path
    x, _ = synthetic.make_images(1, seed=3)
    path = folder / "truck.jpg"
    Image.fromarray(x[9]).resize((128, 96)).save(path, quality=90)
    return path


def _upload_and_wait(driver, image: Path) -> dict:
    driver.find_element("id", "files").send_keys(str(image))
    return wait_for(driver, "return window.cvpipeLastRound")


@pytestmark_browser
@pytest.mark.slow
def test_page_classifies_with_every_model_in_chromium(models, reports, image_file, tmp_path):
    # one more model, "trained" on another dataset: the page offers one dataset's models at a time
    served_dir = tmp_path / "models"
    shutil.copytree(models, served_dir)
    other = served_dir / "other-svm"
    shutil.copytree(served_dir / SVM, other)
    meta = json.loads((other / "model.json").read_text())
    meta["dataset"]["name"] = "other"
    (other / "model.json").write_text(json.dumps(meta))
    port = free_port()
    proc = serve(served_dir, port, "--workers", "1", "--threads", "4", "--reports", str(reports))
    url = f"http://127.0.0.1:{port}"
    driver = None
    try:
        wait_ready(proc, url)
        everything = json_get(f"{url}/v1/models")["models"]
        served = [m for m in everything if m["trained_on"] != "other"]
        driver = browser(tmp_path)
        driver.get(f"{url}/")
        wait_for(driver, "return document.body.dataset.ready")
        assert driver.find_element("id", "dataset").get_attribute("value") == "cifar10"
        cards = driver.execute_script("return document.querySelectorAll('#models .card').length")
        assert cards == len(served) == len(everything) - 1
        assert "MNIST, profile full" in driver.find_element("id", "reports").text
        round_ = _upload_and_wait(driver, image_file)
        assert round_["failed"] == 0 and round_["models"] == len(served)
        labels = driver.execute_script(
            "return Array.from(document.querySelectorAll('#results .card')).map("
            "c => [c.dataset.model, (c.querySelector('.top') || {}).dataset?.label])")
        assert sorted(m for m, _ in labels) == sorted(m["name"] for m in served)
        assert all(label for _, label in labels), labels
        assert "null" not in driver.find_element("id", "results").text
        widths = driver.execute_script(
            "return Array.from(document.querySelectorAll('#results .card .fill'))"
            ".map(f => f.getBoundingClientRect().width)")
        assert widths and max(widths) > 10  # the bars are drawn
        picked = driver.execute_script("return document.querySelector('#results select').value")
        assert picked in {m["name"] for m in served if "hog" in json.dumps(m["features"])}
        hog = wait_for(driver, "const i = document.querySelector('#results img.hog'); "
                               "return i && i.complete && i.naturalWidth")
        assert hog >= 128
        # the same file chosen again is classified again, alone
        driver.execute_script("window.cvpipeLastRound = null")
        again = _upload_and_wait(driver, image_file)
        assert again["images"] == 1 and again["failed"] == 0
        # keyboard: the drop zone is reachable and focusable
        driver.execute_script("document.getElementById('drop').focus()")
        assert driver.execute_script("return document.activeElement.id") == "drop"
        # phone width: nothing wider than the window
        driver.set_window_size(390, 844)
        overflow = driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1
    finally:
        if driver is not None:
            driver.quit()
        stop(proc)


@pytestmark_browser
@pytest.mark.slow
def test_page_asks_for_the_token_and_docs_render_in_chromium(models, image_file, tmp_path):
    port = free_port()
    proc = serve(models, port, "--workers", "1", "--threads", "4", env={"CVPIPE_API_TOKEN": "tok"})
    url = f"http://127.0.0.1:{port}"
    driver = None
    try:
        wait_ready(proc, url)
        driver = browser(tmp_path)
        driver.get(f"{url}/")
        wait_for(driver, "return document.body.dataset.ready")
        _upload_and_wait(driver, image_file)
        error = driver.find_element("id", "error").text
        assert "Authorization: Bearer <token>" in error  # the API's own words
        assert driver.find_element("id", "token-form").is_displayed()
        driver.find_element("id", "token").send_keys("tok")
        driver.execute_script("window.cvpipeLastRound = null")
        driver.find_element("css selector", "#token-form button").click()
        round_ = wait_for(driver, "return window.cvpipeLastRound")
        assert round_["failed"] == 0
        assert not driver.find_element("id", "error").is_displayed()

        driver.get(f"{url}/docs")
        paths = json_get(f"{url}/openapi.json")["paths"]
        operations = sum(len(ops) for ops in paths.values())
        shown = wait_for(driver, f"const n = document.querySelectorAll('.opblock').length; "
                                 f"return n >= {operations} && n")
        assert shown == operations
        text = driver.find_element("id", "swagger-ui").text
        for path in paths:
            assert path.split("{")[0] in text, path
        assert driver.find_elements("css selector", ".btn.authorize")  # the token can be entered
    finally:
        if driver is not None:
            driver.quit()
        stop(proc)


def json_get(url: str) -> dict:
    import requests

    return requests.get(url, timeout=30).json()
