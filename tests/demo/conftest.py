"""Fixtures of the demo tests: a tiny saved model (every task type), the app as a process on a free loopback port
with the network closed to it, and headless Chromium from the Debian packages."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.serve.helpers import build_tiny_run, child_env, free_port, start, stop

pytest.importorskip("gradio")

NETGUARD = Path(__file__).resolve().parent / "netguard"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1500")


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    return build_tiny_run(tmp_path_factory.mktemp("demo") / "tiny-run")


@pytest.fixture(scope="session")
def demo_pipe(demo_run):
    from transformers import pipeline

    import pipeline_mtl  # noqa: F401  (registers "multitask")

    return pipeline("multitask", model=str(demo_run), device="cpu")


@pytest.fixture(scope="module")
def demo_app(demo_run, tmp_path_factory):
    """`python -m mtl_st.demo RUN --port P` with every connection or lookup beyond loopback refused and logged."""
    log = tmp_path_factory.mktemp("netguard") / "refused.log"
    log.touch()
    env = child_env(MTL_NETGUARD_LOG=str(log))
    env["PYTHONPATH"] = os.pathsep.join([str(NETGUARD), env["PYTHONPATH"]])
    port = free_port()
    process = start(["-m", "mtl_st.demo", str(demo_run), "--port", str(port)], port, env=env, ready_path="/")
    yield f"http://127.0.0.1:{port}", log
    output = stop(process)
    assert "Traceback" not in output, output


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Debian Chromium driven by selenium through Debian's chromedriver (no browser is downloaded), with
    a fresh profile and its network log on."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("Chromium is not installed: apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager never looks for a driver online
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tmp_path_factory.mktemp("chromium-profile")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)
