"""``xreg serve`` end to end in a real headless browser (Debian's chromium via Selenium).

Why a browser and not only FastAPI's TestClient: the app has no JavaScript,
so everything a person does is a plain HTML form, and only a browser proves
the forms as rendered actually work together: the CSRF cookie the gate sets
is echoed by the hidden field, the ``Origin`` a real browser sends passes the
same-origin check, the 303 redirects land on the right page, the reviewer
cookie sticks, a file input really uploads multipart data, and thumbnails
decode as images under the app's Content-Security-Policy. The one page with
a script, review at speed (``static/review.js``), is driven by real
keystrokes, and once more with JavaScript turned off, where its forms must
do the same work.

Each test sorts a few small phantoms (tiny random weights, so predictions
are meaningless but fast) into a fresh OUT, serves it with uvicorn on a free
loopback port in a background thread, and drives one shared chromium. The
assertions read the registry and the disk directly, not only the pages.

Needs Debian's ``chromium chromium-driver`` and the ``selenium`` package (the
``test`` extra); without them these tests skip.
"""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from xreg.config import SortOptions
from xreg.model.checkpoint import load_checkpoint
from xreg.sort.runner import run_sort
from xreg.synth.generate import generate_dataset

try:
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:  # pragma: no cover - depends on the environment
    webdriver = None  # type: ignore[assignment]

_MISSING = ("needs a headless browser: install Debian's `chromium chromium-driver` "
            "(apt-get install chromium chromium-driver) and the selenium package "
            "(pip install -e '.[test,serve]')")
_WAIT_S = 20.0
NOTE = "corrected by the browser test"


# -- the browser ---------------------------------------------------------------------------


