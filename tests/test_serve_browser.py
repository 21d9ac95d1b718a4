"""`retr serve` in a real browser: Debian's chromium (driven by chromedriver through selenium) loads the page from a
live `retr serve` on loopback, uploads a photo, reads the ranked results from the page, clicks one to search with
it, and saves a screenshot. Skipped, with the reason, only where chromium, chromedriver or selenium is missing
(`.ci/run` installs them when it can).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import run, write_families

CHROMIUM = os.environ.get("RETR_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("RETR_CHROMEDRIVER", "/usr/bin/chromedriver")
FAST = ["--backbone", "alexnet", "--weights", "none", "--pooling", "mac", "--device", "cpu", "--batch-size", "8"]


def _missing() -> str | None:
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return f"{path} not found: apt-get install -y {package} (or set RETR_CHROMIUM / RETR_CHROMEDRIVER)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: pip install -e '.[test]'"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if proc.poll() is not None:
            raise AssertionError(f"retr serve exited: {proc.communicate()[1][-2000:]}")
        try:
            with urllib.request.urlopen(url + "health", timeout=2) as r:
                if json.load(r)["status"] == "ok":
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("retr serve did not answer in time")


@pytest.fixture(scope="module")
def browser():
    reason = _missing()
    if reason:
        print(f"\nbrowser test skipped: {reason}")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="retr-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1200,900"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A live `retr serve` (a subprocess, as a user starts it) over 4 families x 7 images, on a free port."""
    if _missing():
        pytest.skip(_missing())
    tmp = tmp_path_factory.mktemp("browser")
    root, db = tmp / "photos", tmp / "photos.retr"
    write_families(root, 4)
    r = run("index", root, "--db", db, *FAST)
    assert r.exit_code == 0, r.output
    port = free_port()
    code = "import torch; torch.set_num_threads(1); from retr.cli import main; main(prog_name='retr')"
    proc = subprocess.Popen([sys.executable, "-c", code, "serve", "--db", str(db), "--port", str(port),
                             "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_ready(url, proc)
        yield url, root, tmp
    finally:
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        # a clean shutdown (uvicorn re-raises the SIGTERM it handled), not an abort
        assert proc.returncode in (0, -signal.SIGTERM), err[-2000:]
        assert "Traceback" not in err and "Application shutdown complete" in err, err[-2000:]
        assert '"POST /search" 200' in err  # one log line per request


def results(driver) -> list[dict]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#results .result')].map(f => ({rank: +f.dataset.rank, "
        "id: +f.dataset.id, path: f.dataset.path, score: +f.dataset.score, "
        "thumb: f.querySelector('img').complete && f.querySelector('img').naturalWidth > 0}))")


@pytest.mark.slow
def test_the_page_finds_a_dropped_photo_first_and_searches_again_on_click(browser, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, root, tmp = server
    wait = WebDriverWait(browser, 60)
    browser.get(url)
    wait.until(lambda d: "28 images" in d.find_element(By.ID, "info").text)
    info = browser.find_element(By.ID, "info").text
    assert "bytes per vector" in info and "smaller than its 1024-byte float32 descriptor" in info, info

    query = tmp / "my photo.png"  # a copy under another name: its original must come first
    shutil.copyfile(root / "f02/orig.png", query)
    browser.find_element(By.ID, "k").clear()
    browser.find_element(By.ID, "k").send_keys("8")
    browser.find_element(By.ID, "file").send_keys(str(query))
    wait.until(lambda d: len(results(d)) == 8 and all(r["thumb"] for r in results(d)))
    got = results(browser)
    assert [r["rank"] for r in got] == list(range(1, 9))
    assert got[0]["path"] == "f02/orig.png", got
    assert got[0]["score"] >= got[1]["score"] >= got[-1]["score"]
    status = browser.find_element(By.ID, "status").text
    assert "8 results for my photo.png" in status, status

    # the API answers the same ranking for the same upload
    import httpx

    api = httpx.post(url + "search", files={"image": ("my photo.png", query.read_bytes())}, data={"k": "8"}).json()
    assert [(m["rank"], m["id"], m["path"]) for m in api["results"]] == [(r["rank"], r["id"], r["path"])
                                                                        for r in got]

    shot = tmp / "serve-screenshot.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("RETR_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["RETR_SCREENSHOT"])

    clicked = got[3]
    browser.find_elements(By.CSS_SELECTOR, "#results .result")[3].click()
    wait.until(lambda d: f"for id:{clicked['id']}" in d.find_element(By.ID, "status").text)
    again = results(browser)
    assert again[0]["id"] == clicked["id"] and again[0]["path"] == clicked["path"], again

    # a bad upload is refused on the page, and the page goes on
    bad = tmp / "broken.png"
    bad.write_bytes(b"not an image")
    browser.find_element(By.ID, "file").send_keys(str(bad))
    wait.until(lambda d: "cannot identify" in d.find_element(By.ID, "status").text)
    assert "error" in browser.find_element(By.ID, "status").get_attribute("class")
    browser.find_element(By.ID, "file").send_keys(str(query))
    wait.until(lambda d: results(d) and results(d)[0]["path"] == "f02/orig.png")
    logs = [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "broken.png" not in e["message"]
            and "/search" not in e["message"]]
    assert logs == [], logs
    assert Path(shot).is_file()
