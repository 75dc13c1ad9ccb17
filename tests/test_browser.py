"""The try-it page and /docs in a real browser: Debian's chromium driven through chromium-driver by Selenium.

One server (`python -m service serve`) on loopback serves the session's quick demo build (the `demo`
fixture of conftest.py) and one headless Chromium visits it. Chromium's fake media flags play an espeak-ng
recording into the page's microphone. Every request the browser makes is collected from its DevTools
network log, and the last test checks that none went to another host.

Cards are screenshotted after their result into a temporary folder; to refresh the README's pictures
with the full demo models:
    DEEPSERVE_BROWSER_REPOSITORY=/tmp/demo_full DEEPSERVE_SCREENSHOTS_DIR=docs/img \
        .venv/bin/python -m pytest tests/test_browser.py
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import soundfile
from PIL import Image, ImageDraw
from server import Server, run_server
from task_models import spell, write_speech_model

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(900),  # the first test may pay for the session's demo build
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver"),
    pytest.mark.skipif(not shutil.which("espeak-ng"), reason="needs espeak-ng for the microphone recording"),
]
PHRASE = "set a timer for five minutes"
"""Spoken into the fake microphone: words from the speech demo model's vocabulary (commands, digits)."""
POSITIVE = "I love this, it is wonderful"
"""A clearly positive sentence that the quick text model (about 0.53 held-out accuracy) also ranks
positive."""
WAIT_S = 60


@pytest.fixture(scope="module")
def repository(request: pytest.FixtureRequest) -> Path:
    given = os.environ.get("DEEPSERVE_BROWSER_REPOSITORY")
    if given:
        return Path(given)
    pytest.importorskip("torch")
    repo, built = request.getfixturevalue("demo")
    missing = {"cnn", "text", "speech"} - set(built)
    if missing:
        pytest.skip(f"the demo build has no {sorted(missing)}")
    return Path(repo)


