"""Screenshots of ``xreg serve`` for the docs: the upload result, the gallery, the review queue.

Why a script: the pictures in ``docs/screenshots/`` should show the app as
it really renders, and be reproducible after any template change, without
anyone's films. So it builds everything from scratch in a temporary folder:

1. ``xreg synth`` phantoms only (never real patient films, never ``../shared``):
   about 30 films at 512 px, a few with hardware, two that are not radiographs
   of a body part, plus one more film kept aside for the upload page;
2. ``xreg sort`` with the shipped default weights, so confidences, folders and
   the ``_review`` queue are what a user would see;
3. ``xreg serve`` (uvicorn on a free loopback port, in a thread) with a fixed
   reviewer name, so the review forms are shown;
4. Debian's headless chromium (``chromium chromium-driver``) via Selenium at
   1280x900 uploads the kept film and saves ``upload.png``, then
   ``gallery.png`` and ``review.png``, each shrunk losslessly or, if still over
   the size budget, palette-quantised with Pillow.

Usage: ``.venv/bin/python scripts/screenshots.py [--out docs/screenshots]``.
"""

from __future__ import annotations

import argparse
import csv
import io
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from xreg.config import SortOptions
from xreg.model.checkpoint import default_weights
from xreg.sort.runner import run_sort
from xreg.synth.generate import generate_dataset

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait

ROOT = Path(__file__).resolve().parent.parent
WINDOW = (1280, 900)  # the viewport, as captured
MAX_BYTES = 300 * 1024
WAIT_S = 60.0
REVIEWER = "Dr Demo"
# The film kept aside for the upload page: in scope, a clear case, a PNG.
UPLOAD_PART = "knee"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--count", type=int, default=30, help="phantoms to sort")
    parser.add_argument("--size", type=int, default=512, help="phantom size in pixels")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="xreg-screenshots-") as tmp:
        work = Path(tmp)
        upload = build_folder(work, args.count, args.size, args.seed)
        with serving(work / "out") as base, browser() as driver:
            shoot(driver, base, upload, args.out)
    for name in ("upload", "gallery", "review"):
        path = args.out / f"{name}.png"
        print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: "
              f"{path.stat().st_size // 1024} KiB")
    return 0


def build_folder(work: Path, count: int, size: int, seed: int) -> Path:
    """Sort ``count`` phantoms into ``work/out``; return one more film, kept for upload."""
    synth = work / "synth"
    generate_dataset(synth, count + 1, seed=seed, size=size, out_of_scope=2,
                     instrument_rate=0.25, workers=2)
    with (synth / "labels.csv").open() as f:
        rows = list(csv.DictReader(f))
    chosen = next((r for r in rows if r["body_part"] == UPLOAD_PART
                   and r["path"].endswith(".png")), rows[-1])
    kept = work / "upload" / Path(chosen["path"]).name
    kept.parent.mkdir()
    shutil.move(synth / chosen["path"], kept)
    inputs = work / "in"
    inputs.mkdir()
    for folder in ("images", "out_of_scope"):
        if (synth / folder).is_dir():
            shutil.copytree(synth / folder, inputs / folder)
    result = run_sort(inputs, work / "out", SortOptions(min_age=0, workers=2, device="cpu"))
    print(f"sorted {count} phantoms and 2 non-radiographs with {default_weights().name}: "
          f"{dict(result.counts)}", flush=True)
    return kept


@contextmanager
def serving(out: Path) -> Iterator[str]:
    """``xreg serve OUT --reviewer ...`` on a free loopback port, in a thread."""
    from xreg.serve.app import create_app
    from xreg.serve.background import serve_in_background
    from xreg.serve.config import ServeConfig

    with serve_in_background(create_app(ServeConfig(out_root=out, reviewer=REVIEWER))) as url:
        yield url


