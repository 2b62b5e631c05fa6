"""The search page in a real browser: Debian's headless Chromium, driven by Selenium through the system chromedriver.

Typed words show the thumbnails of the expected hits in order; an image dropped, pasted or chosen is the query; a
high minimum score says "no match"; a result opens, with its path, from the keyboard; reason mode's reasoning is
shown with the inspected candidates marked. Screenshots are saved in the test's temporary folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/lib/chromium/chromedriver"
TIMEOUT = 90


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if CHROMIUM is None or not Path(CHROMEDRIVER).is_file():
        pytest.skip("no chromium and chromium-driver here (apt-get install -y chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    flags = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,900",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ]
    for flag in flags:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_script_timeout(TIMEOUT)
    yield driver
    driver.quit()


def _wait(driver, condition, message: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, TIMEOUT).until(lambda d: condition(d), message)


def _cards(driver) -> list[str]:
    return driver.execute_script("return [...document.querySelectorAll('#results .card')].map(c => c.dataset.id)")


def _status(driver) -> tuple[str, str]:
    return driver.execute_script("const s = document.getElementById('status'); return [s.textContent, s.dataset.kind]")


def _search_for(driver, expected_first: str) -> list[str]:
    """The result ids once the first one is `expected_first` (each search replaces the grid)."""
    _wait(driver, lambda d: (_cards(d) or [None])[0] == expected_first, f"no results led by {expected_first}")
    return _cards(driver)


def _thumbnails_loaded(driver) -> bool:
    return driver.execute_script(
        "const imgs = [...document.querySelectorAll('#results img.thumb')];"
        "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0)"
    )


def _ids(served, **params) -> list[str]:
    status, document = served.client.search(**params)
    assert status == 200, document
    return [h["id"] for h in document["hits"]]


def _id_of(served, name: str) -> str:
    return next(h["id"] for h in served.client.search(q="x", k=50)[1]["hits"] if Path(h["source"]).name == name)


def test_browser_searches_with_words_images_and_a_minimum_score(served, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(served.url)
    _wait(browser, lambda d: "items in" in _status(d)[0], "the page did not load /api/info")
    assert browser.switch_to.active_element.get_attribute("id") == "q"  # ready to type

    # Words: the thumbnails of the expected hits, in order.
    expected = _ids(served, q="a cup of coffee", k=20)
    browser.find_element(By.ID, "q").send_keys("a cup of coffee", Keys.ENTER)
    assert _search_for(browser, expected[0]) == expected
    _wait(browser, _thumbnails_loaded, "thumbnails did not load")
    assert "results in" in _status(browser)[0]
    browser.save_screenshot(str(tmp_path / "words.png"))

    # From the keyboard: open the first photo among the results, see its full image and path, close it with Escape.
    hits = served.client.search(q="a cup of coffee", k=20)[1]["hits"]
    photo = next(h for h in hits if h["image_path"])
    card = browser.find_element(By.CSS_SELECTOR, f'#results .card[data-id="{photo["id"]}"]')
    card.send_keys(Keys.ENTER)
    _wait(browser, lambda d: d.execute_script("return document.getElementById('viewer').open"), "no viewer")
    assert browser.find_element(By.ID, "viewer-path").text == photo["source"]
    loaded = "const i = document.getElementById('viewer-image'); return i.complete && i.naturalWidth > 0"
    _wait(browser, lambda d: d.execute_script(loaded), "the full image did not load")
    assert browser.execute_script("return document.getElementById('viewer-image').naturalWidth") > 320
    browser.save_screenshot(str(tmp_path / "viewer.png"))
    browser.switch_to.active_element.send_keys(Keys.ESCAPE)
    _wait(browser, lambda d: not d.execute_script("return document.getElementById('viewer').open"), "still open")
    assert browser.switch_to.active_element.get_attribute("data-id") == photo["id"]

    # An image dropped on the page (a DataTransfer, as a drag from the desktop brings) is the query.
    browser.find_element(By.ID, "q").clear()
    rocket = _id_of(served, "rocket.jpg")
    drop = """
        const [id, done] = arguments;
        fetch('/image/' + id).then(r => r.blob()).then(blob => {
            const data = new DataTransfer();
            data.items.add(new File([blob], 'rocket.webp', {type: blob.type}));
            const zone = document.getElementById('drop-zone');
            zone.dispatchEvent(new DragEvent('drop', {dataTransfer: data, bubbles: true, cancelable: true}));
            done(true);
        });
    """
    browser.execute_async_script(drop, rocket)
    assert _search_for(browser, rocket)[0] == rocket
    assert browser.find_element(By.ID, "image-name").text == "rocket.webp"
    browser.save_screenshot(str(tmp_path / "dropped.png"))

    # Pasted (a ClipboardEvent carrying a file) and chosen with the file input: the same.
    browser.find_element(By.ID, "image-clear").click()
    astronaut = _id_of(served, "astronaut.png")
    paste = """
        const [id, done] = arguments;
        fetch('/image/' + id).then(r => r.blob()).then(blob => {
            const data = new DataTransfer();
            data.items.add(new File([blob], 'pasted.webp', {type: blob.type}));
            document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: data, bubbles: true, cancelable: true}));
            done(true);
        });
    """
    browser.execute_async_script(paste, astronaut)
    assert _search_for(browser, astronaut)[0] == astronaut
    browser.find_element(By.ID, "image-input").send_keys(str(served.photos / "chelsea.jpg"))
    chelsea = _id_of(served, "chelsea.jpg")
    assert _search_for(browser, chelsea)[0] == chelsea
    assert browser.find_element(By.ID, "image-name").text == "chelsea.jpg"

    # A minimum score nothing reaches: "no match", and no results.
    browser.find_element(By.ID, "image-clear").click()
    browser.find_element(By.ID, "min-score").send_keys("0.99")
    browser.find_element(By.ID, "q").send_keys("a cup of coffee", Keys.ENTER)
    _wait(browser, lambda d: _status(d)[1] == "no-match", "no 'no match'")
    assert _status(browser)[0].startswith("No match") and _cards(browser) == []
    browser.save_screenshot(str(tmp_path / "no-match.png"))

    # reason mode's document: the reasoning shown with its inspection and answer marked, and so are their cards.
    document = served.client.search(q="a rocket", k=4)[1]
    document.update(
        rerank="reason",
        reasoning="A launch pad at night.<inspection-index-start>2<inspection-index-end> Lights, a tower.<answer>1</answer>",
        inspected=[1],
    )
    document["hits"][0]["chosen"] = document["hits"][1]["inspected"] = True
    browser.execute_script("render(arguments[0])", document)
    marks = browser.execute_script(
        "return [...document.querySelectorAll('#reasoning-text mark')].map(m => [m.className, m.textContent])"
    )
    assert marks == [["inspection", "inspect [2]"], ["answer", "★ answer [1]"]]
    assert browser.find_element(By.ID, "reasoning").is_displayed()
    assert "Inspected in detail: #2" in browser.find_element(By.ID, "reasoning-inspected").text
    cards = browser.find_elements(By.CSS_SELECTOR, "#results .card")
    assert "chosen" in cards[0].get_attribute("class") and "★ answer" in cards[0].text
    assert "inspected" in cards[1].get_attribute("class") and "· inspected" in cards[1].text
    browser.save_screenshot(str(tmp_path / "reasoning.png"))

    # "/" brings the keyboard back to the search box.
    browser.find_element(By.TAG_NAME, "body").click()
    browser.find_element(By.TAG_NAME, "body").send_keys("/")
    assert browser.switch_to.active_element.get_attribute("id") == "q"
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
