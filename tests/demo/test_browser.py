"""The demo in a real browser (headless Debian Chromium) and through gradio_client, against the pipeline's answers,
with the network closed: no request of the page or of the app process leaves loopback."""

from __future__ import annotations

import json
import os
import shutil
from urllib.parse import urlparse

import pytest

from tests.serve.helpers import PERSON_AND_PLACE

PAIR = ("A man is eating food.", "Someone eats a meal.")
LONG = " ".join(["word"] * 300)  # 302 tokens, past the tiny model's 128


def wait_for(driver, condition, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d))


def element(driver, css: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css)


def elements(driver, css: str):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, css)


def set_text(driver, css: str, value: str, typed: bool = True) -> None:
    """Type into a Gradio textbox (or, for a long text, set it and fire the input event the page listens to)."""
    from selenium.webdriver.common.keys import Keys

    box = element(driver, css)
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    if typed:
        box.send_keys(value)
    else:
        driver.execute_script("arguments[0].value = arguments[1];"
                              "arguments[0].dispatchEvent(new Event('input', {bubbles: true}));", box, value)


def shown_entities(driver) -> list[tuple[str, str]]:
    return [(token.find_element("css selector", ".text").text, token.find_element("css selector", ".label").text)
            for token in elements(driver, "#task-ner .token.highlighted")]


def requests_made(driver) -> list[str]:
    """Every URL the page asked for (Chrome's network log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] in ("Network.requestWillBeSent", "Network.webSocketCreated"):
            urls.append(message["params"].get("request", {}).get("url") or message["params"].get("url", ""))
    return urls


def leaves_loopback(url: str) -> bool:
    parsed = urlparse(url)
    return parsed.scheme in ("http", "https", "ws", "wss") and parsed.hostname not in ("127.0.0.1", "localhost", "::1")


def test_the_page_shows_the_pipelines_answers_offline(browser, demo_app, demo_pipe, tmp_path):
    url, refused = demo_app
    expected = demo_pipe(PERSON_AND_PLACE)
    browser.get(url)
    wait_for(browser, lambda d: elements(d, "#text-input textarea"))

    set_text(browser, "#text-input textarea", PERSON_AND_PLACE)
    element(browser, "#text-submit").click()
    label = wait_for(browser, lambda d: elements(d, "#task-sentiment [data-testid='label-output-value']")
                     and element(d, "#task-sentiment [data-testid='label-output-value']").text)
    assert label == expected["sentiment"]["label"]
    wait_for(browser, lambda d: shown_entities(d))
    assert expected["ner"], "the biased NER head gives entities to compare"
    assert shown_entities(browser) == [(e["word"], e["entity_group"]) for e in expected["ner"]]
    assert "Emma" in [word for word, _ in shown_entities(browser)]
    screenshot = tmp_path / "demo.png"
    browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000
    if os.environ.get("MTL_DEMO_SCREENSHOT"):
        shutil.copy(screenshot, os.environ["MTL_DEMO_SCREENSHOT"])

    # bad input: a message in the page, not a traceback
    set_text(browser, "#text-input textarea", "")
    element(browser, "#text-submit").click()
    wait_for(browser, lambda d: "Type a sentence first" in element(d, "#message").text)
    set_text(browser, "#text-input textarea", LONG, typed=False)
    element(browser, "#text-submit").click()
    wait_for(browser, lambda d: "302 tokens" in element(d, "#message").text)
    assert "ner read it in full, in windows of 128 tokens" in element(browser, "#message").text

    # the similarity view (and the pair classification) on the Pair tab
    next(tab for tab in elements(browser, "button[role='tab']") if tab.text.strip() == "Pair").click()
    wait_for(browser, lambda d: element(d, "#pair-text textarea").is_displayed())
    set_text(browser, "#pair-text textarea", PAIR[0])
    set_text(browser, "#pair-text-pair textarea", PAIR[1])
    element(browser, "#pair-submit").click()
    expected_pair = demo_pipe({"text": PAIR[0], "text_pair": PAIR[1]})
    cosine = wait_for(browser, lambda d: element(d, "#task-similarity input").get_attribute("value"))
    assert float(cosine) == pytest.approx(expected_pair["similarity"]["score"], abs=1e-4)
    nli = wait_for(browser, lambda d: element(d, "#task-nli [data-testid='label-output-value']").text)
    assert nli == expected_pair["nli"]["label"]

    outside = [request for request in requests_made(browser) if leaves_loopback(request)]
    assert outside == [], outside
    assert refused.read_text() == "", "the app process tried to reach the network"


def test_gradio_client_gets_the_pipelines_answer(demo_app, demo_pipe):
    gradio_client = pytest.importorskip("gradio_client")
    url, refused = demo_app
    client = gradio_client.Client(url, verbose=False)
    answer = client.predict(PERSON_AND_PLACE, api_name="/multitask")
    expected = demo_pipe(PERSON_AND_PLACE)
    assert set(answer) == set(expected)
    assert answer["sentiment"]["label"] == expected["sentiment"]["label"]
    assert [(e["word"], e["entity_group"], e["start"], e["end"]) for e in answer["ner"]] == [
        (e["word"], e["entity_group"], e["start"], e["end"]) for e in expected["ner"]]
    assert answer["stars"]["score"] == pytest.approx(expected["stars"]["score"], abs=1e-5)
    assert refused.read_text() == ""