@pytest.fixture(scope="module")
def server(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with run_server(repository, log_dir=tmp_path_factory.mktemp("browser-server")) as running:
        yield running


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("speech") / "phrase.wav"
    subprocess.run(["espeak-ng", "-w", str(path), PHRASE], check=True)
    return path


class Browser:
    """One headless Chromium for the module, and every URL it requested so far."""

    def __init__(self, driver: WebDriver) -> None:
        self.driver = driver
        self.urls: list[str] = []

    def collect_requests(self) -> list[str]:
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                self.urls.append(message["params"]["request"]["url"])
        return self.urls

    def open(self, url: str) -> None:
        self.driver.get(url)
        self.wait(
            lambda d: (
                d.find_elements(By.CSS_SELECTOR, "#models .card")
                or d.find_elements(By.CSS_SELECTOR, ".server.error")
            )
        )

    def on_page(self, server: Server) -> None:
        """Open the page unless the browser is on it (each test also runs alone: pytest -k)."""
        on_page = self.driver.current_url.rstrip("/") == server.url
        if not on_page or not self.driver.find_elements(By.ID, "models"):
            self.open(server.url + "/")

    def wait(self, condition: Any, timeout: float = WAIT_S) -> Any:
        return WebDriverWait(self.driver, timeout).until(condition)

    def card(self, model: str) -> WebElement:
        return self.driver.find_element(By.ID, f"model-{model}")

    def button(self, model: str, text: str) -> WebElement:
        return self.driver.find_element(
            By.XPATH, f"//*[@id='model-{model}']//button[normalize-space()='{text}']"
        )

    def settled(self, model: str) -> str:
        """Wait until the card shows a result or an error; returns 'done' or 'error'."""
        card = self.card(model)
        return str(
            self.wait(
                lambda _: (
                    card.get_attribute("data-state") in ("done", "error")
                    and card.get_attribute("aria-busy") is None
                    and card.get_attribute("data-state")
                )
            )
        )


@pytest.fixture(scope="module")
def browser(recording: Path) -> Iterator[Browser]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [
        "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1500",
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={recording}%noloop",
        "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield Browser(driver)
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("DEEPSERVE_SCREENSHOTS_DIR")
    path = Path(given) if given else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def screenshot(browser: Browser, model: str, shots: Path) -> Path:
    path = shots / f"ui-{model}.png"
    card = browser.card(model)
    browser.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", card)
    card.screenshot(str(path))
    with Image.open(path) as image:  # a real picture of the card, not an empty box
        assert image.width > 300 and image.height > 300
    return path


def test_page_lists_every_model_with_task_provider_and_held_out_metrics(
    browser: Browser, server: Server
) -> None:
    browser.open(server.url + "/")
    listed = httpx.get(server.url + "/v1/models").json()["models"]
    cards = browser.driver.find_elements(By.CSS_SELECTOR, "#models .card")
    assert [c.get_attribute("data-model") for c in cards] == [m["name"] for m in listed]
    cnn = httpx.get(server.url + "/v2/models/cnn").json()["parameters"]
    text = browser.card("cnn").text
    assert "image-classification" in text and "ready" in text
    assert cnn["providers"][0].replace("ExecutionProvider", "") in text
    assert f"accuracy {100 * cnn['provenance']['metrics']['accuracy']:.1f}%" in text
    assert "ready" in browser.driver.find_element(By.ID, "server").text


def draw_seven(browser: Browser, model: str) -> None:
    """One stroke with mouse events on the model's canvas: the bar of a 7, then its stem."""
    canvas = browser.card(model).find_element(By.TAG_NAME, "canvas")
    browser.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
    step = canvas.size["width"] / 224  # offsets are from the canvas centre, in CSS pixels
    chain = ActionChains(browser.driver).move_to_element_with_offset(canvas, int(-55 * step), int(-70 * step))
    chain.click_and_hold()
    for _ in range(10):
        chain.move_by_offset(int(11 * step), 0)
    for _ in range(15):
        chain.move_by_offset(int(-4 * step), int(10 * step))
    chain.release().perform()


def test_drawing_a_seven_shows_7_first(browser: Browser, server: Server, shots: Path) -> None:
    browser.on_page(server)
    draw_seven(browser, "cnn")
    assert browser.settled("cnn") == "done"
    first = browser.card("cnn").find_element(By.CSS_SELECTOR, ".result .bars li .label")
    assert first.text == "7"
    assert "ms" in browser.card("cnn").find_element(By.CSS_SELECTOR, ".timing").text
    explain = browser.card("cnn").find_elements(By.XPATH, ".//button[normalize-space()='Explain']")
    if explain:  # shown when the server has POST /v1/models/{name}/explain
        explain[0].click()
        assert browser.settled("cnn") == "done"
        heat = browser.card("cnn").find_element(By.CSS_SELECTOR, "img.heat")
        browser.wait(lambda _: heat.is_displayed() and heat.get_attribute("naturalWidth") not in (None, "0"))
    screenshot(browser, "cnn", shots)


def test_a_positive_sentence_shows_positive_first(browser: Browser, server: Server, shots: Path) -> None:
    browser.on_page(server)
    area = browser.card("text").find_element(By.TAG_NAME, "textarea")
    area.clear()
    area.send_keys(POSITIVE)
    browser.button("text", "Classify").click()
    assert browser.settled("text") == "done"
    labels = [e.text for e in browser.card("text").find_elements(By.CSS_SELECTOR, ".result .bars .label")]
    assert labels[0] == "positive"
    answer = httpx.post(server.url + "/v1/models/text/predict", json={"text": POSITIVE}).json()
    assert labels == [x["label"] for x in answer["predictions"][0]["labels"]]
    explain = browser.card("text").find_elements(By.XPATH, ".//button[normalize-space()='Explain']")
    if explain:  # each word coloured by its score
        explain[0].click()
        assert browser.settled("text") == "done"
        words = [
            e.text for e in browser.card("text").find_elements(By.CSS_SELECTOR, ".explanation .words span")
        ]
        assert {w.strip(",") for w in POSITIVE.split()} <= {w.strip(",") for w in words}
    screenshot(browser, "text", shots)


def test_microphone_recording_is_transcribed_as_the_file_itself(
    browser: Browser, server: Server, recording: Path, shots: Path
) -> None:
    browser.on_page(server)
    direct = httpx.post(
        server.url + "/v1/models/speech/predict", files={"file": recording.read_bytes()}
    ).json()
    spoken_s = direct["predictions"][0]["duration_s"]
    record = browser.button("speech", "Record")
    record.click()
    card = browser.card("speech")
    browser.wait(lambda _: float(card.get_attribute("data-recording") or 0) > spoken_s + 0.4)
    record.click()  # now labelled "Stop"
    assert browser.settled("speech") == "done", card.find_element(By.CSS_SELECTOR, ".error").text
    shown = card.find_element(By.CSS_SELECTOR, ".result .transcript").get_attribute("data-text")
    assert shown == direct["predictions"][0]["text"]
    duration = card.find_element(By.CSS_SELECTOR, ".result .meta").text
    assert float(duration.split(" s of audio")[0]) >= spoken_s  # the whole phrase reached the server
    uploads = [u for u in browser.collect_requests() if u.endswith("/v1/models/speech/predict")]
    assert uploads, "the page sent no recording"
    screenshot(browser, "speech", shots)


def test_a_corrupt_upload_shows_the_servers_error(browser: Browser, server: Server, tmp_path: Path) -> None:
    browser.on_page(server)
    png = io.BytesIO()
    image = Image.new("L", (40, 40), 255)
    ImageDraw.Draw(image).line([(5, 5), (35, 35)], fill=0, width=4)
    image.save(png, format="PNG")
    corrupt = tmp_path / "digit.png"
    corrupt.write_bytes(png.getvalue()[: len(png.getvalue()) // 2])  # cut in half
    expected = httpx.post(server.url + "/v1/models/mlp/predict",
                          files={"file": ("digit.png", corrupt.read_bytes(), "image/png")}).json()["error"]
    browser.card("mlp").find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(corrupt))
    assert browser.settled("mlp") == "error"
    error = browser.card("mlp").find_element(By.CSS_SELECTOR, ".error")
    assert error.is_displayed() and error.text == expected
    assert browser.card("mlp").find_element(By.CSS_SELECTOR, ".result").text == ""


def test_every_other_card_answers_its_own_input(
    browser: Browser, server: Server, recording: Path, shots: Path
) -> None:
    """The cards not tried above (mlp, and whatever task types the build has) each get an input and answer."""
    browser.on_page(server)
    tried = {"cnn", "text", "speech"}
    for model in httpx.get(server.url + "/v1/models").json()["models"]:
        name, task = model["name"], model["task"]
        if name in tried or model["state"] != "READY":
            continue
        card = browser.card(name)
        if task in ("image-classification", "anomaly-detection"):
            draw_seven(browser, name)
        elif task in ("speech-recognition", "audio-classification"):
            card.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(recording))
        elif task in ("text-classification", "embedding", "image-generation"):
            browser.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", card)
            card.find_element(By.XPATH, ".//div[contains(@class,'row')]/button[1]").click()
        else:
            continue  # no widget: the card says to use /v2 infer
        assert browser.settled(name) == "done", (name, card.find_element(By.CSS_SELECTOR, ".error").text)
        assert card.find_element(By.CSS_SELECTOR, ".result").text.strip() or card.find_elements(
            By.CSS_SELECTOR, ".result img"), name
        screenshot(browser, name, shots)


def test_controls_are_labelled_and_the_page_fits_a_phone(browser: Browser, server: Server) -> None:
    unnamed = browser.driver.execute_script("""
        const controls = '#models button, #models input, #models textarea, #models canvas';
        return [...document.querySelectorAll(controls)]
          .filter((e) => !(e.textContent.trim() || e.getAttribute('aria-label')
                           || (e.labels && e.labels.length)))
          .map((e) => e.outerHTML.slice(0, 80));""")
    assert unnamed == []
    browser.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                   {"width": 375, "height": 812, "deviceScaleFactor": 2, "mobile": True})
    try:
        browser.open(server.url + "/")
        overflow = browser.driver.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0
        canvas = browser.card("cnn").find_element(By.TAG_NAME, "canvas")
        assert 200 <= canvas.size["width"] <= 375
    finally:
        browser.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_docs_render_offline_and_try_it_out_uploads_a_png(
    browser: Browser, server: Server, tmp_path: Path
) -> None:
    schema = httpx.get(server.url + "/openapi.json").json()
    operations = sum(len(methods) for methods in schema["paths"].values())
    browser.driver.get(server.url + "/docs")
    try:
        browser.wait(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) == operations, timeout=30)
    except TimeoutException:
        pytest.fail(f"/docs shows {len(browser.driver.find_elements(By.CSS_SELECTOR, '.opblock'))} of "
                    f"{operations} operations")
    op = browser.driver.find_element(
        By.XPATH, "//div[contains(@class,'opblock')][.//*[@data-path='/v1/models/{name}/predict']]")
    op.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
    browser.wait(lambda _: op.find_elements(By.CSS_SELECTOR, ".try-out__btn"))
    op.find_element(By.CSS_SELECTOR, ".try-out__btn").click()
    op.find_element(By.CSS_SELECTOR, "input[placeholder='name']").send_keys("cnn")
    digit = tmp_path / "digit.png"
    image = Image.new("L", (28, 28), 0)
    ImageDraw.Draw(image).line([(8, 6), (20, 6), (12, 22)], fill=255, width=3)
    image.save(digit)
    op.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(digit))
    op.find_element(By.CSS_SELECTOR, "button.execute").click()
    body = browser.wait(lambda _: [e.text for e in op.find_elements(
        By.CSS_SELECTOR, ".live-responses-table .response-col_description pre") if e.text.strip()])
    answer = json.loads(body[0])
    assert answer["model"] == "cnn" and answer["predictions"][0]["labels"]
    status = op.find_element(By.CSS_SELECTOR, ".live-responses-table tr.response .response-col_status")
    assert status.text.strip() == "200"