@contextmanager
def chromium(*, javascript: bool = True) -> Iterator[WebDriver]:
    """A headless chromium (``javascript=False``: as a browser with scripts turned off)."""
    if webdriver is None:
        pytest.skip(f"selenium is not installed; {_MISSING}")
    driver_path, binary = shutil.which("chromedriver"), shutil.which("chromium")
    if driver_path is None or binary is None:
        pytest.skip(f"chromedriver or chromium is not on PATH; {_MISSING}")
    pytest.importorskip("uvicorn", reason="the serve extra is not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    if not javascript:
        options.add_experimental_option(
            "prefs", {"profile.managed_default_content_settings.javascript": 2})
    try:
        driver = webdriver.Chrome(service=Service(executable_path=driver_path),
                                  options=options)
    except WebDriverException as exc:
        pytest.fail(f"chromium is installed but would not start: {exc.msg}")
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    """One headless chromium for the whole module (starting one costs a second or two)."""
    with chromium() as driver:
        yield driver


def fresh(driver: WebDriver) -> WebDriver:
    """The shared browser with no cookies left from another test's server."""
    driver.delete_all_cookies()
    return driver


def submit(driver: WebDriver, button: WebElement, then: tuple[str, str]) -> WebElement:
    """Click a form's submit button; wait for the next page and its element ``then``.

    The page is marked first: a new document has no mark. (Element staleness
    races the navigation: chromedriver may then answer with other errors.)
    """
    driver.execute_script("window.__xreg_old_page = true;")
    button.click()
    WebDriverWait(driver, _WAIT_S, poll_frequency=0.1,
                  ignored_exceptions=(WebDriverException,)).until(
        lambda d: d.execute_script("return window.__xreg_old_page === undefined"
                                   " && document.readyState === 'complete';"),
        f"no new page loaded after submitting (now at {driver.current_url})")
    found = driver.find_elements(*then)
    if not found:
        pytest.fail(f"no {then[1]} after submitting: {page_error(driver)}")
    return found[0]


def page_error(driver: WebDriver) -> str:
    """The message of an error page, to say why an expected element is missing."""
    found = driver.find_elements(By.ID, "message")
    if found:
        return f"{driver.title}: {found[0].text}"
    body = driver.find_elements(By.TAG_NAME, "body")
    return f"{driver.title}: {body[0].text[:500] if body else driver.page_source[:500]}"


# -- the phantom folder and the server ---------------------------------------------------


@dataclass(frozen=True)
class Phantoms:
    weights: Path
    body_parts: tuple[str, ...]
    sure: Path  # sorted with no confidence floor: they land in body-part folders
    unsure: Path  # sorted with an unreachable floor: they land in _review
    upload: Path  # never sorted: dropped on the upload page


@pytest.fixture(scope="module")
def phantoms(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Phantoms:
    """Nine small phantoms in three groups (generated once for the module)."""
    root = tmp_path_factory.mktemp("phantoms")
    generate_dataset(root / "synth", 9, seed=11, size=160, workers=1)
    films = sorted(p for p in (root / "synth" / "images").iterdir() if p.is_file())
    assert len(films) == 9
    groups = {"sure": films[:4], "unsure": films[4:8], "upload": films[8:]}
    for name, members in groups.items():
        (root / name).mkdir()
        for film in members:
            shutil.copy2(film, root / name / film.name)
    upload = root / "upload" / films[8].name
    labels = tuple(load_checkpoint(tiny_weights).card.head("body_part").labels)
    return Phantoms(tiny_weights, labels, root / "sure", root / "unsure", upload)


def sort_phantoms(phantoms: Phantoms, out: Path) -> Path:
    """A sorted OUT with films in body-part folders and in ``_review``."""
    # The random model disagrees with the phantoms' DICOM headers: no header check here.
    run_sort(phantoms.sure, out, SortOptions(weights=phantoms.weights, min_age=0,
                                              min_confidence=0.0, workers=1, device="cpu",
                                              header_check="off"))
    run_sort(phantoms.unsure, out, SortOptions(weights=phantoms.weights, min_age=0,
                                                min_confidence=1.0, workers=1, device="cpu"))
    with registry(out) as db:
        statuses = dict(db.execute("SELECT status, COUNT(*) FROM images GROUP BY status"))
    assert statuses == {"sorted": 4, "review": 4}, statuses
    return out


@contextmanager
def registry(out: Path) -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(out / "registry.sqlite")
    db.row_factory = sqlite3.Row
    try:
        yield db
    finally:
        db.close()


@contextmanager
def serving(out: Path, weights: Path, **config: Any) -> Iterator[str]:
    """``xreg serve OUT`` with uvicorn on a free loopback port, in a thread; its base URL."""
    from xreg.serve.app import create_app
    from xreg.serve.background import serve_in_background
    from xreg.serve.config import ServeConfig

    with serve_in_background(create_app(ServeConfig(out_root=out, weights=weights,
                                                    **config))) as url:
        yield url


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def loaded_images(driver: WebDriver, css: str) -> list[dict[str, Any]]:
    """Every ``img`` matching ``css``, scrolled into view so ``loading=lazy`` fetches it,
    once all have finished loading (or failed): src, complete, naturalWidth."""
    script = ("return Array.from(document.querySelectorAll(arguments[0])).map(i => "
              "{i.scrollIntoView(); return {src: i.src, complete: i.complete, "
              "width: i.naturalWidth};});")
    WebDriverWait(driver, _WAIT_S, poll_frequency=0.1).until(
        lambda d: all(i["complete"] for i in d.execute_script(script, css)))
    images: list[dict[str, Any]] = driver.execute_script(script, css)
    return images


# -- the tests ---------------------------------------------------------------------------


def test_upload_then_review_and_apply_moves_the_film(
        browser: WebDriver, phantoms: Phantoms, tmp_path: Path) -> None:
    """Upload → prediction; review queue → correct a body part; apply → the film moves."""
    out = sort_phantoms(phantoms, tmp_path / "out")
    driver = fresh(browser)
    with serving(out, phantoms.weights) as base:
        # 1. Upload a film that is not in the registry: analysed, shown, not placed.
        driver.get(f"{base}/upload")
        driver.find_element(By.ID, "files").send_keys(str(phantoms.upload))
        shown = submit(driver, driver.find_element(By.ID, "analyse"),
                       (By.CSS_SELECTOR, "ul.results"))
        assert "What the model says" in driver.page_source, page_error(driver)
        parts = [e.text for e in shown.find_elements(By.CSS_SELECTOR, ".body-part")]
        assert len(parts) == 1 and parts[0] in phantoms.body_parts, parts
        name = shown.find_element(By.CSS_SELECTOR, ".name").text
        assert name == phantoms.upload.name
        overlays = loaded_images(driver, "ul.results img")
        assert overlays and all(i["width"] > 0 for i in overlays), overlays
        assert driver.find_elements(By.ID, "add"), "no button to keep the upload"
        with registry(out) as db:
            assert db.execute("SELECT COUNT(*) FROM images").fetchone()[0] == 8
            assert db.execute("SELECT 1 FROM images WHERE sha256 = ?",
                              (sha256_file(phantoms.upload),)).fetchone() is None

        # 2. The review queue: give a name (no --reviewer), then correct the first film.
        driver.get(f"{base}/review")
        if driver.find_elements(By.ID, "reviewer-name"):
            driver.find_element(By.ID, "reviewer-name").send_keys("Dr Phantom")
            submit(driver, driver.find_element(By.ID, "reviewer-submit"),
                   (By.ID, "reviewer"))
        assert driver.find_element(By.ID, "reviewer").text == "Dr Phantom"
        assert driver.find_element(By.ID, "queue-total").text.startswith("8 ")
        form = driver.find_element(By.CSS_SELECTOR, ".review-form")
        sha = str(form.get_attribute("action")).rsplit("/", 1)[-1]
        with registry(out) as db:
            before = dict(db.execute("SELECT body_part, dest_path, status FROM images"
                                     " WHERE sha256 = ?", (sha,)).fetchone())
        old_file = out / before["dest_path"]
        assert sha256_file(old_file) == sha
        select = Select(form.find_element(By.CSS_SELECTOR, "select[name=body_part]"))
        assert select.first_selected_option.get_attribute("value") == before["body_part"]
        human = next(str(o.get_attribute("value")) for o in select.options
                     if o.get_attribute("value") not in (before["body_part"], "not_msk"))
        select.select_by_value(human)
        form.find_element(By.CSS_SELECTOR, "input[name=note]").send_keys(NOTE)
        submit(driver, form.find_element(By.CSS_SELECTOR, "button[type=submit]"),
               (By.ID, "queue-total"))
        assert driver.find_element(By.ID, "queue-total").text.startswith("7 "), \
            page_error(driver)
        assert not driver.find_elements(By.ID, f"q-{sha[:16]}"), "reviewed film still queued"

        # 3. Apply every review from the reviews page.
        driver.get(f"{base}/reviews")
        applied = submit(driver, driver.find_element(By.ID, "apply-all"),
                         (By.ID, "applied"))
        rows = applied.find_elements(By.CSS_SELECTOR, "tr")[1:]
        assert len(rows) == 1 and rows[0].text.endswith("moved"), [r.text for r in rows]

    with registry(out) as db:
        review = dict(db.execute("SELECT * FROM reviews").fetchone())
        image = dict(db.execute("SELECT body_part, dest_path, status FROM images"
                                " WHERE sha256 = ?", (sha,)).fetchone())
        assert db.execute("SELECT COUNT(*) FROM reviews").fetchone()[0] == 1
    assert review["sha256"] == sha and review["reviewer"] == "Dr Phantom"
    assert review["body_part"] == human and review["note"] == NOTE
    assert review["model_body_part"] == before["body_part"]
    assert review["apply_state"] == "done" and review["to_path"] == image["dest_path"]
    assert image["body_part"] == before["body_part"], "the model's label was overwritten"
    assert image["status"] == "sorted"
    assert image["dest_path"].startswith(f"{human}/"), image["dest_path"]
    new_file = out / image["dest_path"]
    assert new_file.is_file() and sha256_file(new_file) == sha
    assert not old_file.exists() and not old_file.is_symlink(), \
        f"the old copy is still at {before['dest_path']}"


def test_gallery_thumbnails_load(browser: WebDriver, phantoms: Phantoms,
                                 tmp_path: Path) -> None:
    """Every tile's thumbnail is fetched and decodes (naturalWidth > 0) under the CSP."""
    out = sort_phantoms(phantoms, tmp_path / "out")
    driver = fresh(browser)
    with serving(out, phantoms.weights) as base:
        driver.get(f"{base}/gallery")
        assert driver.find_element(By.ID, "total").text == "8 film(s)", page_error(driver)
        thumbs = loaded_images(driver, "ul.grid img")
        assert len(thumbs) == 8
        broken = [i["src"] for i in thumbs if i["width"] <= 0]
        assert not broken, f"thumbnails that did not load: {broken}"
        with registry(out) as db:
            shas = {r[0] for r in db.execute("SELECT sha256 FROM images")}
        assert {i["src"].split("/")[-2] for i in thumbs} == shas
        # Filtering by status is a plain GET form.
        Select(driver.find_element(By.NAME, "status")).select_by_visible_text("review")
        submit(driver, driver.find_element(By.CSS_SELECTOR, "form.filters button"),
               (By.ID, "total"))
        assert driver.find_element(By.ID, "total").text == "4 film(s)"
        assert len(driver.find_elements(By.CSS_SELECTOR, "li.tile.status-review")) == 4
    assert len(list((out / "_thumbs").rglob("*.jpg"))) == 8


def test_read_only_review_page_has_no_forms(browser: WebDriver, phantoms: Phantoms,
                                            tmp_path: Path) -> None:
    """--read-only: the queue and the reviews are shown, but nothing can be submitted."""
    from xreg.registry import Registry
    from xreg.registry.reviews import Review, add_review

    out = sort_phantoms(phantoms, tmp_path / "out")
    with registry(out) as db:
        sha = db.execute("SELECT sha256 FROM images LIMIT 1").fetchone()[0]
    with Registry(out / "registry.sqlite") as reg:
        add_review(reg, Review(sha, "someone", phantoms.body_parts[0]), phantoms.body_parts)
    driver = fresh(browser)
    with serving(out, phantoms.weights, read_only=True, reviewer="Dr Phantom") as base:
        driver.get(f"{base}/review")
        assert driver.find_element(By.ID, "queue-total").text.startswith("7 "), \
            page_error(driver)
        assert len(driver.find_elements(By.CSS_SELECTOR, "li.card")) == 7
        assert not driver.find_elements(By.CSS_SELECTOR, ".review-form")
        assert not driver.find_elements(By.ID, "reviewer-name")
        assert "read-only" in driver.find_element(By.CSS_SELECTOR, ".message").text
        assert driver.find_element(By.CSS_SELECTOR, "header .badge").text == "read-only"
        driver.get(f"{base}/reviews")
        assert len(driver.find_elements(By.CSS_SELECTOR, "#review-list tr")) == 2
        assert not driver.find_elements(By.ID, "apply-all")
        assert not driver.find_elements(By.CSS_SELECTOR, "form[action='/apply']")
    with registry(out) as db:
        assert db.execute("SELECT apply_state FROM reviews").fetchone()[0] is None


# -- review at speed ---------------------------------------------------------------------

_FLIP = {None: 1, 0: 1, 1: 0}  # what i/x make of the model's flag


@pytest.fixture(scope="module")
def many_sorted(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fourteen phantoms sorted into body-part folders: a queue long enough to time."""
    root = tmp_path_factory.mktemp("many")
    generate_dataset(root / "synth", 14, seed=5, size=128, workers=1)
    run_sort(root / "synth" / "images", root / "out",
             SortOptions(weights=tiny_weights, min_age=0, min_confidence=0.0, workers=1,
                         device="cpu", header_check="off"))
    with registry(root / "out") as db:
        assert db.execute("SELECT COUNT(*) FROM images WHERE status = 'sorted' AND"
                          " body_part IS NOT NULL").fetchone()[0] == 14
    return root / "out"


def _on_film(driver: WebDriver) -> str:
    """The film the keystroke page shows once its script is idle and the picture is in."""
    shown: str = WebDriverWait(driver, _WAIT_S, poll_frequency=0.01).until(
        lambda d: d.execute_script(
            "var r = document.getElementById('fast-review'), i = document.getElementById("
            "'film'); return r && r.dataset.ready && !r.hasAttribute('aria-busy') && i &&"
            " i.complete && i.naturalWidth > 0 ? r.dataset.sha : null;"),
        f"the review page never settled: {page_error(driver)}")
    return shown


def _press(driver: WebDriver, key: str, leaving: str | None = None) -> str:
    """One real keystroke; with ``leaving``, wait until another film is shown."""
    ActionChains(driver).send_keys(key).perform()
    if leaving is None:
        return ""
    WebDriverWait(driver, _WAIT_S, poll_frequency=0.01).until(
        lambda d: d.execute_script("return document.getElementById('fast-review')"
                                   ".dataset.sha;") != leaving,
        f"still on the same film after {key!r}: {driver.find_element(By.ID, 'flash').text}")
    return _on_film(driver)


def _model(out: Path, sha: str) -> dict[str, Any]:
    with registry(out) as db:
        return dict(db.execute("SELECT body_part, instrument, fracture FROM images"
                               " WHERE sha256 = ?", (sha,)).fetchone())


def _reviews(out: Path) -> list[tuple[Any, ...]]:
    with registry(out) as db:
        return [tuple(r) for r in db.execute(
            "SELECT sha256, reviewer, body_part, instrument, fracture FROM reviews"
            " ORDER BY id")]


def test_keystroke_review_decides_undoes_skips_and_accepts(
        browser: WebDriver, many_sorted: Path, tiny_weights: Path, tmp_path: Path) -> None:
    """Keys label, flip instrument, undo, skip and accept, with no page load; then a
    timed run of ten films gives decisions per minute and keystrokes per film."""
    out = tmp_path / "out"
    shutil.copytree(many_sorted, out)
    driver = fresh(browser)
    with serving(out, tiny_weights, reviewer="Dr Keys") as base:
        driver.get(f"{base}/review/next")
        a = _on_film(driver)
        keys = {str(b.get_attribute("data-key")): str(b.get_attribute("value"))
                for b in driver.find_elements(By.CSS_SELECTOR, "button[data-key]")}
        assert keys["w"] == "wrist" and keys["h"] == "hand" and keys["n"] == "not_msk"
        driver.execute_script("window.__xreg_same_page = true;")
        _press(driver, "i")                # flip instrument on film A ...
        b = _press(driver, "w", leaving=a)  # ... and call it a wrist
        c = _press(driver, "h", leaving=b)  # film B: hand
        back = _press(driver, "u", leaving=c)  # undo: B again, unreviewed
        assert back == b and "Undid hand" in driver.find_element(By.ID, "flash").text
        assert _press(driver, Keys.ARROW_RIGHT, leaving=b) == c  # skip B
        assert _press(driver, Keys.ARROW_LEFT, leaving=c) == b   # and look back
        assert _press(driver, Keys.ARROW_RIGHT, leaving=b) == c
        d = _press(driver, Keys.ENTER, leaving=c)  # film C: the model's answer
        model = {sha: _model(out, sha) for sha in (a, b, c)}
        assert _reviews(out) == [
            (a, "Dr Keys", "wrist", _FLIP[model[a]["instrument"]], model[a]["fracture"]),
            (c, "Dr Keys", model[c]["body_part"], model[c]["instrument"],
             model[c]["fracture"])]

        # The timed run: ten films, a fracture flip on every third, Enter on every other.
        classes = [k for k in keys if keys[k] != "not_msk"]
        expected, pressed, shown = [], 0, d
        started = time.perf_counter()
        for n in range(10):
            fracture = _model(out, shown)["fracture"]
            if n % 3 == 0:
                _press(driver, "x")
                pressed += 1
                fracture = _FLIP[fracture]
            key = Keys.ENTER if n % 2 else classes[n % len(classes)]
            label = _model(out, shown)["body_part"] if n % 2 else keys[key]
            expected.append((shown, label, fracture))
            shown = _press(driver, key, leaving=shown)
            pressed += 1
        elapsed = time.perf_counter() - started
        assert driver.execute_script("return window.__xreg_same_page === true;"), \
            "a decision reloaded the page"
    rate = 10 / elapsed * 60
    print(f"\nkeystroke review: 10 decisions in {elapsed:.1f} s = {rate:.0f}/min, "
          f"{pressed / 10:.1f} keys per film")
    got = _reviews(out)[2:]
    assert [(r[0], r[2], r[4]) for r in got] == expected
    assert len({r[0] for r in _reviews(out)}) == 12 and b not in {r[0] for r in got}


def test_review_at_speed_works_with_javascript_off(many_sorted: Path, tiny_weights: Path,
                                                   tmp_path: Path) -> None:
    """Scripts off: a class button posts the plain form and the 303 shows the next film."""
    out = tmp_path / "out"
    shutil.copytree(many_sorted, out)
    with chromium(javascript=False) as driver, \
            serving(out, tiny_weights, reviewer="Dr Plain") as base:
        driver.get(f"{base}/review/next")
        root = driver.find_element(By.ID, "fast-review")
        first = str(root.get_attribute("data-sha"))
        assert not root.get_attribute("data-ready"), "the script ran with JavaScript off"
        follow = str(driver.find_element(By.ID, "next").get_attribute("href")).rsplit("/", 1)[-1]
        Select(driver.find_element(By.ID, "fracture")).select_by_value("1")
        submit(driver, driver.find_element(By.ID, "class-hand"), (By.ID, "fast-review"))
        assert driver.current_url == f"{base}/review/film/{follow}", page_error(driver)
        assert driver.find_element(By.ID, "fast-review").get_attribute("data-sha") == follow
        instrument = _model(out, first)["instrument"]
    assert _reviews(out) == [(first, "Dr Plain", "hand", instrument, 1)]
