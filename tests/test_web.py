"""The web page in a real headless browser (Debian's chromium + chromedriver, driven by selenium).

Upload a photo, see the suggested tags with confidence bars, accept one, reject another, and find the clicks as
rows in the SQLite feedback database and the accepted tag among the hashtags. Skips with the reason when the
browser, its driver or selenium is not installed (scripts/setup.sh installs them where apt is available).
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi", reason='the service needs the "serve" extra')
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")

from live_server import running_server, shared_default_model  # noqa: E402
from phototag.serve import ServiceConfig, create_app, model_identity  # noqa: E402

BROWSER_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,900",
)


def find_browser() -> tuple[str, str]:
    browser = next(
        (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
    )
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip(
            "headless browser test needs chromium and chromedriver "
            "(Debian: apt-get install chromium chromium-driver; scripts/setup.sh does it when apt is available)"
        )
    return browser, driver


@pytest.fixture
def browser(tmp_path):
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = find_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in BROWSER_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def test_upload_see_tags_accept_and_store_feedback(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from phototag.cli import example_images

    samples = [p for p in example_images() if p.name == "chelsea.png"]
    if not samples:
        pytest.skip("the scikit-image sample photo chelsea.png is not installed")
    photo = tmp_path / "cat photo.jpg"
    Image.open(samples[0]).convert("RGB").save(photo)
    model = shared_default_model()
    expected = model.predict([photo], top_k=4)[0][0]["tags"]
    db = tmp_path / "feedback.sqlite"
    app = create_app(model, ServiceConfig(feedback_db=db))
    wait = WebDriverWait(browser, 60)
    with running_server(app) as url:
        browser.get(url + "/")
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
        top_k = browser.find_element(By.ID, "top-k")
        top_k.clear()
        top_k.send_keys("4")
        browser.find_element(By.ID, "files").send_keys(str(photo))
        card = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "article.photo[data-state]"))
        assert card.get_attribute("data-state") == "tagged", card.text
        assert card.get_attribute("data-model") == model_identity(model).id  # read from the answer's envelope
        rows = card.find_elements(By.CSS_SELECTOR, ".tag")
        assert [r.get_attribute("data-tag") for r in rows] == [t["tag"] for t in expected]
        width = rows[0].find_element(By.CSS_SELECTOR, ".bar span").get_attribute("style")
        assert f"width: {round(expected[0]['score'] * 100)}%" in width
        assert card.find_element(By.CSS_SELECTOR, "h3").text == "cat photo.jpg"

        rows[0].find_element(By.CSS_SELECTOR, "button.accept").click()
        wait.until(lambda d: (rows[0].get_attribute("data-saved") or "pending") not in ("pending",))
        rows[1].find_element(By.CSS_SELECTOR, "button.reject").click()
        wait.until(lambda d: (rows[1].get_attribute("data-saved") or "pending") not in ("pending",))
        assert rows[0].get_attribute("data-saved") != "error" and rows[1].get_attribute("data-saved") != "error"
        assert "accepted" in rows[0].get_attribute("class") and "rejected" in rows[1].get_attribute("class")
        hashtags = browser.find_element(By.ID, "hashtags").get_attribute("value")
        assert hashtags == "#" + expected[0]["tag"].replace("-", "").replace(" ", "")
        browser.find_element(By.ID, "copy").click()
        wait.until(lambda d: d.find_element(By.ID, "copied").text != "")

        # Keywords in German: the names and hashtags change, the decisions stay (and stay English in the database).
        from selenium.common.exceptions import StaleElementReferenceException
        from selenium.webdriver.support.ui import Select

        from phototag.languages import translate_tag

        Select(browser.find_element(By.ID, "lang")).select_by_value("de")
        german = [translate_tag(t["tag"], "de") for t in expected]
        redrawn = WebDriverWait(browser, 60, ignored_exceptions=(StaleElementReferenceException,))
        redrawn.until(
            lambda d: [n.text for n in d.find_elements(By.CSS_SELECTOR, "article.photo .tag .name")] == german
        )
        rows = browser.find_elements(By.CSS_SELECTOR, "article.photo .tag")
        assert "accepted" in rows[0].get_attribute("class") and "rejected" in rows[1].get_attribute("class")
        hashtags = browser.find_element(By.ID, "hashtags").get_attribute("value")
        assert hashtags == "#" + german[0].replace("-", "").replace(" ", "")

    with sqlite3.connect(db) as conn:
        decisions = conn.execute("SELECT tag, decision, model FROM decisions ORDER BY id").fetchall()
        stored = conn.execute("SELECT name, data FROM images").fetchall()
    assert decisions == [
        (expected[0]["tag"], "accept", f"{model.method.name}@default_model"),
        (expected[1]["tag"], "reject", f"{model.method.name}@default_model"),
    ]
    assert stored == [("cat photo.jpg", Path(photo).read_bytes())]