def test_the_browser_asked_no_other_host(browser: Browser, server: Server) -> None:
    urls = browser.collect_requests()
    assert any(u.startswith(server.url + "/ui/assets/swagger-ui-bundle.js") for u in urls)
    assert any(u.startswith(server.url + "/ui/static/app.js") for u in urls)
    foreign = sorted({u for u in urls if urlsplit(u).scheme not in ("data", "blob")
                      and urlsplit(u).netloc != urlsplit(server.url).netloc})
    assert foreign == []
    errors = [e["message"] for e in browser.driver.get_log("browser") if e["level"] == "SEVERE"
              and "/predict" not in e["message"]]  # the corrupt upload's 400 is logged by the browser
    assert errors == []


def test_transcript_words_play_their_own_span(browser: Browser, repo: Path, tmp_path: Path) -> None:
    """A tiny CTC model that spells DC levels (tests/task_models.py) gives words with time spans; clicking
    a word plays that span from the decoded recording (Web Audio) and marks the word while it plays."""
    write_speech_model(repo, "speech")
    wav = tmp_path / "bad-dab.wav"
    buffer = io.BytesIO()
    soundfile.write(buffer, spell("bad dab", frames_per_symbol=20), 16000, format="WAV")
    wav.write_bytes(buffer.getvalue())
    with run_server(repo, log_dir=tmp_path) as tiny:
        browser.open(tiny.url + "/")
        browser.card("speech").find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(wav))
        assert browser.settled("speech") == "done"
        words = browser.card("speech").find_elements(By.CSS_SELECTOR, ".transcript .word")
        assert [w.text for w in words] == ["bad", "dab"]
        assert words[1].get_attribute("title").startswith("0.88–1.52 s")
        words[1].click()
        browser.wait(lambda _: "playing" in (words[1].get_attribute("class") or ""))
        browser.wait(lambda _: "playing" not in (words[1].get_attribute("class") or ""))  # the span's end