@contextmanager
def browser() -> Iterator[WebDriver]:
    """Debian's headless chromium through its chromedriver (no Selenium Manager download)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        raise SystemExit("needs selenium: pip install -e '.[test,serve]'") from None
    driver_path, chromium = shutil.which("chromedriver"), shutil.which("chromium")
    if driver_path is None or chromium is None:
        raise SystemExit("needs Debian's chromium and chromedriver: "
                         "apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--hide-scrollbars", "--force-device-scale-factor=1",
                f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        # --window-size is the outer window: grow it so the viewport itself is WINDOW.
        inner = driver.execute_script("return [window.innerWidth, window.innerHeight];")
        outer = driver.get_window_size()
        driver.set_window_size(outer["width"] + WINDOW[0] - inner[0],
                               outer["height"] + WINDOW[1] - inner[1])
        yield driver
    finally:
        driver.quit()


def shoot(driver: WebDriver, base: str, upload: Path, out: Path) -> None:
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, WAIT_S, poll_frequency=0.1)

    driver.get(f"{base}/upload")
    driver.find_element(By.ID, "files").send_keys(str(upload))
    driver.execute_script("window.__xreg_old_page = true;")  # a new document has no mark
    driver.find_element(By.ID, "analyse").click()
    WebDriverWait(driver, WAIT_S, poll_frequency=0.1,
                  ignored_exceptions=(WebDriverException,)).until(
        lambda d: d.execute_script("return window.__xreg_old_page === undefined"
                                   " && document.readyState === 'complete';"),
        "no page came back from the upload")
    if not driver.find_elements(By.CSS_SELECTOR, "ul.results .prediction"):
        body = driver.find_element(By.TAG_NAME, "body").text
        raise SystemExit(f"the upload page did not show a prediction: {body[:300]}")
    save(driver, out / "upload.png", wait)

    driver.get(f"{base}/gallery")
    save(driver, out / "gallery.png", wait)

    driver.get(f"{base}/review")
    if driver.find_elements(By.ID, "reviewer-name") or \
            not driver.find_elements(By.CSS_SELECTOR, ".review-form"):
        raise SystemExit("the review page shows no review forms")
    save(driver, out / "review.png", wait)


_IMAGES = ("return Array.from(document.images).map(i => "
           "({complete: i.complete, width: i.naturalWidth, top: i.getBoundingClientRect().top}));")


def save(driver: WebDriver, path: Path, wait: WebDriverWait[WebDriver]) -> None:
    """Screenshot the viewport once its visible pictures have loaded; fit it in the budget."""
    driver.execute_script("window.scrollTo(0, 0);")

    def visible_loaded(d: WebDriver) -> bool:
        images: list[dict[str, float]] = d.execute_script(_IMAGES)
        shown = [i for i in images if i["top"] < WINDOW[1]]
        return all(i["complete"] and i["width"] > 0 for i in shown)

    wait.until(visible_loaded, f"pictures on {driver.current_url} did not load")
    write_small(driver.get_screenshot_as_png(), path)


def write_small(png: bytes, path: Path) -> None:
    """Write ``png`` optimised; palette-quantise, then shrink, while over MAX_BYTES."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    candidates = [image, image.quantize(colors=256, method=Image.Quantize.MEDIANCUT,
                                        dither=Image.Dither.NONE),
                  image.quantize(colors=128, method=Image.Quantize.MEDIANCUT,
                                 dither=Image.Dither.NONE)]
    scale = 1.0
    while True:
        for candidate in candidates:
            buffer = io.BytesIO()
            candidate.save(buffer, "PNG", optimize=True)
            if buffer.tell() <= MAX_BYTES:
                path.write_bytes(buffer.getvalue())
                return
        scale *= 0.85
        size = (round(image.width * scale), round(image.height * scale))
        smaller = image.resize(size, Image.Resampling.LANCZOS)
        candidates = [smaller.quantize(colors=128, method=Image.Quantize.MEDIANCUT,
                                       dither=Image.Dither.NONE)]


if __name__ == "__main__":
    sys.exit(main())
