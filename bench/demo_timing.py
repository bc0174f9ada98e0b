"""Start-up time and per-submit latency of `mtl-demo` on loopback.

1. Start-up: from starting `python -m mtl_st.demo RUN_DIR --port P` to the page answering 200 (imports, model load,
   Gradio start), over `--starts` starts.
2. Per submit, through the app's own API (gradio_client, the "/submit" event the Submit button runs: every head, the
   embedding and the map from one encoder pass): `--submits` submits of the README's sentences, p50 / p95 / max.
3. With `--browser` (Debian's chromium and chromedriver): a submit timed in the page, from the click to the sentiment
   label appearing in the DOM.
Only 127.0.0.1 is contacted; every loop is bounded.

    python bench/demo_timing.py RUN_DIR [--starts 3] [--submits 30] [--browser] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import common

SENTENCES = [
    "The weather is lovely today.",
    "It's so sunny outside!",
    "He drove to the stadium.",
    "A gorgeous, witty film that I would happily watch again.",
    "Heading to New York with Taylor Swift next week",
]


def start_demo(run_dir: str, extra: list[str]):
    port = common.free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    return common.start_http([sys.executable, "-m", "mtl_st.demo", run_dir, "--port", str(port), *extra], port, "/",
                             "demo", limit_s=300, poll_s=0.1, env=env)


def stop(process) -> None:
    common.stop_process(process, 30)


def percentiles(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"n": len(ordered), "p50_ms": round(1000 * statistics.median(ordered), 1),
            "p95_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1),
            "max_ms": round(1000 * ordered[-1], 1)}


def submits(url: str, n: int) -> dict:
    from gradio_client import Client

    client = Client(url, verbose=False)
    client.predict(SENTENCES[0], api_name="/submit")  # warm-up
    times = []
    for i in range(n):
        started = time.perf_counter()
        client.predict(SENTENCES[i % len(SENTENCES)], api_name="/submit")
        times.append(time.perf_counter() - started)
    return percentiles(times)


def browser_submit(url: str, n: int) -> dict:
    import tempfile

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 f"--user-data-dir={tempfile.mkdtemp()}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    times = []
    try:
        started = time.perf_counter()
        driver.get(url)
        box = WebDriverWait(driver, 60).until(lambda d: d.find_element(By.CSS_SELECTOR, "#text-input textarea"))
        page_load = time.perf_counter() - started
        for i in range(n):
            box.send_keys(Keys.CONTROL, "a")
            box.send_keys(Keys.DELETE)
            box.send_keys(f"{SENTENCES[i % len(SENTENCES)]} ({i})")
            before = driver.find_element(By.ID, "embedding-map").get_attribute("innerHTML")
            started = time.perf_counter()
            driver.find_element(By.ID, "text-submit").click()
            # done when the map (redrawn by every submit) differs and its status tracker is hidden again
            tracker = "#embedding-map [data-testid='status-tracker']"
            WebDriverWait(driver, 60, poll_frequency=0.01).until(
                lambda d: d.find_element(By.ID, "embedding-map").get_attribute("innerHTML") != before
                and "hide" in d.find_element(By.CSS_SELECTOR, tracker).get_attribute("class"))
            times.append(time.perf_counter() - started)
    finally:
        driver.quit()
    return {"page_load_s": round(page_load, 2), **percentiles(times)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--submits", type=int, default=30)
    parser.add_argument("--browser", action="store_true", help="also time submits in headless Chromium")
    parser.add_argument("--onnx", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    extra = ["--onnx"] if args.onnx else []
    print(f"machine: {common.machine_line()}")
    startups, result = [], {"machine": common.machine_line(), "run_dir": Path(args.run_dir).name,
                            "backend": "onnx" if args.onnx else "pytorch"}
    for attempt in range(args.starts):
        process, url, seconds = start_demo(args.run_dir, extra)
        startups.append(seconds)
        if attempt < args.starts - 1:
            stop(process)
    try:
        result["startup_s"] = {"runs": [round(s, 2) for s in startups], "median": round(statistics.median(startups), 2)}
        result["submit_api"] = submits(url, args.submits)
        if args.browser:
            result["submit_browser"] = browser_submit(url, min(args.submits, 10))
    finally:
        stop(process)
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
