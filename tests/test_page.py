"""The web page in a real headless Chromium (Debian's `chromium` + `chromium-driver`),
against the real functions-framework server: upload a file, paste URLs, switch model."""

from __future__ import annotations

import shutil

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from conftest import ROOT
from fixtures import images as test_images
from function.config import default_model, load_settings
from function.runtime import tflite_path
from test_server import served

CHROME_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1000,1000")
SCREENSHOT = ROOT / "artifacts" / "browser.png"


@pytest.fixture
def browser(tmp_path):
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    # Missing is a failure, never a skip: CI installs both (apt-get install chromium chromium-driver).
    assert chromium and driver_path, "install Debian's chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROME_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def cards(driver):
    """Each rendered result: (name, [(label, bar width %, score text)], error text)."""
    found = []
    for card in driver.find_elements(By.CSS_SELECTOR, "#results .result"):
        rows = [(row.find_element(By.CLASS_NAME, "label").text,
                 float(row.find_element(By.CLASS_NAME, "bar").value_of_css_property("width").removesuffix("px"))
                 / float(row.find_element(By.CLASS_NAME, "track").value_of_css_property("width").removesuffix("px")),
                 row.find_element(By.CLASS_NAME, "score").text)
                for row in card.find_elements(By.CLASS_NAME, "prediction")]
        errors = [e.text for e in card.find_elements(By.CLASS_NAME, "error")]
        found.append((card.find_element(By.CLASS_NAME, "name").text, rows, errors))
    return found


def classify(driver, expected_cards: int):
    driver.find_element(By.ID, "go").click()
    WebDriverWait(driver, 60).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .result")) == expected_cards
        and d.find_element(By.ID, "go").is_enabled())
    return cards(driver)


@pytest.mark.slow
def test_the_page_classifies_uploads_and_urls(browser, use_stand_in, stand_in, flowers, tmp_path, monkeypatch):
    monkeypatch.setenv("CLASSIFIER_MODELS", flowers.registry())
    tflite_path(default_model(load_settings()), str(stand_in.cache_dir))  # no TensorFlow in the server
    upload = tmp_path / "robin.png"
    upload.write_bytes(test_images.encode(test_images.solid((250, 5, 5), (160, 120))))
    blue = stand_in.image_url("page-blue.png", (5, 5, 250))
    missing = stand_in.server.url("/images/page-missing.png")
    with served({**stand_in.env(), "CLASSIFIER_MODELS": flowers.registry()}) as (base, _):
        browser.get(base + "/")
        assert browser.title == "Bird classifier"
        WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "model-choice").is_displayed())
        browser.find_element(By.ID, "files").send_keys(str(upload))
        browser.find_element(By.ID, "urls").send_keys(f"{blue}\n{missing}")
        shown = classify(browser, 3)

        assert [name for name, _, _ in shown] == ["robin.png", blue, missing]
        (_, robin, _), (_, tit, _), (_, none, error) = shown
        assert robin[0][0] == "Erithacus rubecula" and len(robin) == len(tit) == 3  # top-3 bars
        assert tit[0][0] == "Cyanistes caeruleus"
        for label, fraction, score in robin + tit:  # each bar is as long as its score
            assert fraction == pytest.approx(float(score.removesuffix("%")) / 100, abs=0.01), label
        assert robin[0][1] > 0.8 > robin[1][1]
        assert none == [] and error[0].startswith("http_status: image server answered 404")
        assert browser.find_element(By.ID, "status").text == "3 images classified"
        assert all(img.get_property("naturalWidth") > 0 for img in browser.find_elements(By.CSS_SELECTOR, ".result img")[:2])
        SCREENSHOT.parent.mkdir(exist_ok=True)
        browser.save_screenshot(str(SCREENSHOT))

        Select(browser.find_element(By.ID, "model")).select_by_value("flowers")
        shown = classify(browser, 3)
        assert [rows[0][0] for _, rows, _ in shown[:2]] == ["roses", "tulips"]

        browser.find_element(By.ID, "urls").send_keys("\nftp://example.invalid/x.png")
        Select(browser.find_element(By.ID, "model")).select_by_value("birds")
        shown = classify(browser, 4)
        assert shown[3][2] == ["forbidden_url: scheme 'ftp' is not allowed: use http or https"]
