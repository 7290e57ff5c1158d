"""The browser page's speed, in headless Chromium against a real ``cvpipe serve``, as JSON.

1. first load: navigation start to the page ready (its models, reports and auth state fetched),
   median of ``--loads`` fresh loads (cache disabled);
2. one round: one image dropped on the page, until every served model's prediction and the
   HOG/histogram pictures are shown (the page's own ``performance.now()`` timing), median of
   ``--rounds`` rounds;
3. the peer: the same requests sent straight to the API from Python (``requests``, one thread
   per model, as the page sends them concurrently), so ``round / api_round`` is what the page
   itself costs on top of the API.

The browser, the server and the client share the machine's cores.

    python benchmarks/ui.py --models models --reports reports --image cat.jpg
    python benchmarks/ui.py --models models --screenshots docs/   # also docs/ui-page.png, ui-docs.png

Needs Debian's ``chromium`` and ``chromium-driver`` and selenium (the dev extra).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.test_api_server import free_port, serve, stop, wait_ready  # noqa: E402
from tests.test_ui import browser, wait_for  # noqa: E402


def _image(path: str | None, tmp: Path) -> Path:
    if path:
        return Path(path)
    rng = np.random.default_rng(0)
    out = tmp / "bench.jpg"
    Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)).save(out, quality=90)
    return out


def _api_round(url: str, models: list[dict], image: Path) -> float:
    data = image.read_bytes()

    def one(name: str, endpoint: str) -> None:
        r = requests.post(f"{url}/v1/models/{name}/{endpoint}", files={"images": (image.name, data)},
                          timeout=120)
        r.raise_for_status()

    jobs = [(m["name"], "predict?top_k=3") for m in models]
    first_classic = next((m["name"] for m in models if m.get("features")), None)
    if first_classic:
        jobs.append((first_classic, "pictures"))
    start = time.perf_counter()
    with ThreadPoolExecutor(len(jobs)) as pool:
        list(pool.map(lambda job: one(*job), jobs))
    return (time.perf_counter() - start) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="models")
    ap.add_argument("--reports", help="reports folder to serve (cvpipe serve --reports)")
    ap.add_argument("--image", help="image to classify (default: a synthetic 320x240 JPEG)")
    ap.add_argument("--loads", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--screenshots", metavar="DIR", help="save ui-page.png and ui-docs.png here")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="cvpipe-ui-bench-"))
    image = _image(args.image, tmp)
    port = free_port()
    extra = ["--workers", "1", "--threads", "8"] + (["--reports", args.reports] if args.reports else [])
    proc = serve(Path(args.models), port, *extra)
    url = f"http://127.0.0.1:{port}"
    driver = None
    try:
        wait_ready(proc, url, timeout=600)
        models = requests.get(f"{url}/v1/models", timeout=30).json()["models"]
        driver = browser(tmp, 1400, 1000)
        driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})
        loads = []
        for _ in range(args.loads):
            driver.get(f"{url}/")
            wait_for(driver, "return document.body.dataset.ready")
            loads.append(driver.execute_script(
                "return performance.now()"))  # ms since this navigation started
        driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": False})
        rounds = []
        for _ in range(args.rounds + 1):  # the first round warms the server's lazy imports
            driver.execute_script("window.cvpipeLastRound = null")
            driver.find_element("id", "files").send_keys(str(image))
            result = wait_for(driver, "return window.cvpipeLastRound", timeout=300)
            if result["failed"]:
                raise SystemExit(f"{result['failed']} requests failed on the page")
            if result["images"] != 1:
                raise SystemExit(f"a round classified {result['images']} images, not 1")
            rounds.append(result["ms"])
        rounds = rounds[1:]
        api_rounds = [_api_round(url, models, image) for _ in range(args.rounds)]
        if args.screenshots:
            out = Path(args.screenshots)
            out.mkdir(parents=True, exist_ok=True)
            height = driver.execute_script("return document.body.scrollHeight")
            driver.set_window_size(1400, min(height + 40, 6000))
            time.sleep(0.5)
            driver.save_screenshot(str(out / "ui-page.png"))
            driver.set_window_size(1400, 1000)
            driver.get(f"{url}/docs")
            wait_for(driver, "return document.querySelectorAll('.opblock').length")
            height = driver.execute_script("return document.body.scrollHeight")
            driver.set_window_size(1400, min(height + 40, 6000))
            time.sleep(0.5)
            driver.save_screenshot(str(out / "ui-docs.png"))
    finally:
        if driver is not None:
            driver.quit()
        stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)
    page_round, api_round = statistics.median(rounds), statistics.median(api_rounds)
    print(json.dumps({
        "benchmark": "ui", "machine": platform.processor() or platform.machine(),
        "models": [m["name"] for m in models], "image": str(image),
        "first_load_ms": {"median": round(statistics.median(loads), 1), "all": [round(v, 1) for v in loads]},
        "round_ms": {"median": round(page_round, 1), "all": [round(v, 1) for v in rounds]},
        "api_round_ms": {"median": round(api_round, 1), "all": [round(v, 1) for v in api_rounds]},
        "page_over_api": round(page_round / api_round, 2),
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
