"""`python -m ernievil2 serve` for real, driven by headless Chromium: type a query, and the result grid fills with
thumbnails that load.  Skipped (with the reason) where Chromium, chromedriver or selenium are absent."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import cv2
import numpy as np
import pytest
import yaml

from conftest import REPO, make_tiny_model

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tiny, tmp_path):
    pytest.importorskip("faiss", reason="faiss-cpu is not installed (pip install -e \".[search]\")")
    pytest.importorskip("uvicorn", reason="uvicorn is not installed (pip install -e \".[search]\")")
    from ernievil2.infer.engines import EagerEncoder
    from ernievil2.infer.gallery import load_embed_config, run_embed
    from ernievil2.search.index import build_index
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(8):
        rgb = np.full((48, 64, 3), (30 * i, 255 - 30 * i, 120), np.uint8)
        cv2.imwrite(str(photos / f"photo{i}.jpg"), rgb)
    cfg = load_embed_config(None, list({**tiny, "images": str(photos), "output_file": str(tmp_path / "g.npz")}.items()))
    run_embed(cfg, encoder=EagerEncoder(make_tiny_model(seed=5)))
    build_index(str(tmp_path / "g.npz"), tmp_path / "index", log=lambda _: None)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**tiny, "engine": "eager"}, allow_unicode=True), encoding="utf-8")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ernievil2", "serve", str(config), str(tmp_path / "index"),
                             "--port", str(port)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONPATH=os.path.join(REPO, "packages")))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                    assert json.load(response)["count"] == 8
                    break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"the server did not start: {proc.stdout.read().decode()[-2000:]}")
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="Chromium and chromedriver are not installed "
                                                            "(Debian: apt-get install chromium chromium-driver)")
def test_typing_a_query_shows_a_grid_of_result_images(server):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(server + "/")
        box = driver.find_element(By.ID, "query")
        box.send_keys("红色的汽车停在路边")
        k = driver.find_element(By.ID, "k")
        k.clear()
        k.send_keys("5")
        driver.find_element(By.ID, "search-button").click()
        loaded = ("return Array.from(document.querySelectorAll('#results figure img'))"
                  ".filter(img => img.complete && img.naturalWidth > 0).length")
        WebDriverWait(driver, 60).until(lambda d: d.execute_script(loaded) == 5)
        captions = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#results figcaption")]
        assert len(captions) == 5 and all("photo" in c for c in captions)
        assert "5 results" in driver.find_element(By.ID, "status").text
        # an empty query shows the service's error, not a broken page
        box.clear()
        box.send_keys(" ")
        driver.find_element(By.ID, "search-button").click()
        WebDriverWait(driver, 30).until(lambda d: "empty" in d.find_element(By.ID, "status").text)
    finally:
        driver.quit()
