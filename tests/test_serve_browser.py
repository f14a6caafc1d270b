"""The web page of `srgan serve` (issue 42) in a real browser: a uvicorn server in a thread, the tiny
models of conftest.py, headless Chromium driven by Playwright. Skipped without Playwright or a
Chromium binary (Playwright's own browser download is not needed: the system's Chromium is used)."""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from .conftest import make_photo

STATIC = Path(__file__).resolve().parent.parent / "srgan_cli" / "serve" / "static"
TIMEOUT_MS = 30_000  # the test machine may be slow and busy


# --- the page's files, without a browser --------------------------------------------------------


class _Controls(HTMLParser):
    """The ids of labels' `for`, and every input/select/textarea with whether a label wraps it."""

    def __init__(self) -> None:
        super().__init__()
        self.label_for: set[str] = set()
        self.controls: list[tuple[str, dict[str, str | None], bool]] = []
        self._open_labels = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "label":
            self._open_labels += 1
            if a.get("for"):
                self.label_for.add(str(a["for"]))
        elif tag in ("input", "select", "textarea") and a.get("type") != "hidden":
            self.controls.append((tag, a, self._open_labels > 0))

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self._open_labels = max(0, self._open_labels - 1)


def test_page_is_offline_and_labelled() -> None:
    files = {
        name: (STATIC / name).read_text(encoding="utf-8") for name in ("index.html", "app.js", "style.css")
    }
    for name, text in files.items():
        # no CDN, no web fonts, no analytics: nothing the page loads lives beyond this server
        assert not re.search(r"""(src|href|url|@import)\s*[=(]?\s*["']?\s*(https?:)?//""", text, re.I), name
        assert not re.search(r"https?://", text), f"{name} names an address beyond this server"
    html = files["index.html"]
    assert 'name="viewport"' in html
    parser = _Controls()
    parser.feed(html)
    assert len(parser.controls) >= 7  # model, scale, format, quality, files, split, fit, pixelated
    for tag, attrs, wrapped in parser.controls:
        assert wrapped or attrs.get("id") in parser.label_for, f"<{tag} id={attrs.get('id')}> has no label"
    file_inputs = [a for tag, a, _ in parser.controls if tag == "input" and a.get("type") == "file"]
    assert len(file_inputs) == 1
    assert "multiple" in file_inputs[0] and file_inputs[0].get("accept") == "image/*"


# --- a real server and a real browser -----------------------------------------------------------


def _chromium() -> str | None:
    return (
        os.environ.get("SRGAN_TEST_CHROMIUM")
        or shutil.which("chromium")
        or shutil.which("chromium-browser")
        or shutil.which("google-chrome")
    )


@contextmanager
def _serving(app: Any) -> Iterator[str]:
    """`app` served by uvicorn on a free port of 127.0.0.1 in a thread; its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the browser tests need Playwright: pip install playwright")
    executable = _chromium()
    if executable is None:
        pytest.skip("no Chromium found (install chromium, or set SRGAN_TEST_CHROMIUM to a Chrome binary)")
    pytest.importorskip("uvicorn")
    pytest.importorskip("fastapi")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page_of(browser: Any) -> Iterator[Any]:
    """A function: a new page (phone-sized or not) that may reach nothing but 127.0.0.1."""
    contexts: list[Any] = []
    outside: list[str] = []

    def make(**context_args: Any) -> Any:
        context = browser.new_context(accept_downloads=True, **context_args)
        contexts.append(context)

        def refuse(route: Any) -> None:
            outside.append(route.request.url)
            route.abort()

        context.route(re.compile(r"^(?!(http://127\.0\.0\.1[:/]|blob:|data:))"), refuse)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.js_errors = errors  # type: ignore[attr-defined]
        return page

    yield make
    for context in contexts:
        context.close()
    assert outside == [], f"the page asked for addresses beyond the server: {outside}"


def _png(path: Path, width: int, height: int, seed: int) -> Path:
    Image.fromarray(make_photo(height, width, seed=seed)).save(path)
    return path


def _app(tmp_path: Path, **changes: Any) -> Any:
    from srgan_cli.serve.app import ServeOptions, create_app

    options = {"models": ("tiny_x4", "tiny_x2"), "device": "cpu", "temp_dir": tmp_path, **changes}
    return create_app(ServeOptions(**options))


def test_upscale_compare_and_download(page_of: Any, weights_dir: Path, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    a = _png(tmp_path / "wide.png", 24, 16, seed=1)
    b = _png(tmp_path / "tall.png", 20, 30, seed=2)
    with _serving(_app(tmp_path)) as url:
        page = page_of(viewport={"width": 1280, "height": 900})
        page.goto(url + "/")
        model = page.get_by_label("Model", exact=True)
        expect(model).to_be_enabled(timeout=TIMEOUT_MS)
        expect(model).to_have_value("tiny_x4")
        expect(model.locator("option")).to_have_count(2)
        assert sorted(model.locator("option").all_inner_texts()) == ["tiny_x2 (×2)", "tiny_x4 (×4)"]
        expect(page.locator("#quality-field")).to_be_hidden()  # png has no quality
        page.get_by_label("Output format").select_option("webp")
        expect(page.get_by_label(re.compile("^Quality"))).to_be_visible()
        page.get_by_label("Output format").select_option("png")

        page.locator("input[type=file]").set_input_files([str(a), str(b)])
        cards = page.locator("li.job")
        expect(cards).to_have_count(2)
        wide, tall = cards.filter(has_text="wide.png"), cards.filter(has_text="tall.png")
        expect(wide).to_have_attribute("data-state", "done", timeout=TIMEOUT_MS)
        expect(tall).to_have_attribute("data-state", "done", timeout=TIMEOUT_MS)
        expect(wide).to_have_attribute("data-size", "96x64")
        expect(tall).to_have_attribute("data-size", "80x120")
        expect(wide.locator(".job-status")).to_contain_text("96×64")
        expect(wide.locator("progress")).to_have_attribute("value", "1")
        expect(page.locator("#announce")).to_have_attribute("aria-live", "polite")

        # one result, downloaded by its own link, named as the server names it
        with page.expect_download() as info:
            tall.get_by_role("link", name=re.compile("^Download")).click()
        download = info.value
        assert re.fullmatch(r"tall_x4\.png", download.suggested_filename), download.suggested_filename
        assert Image.open(download.path()).size == (80, 120)

        # the comparison: the result at its own pixel size, the original stretched over it
        viewer = page.locator("#viewer")
        tall.get_by_role("button", name=re.compile("^Compare")).click()
        expect(viewer).to_be_visible()
        after, before = page.locator("#after"), page.locator("#before")
        expect(after).to_have_js_property("naturalWidth", 80)
        expect(before).to_have_js_property("naturalWidth", 20)
        box_after, box_before = after.bounding_box(), before.bounding_box()
        assert box_after is not None and box_before is not None
        assert (round(box_after["width"]), round(box_after["height"])) == (80, 120)
        assert (round(box_before["width"]), round(box_before["height"])) == (80, 120)

        split, stage = page.get_by_label(re.compile("^Split")), page.locator("#stage")
        expect(split).to_be_focused()  # Compare moves the focus to the slider
        expect(stage).to_have_attribute("style", re.compile(r"--split:\s*50%"))
        for _ in range(5):
            split.press("ArrowLeft")
        expect(split).to_have_value("45")
        expect(stage).to_have_attribute("style", re.compile(r"--split:\s*45%"))
        split.press("End")
        expect(stage).to_have_attribute("style", re.compile(r"--split:\s*100%"))
        page.get_by_label("Fit to screen").check()
        expect(stage).to_have_class(re.compile(r"\bfit\b"))

        # everything as one zip, made by the page
        with page.expect_download() as info:
            page.get_by_role("button", name="Download all (.zip)").click()
        zipped = info.value
        assert zipped.suggested_filename.endswith(".zip")
        with zipfile.ZipFile(zipped.path()) as z:
            assert z.testzip() is None  # every CRC-32 right
            names = sorted(z.namelist())
            assert names == ["tall_x4.png", "wide_x4.png"]
            sizes = {n: Image.open(io.BytesIO(z.read(n))).size for n in names}
        assert sizes == {"wide_x4.png": (96, 64), "tall_x4.png": (80, 120)}
        assert page.js_errors == []


def test_phone_screen_errors_and_zip_names(page_of: Any, weights_dir: Path, tmp_path: Path) -> None:
    """On a phone screen: no sideways scroll, a server error shown on its file, duplicate names
    made unique in the zip, the x2 model and an outscale."""
    from playwright.sync_api import expect

    good = _png(tmp_path / "same.png", 16, 12, seed=3)
    (tmp_path / "b").mkdir()
    again = _png(tmp_path / "b" / "same.png", 12, 16, seed=4)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not a png")
    with _serving(_app(tmp_path)) as url:
        page = page_of(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
        page.goto(url + "/")
        expect(page.get_by_label("Model", exact=True)).to_be_enabled(timeout=TIMEOUT_MS)
        page.get_by_label("Model", exact=True).select_option("tiny_x2")
        expect(page.get_by_label("Scale", exact=True)).to_have_value("")
        page.locator("input[type=file]").set_input_files([str(good), str(again), str(broken)])
        cards = page.locator("li.job")
        expect(cards).to_have_count(3)
        for i in range(3):
            expect(cards.nth(i)).to_have_attribute(
                "data-state", re.compile("done|failed"), timeout=TIMEOUT_MS
            )
        expect(cards.nth(0)).to_have_attribute("data-size", "32x24")
        expect(cards.nth(1)).to_have_attribute("data-size", "24x32")
        failed = cards.nth(2)
        expect(failed).to_have_attribute("data-state", "failed")
        expect(failed.locator(".job-status")).to_contain_text("failed:")
        expect(failed.get_by_role("button", name=re.compile("^Retry"))).to_be_visible()
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page scrolls sideways on a phone ({width}px)"

        with page.expect_download() as info:
            page.get_by_role("button", name="Download all (.zip)").click()
        with zipfile.ZipFile(info.value.path()) as z:
            assert z.testzip() is None
            assert sorted(z.namelist()) == ["same_x2-2.png", "same_x2.png"]

        # an outscale other than the model's, as a JPEG of quality 80
        page.get_by_label("Scale", exact=True).select_option("3")
        page.get_by_label("Output format").select_option("jpg")
        page.get_by_label(re.compile("^Quality")).fill("80")
        expect(page.locator("#quality-value")).to_have_text("80")
        page.get_by_role("button", name="Clear finished").click()
        expect(cards).to_have_count(0)
        page.locator("input[type=file]").set_input_files([str(good)])
        expect(cards.first).to_have_attribute("data-state", "done", timeout=TIMEOUT_MS)
        expect(cards.first).to_have_attribute("data-size", "48x36")
        expect(cards.first).to_have_attribute("data-name", "same_x3.jpg")
        expect(cards.first.locator(".job-opts")).to_contain_text("JPEG 80")
        assert page.js_errors == []


def test_noise_removal_slider_for_a_model_with_a_front_end(
    page_of: Any, weights_dir: Path, tmp_path: Path
) -> None:
    """The strength slider shows only for a model with a restoration front-end, and a file added at
    a strength below 100% is upscaled at that strength (`srgan upscale --denoise S`'s result)."""
    import numpy as np
    from playwright.sync_api import expect

    from srgan_cli import Upscaler, weights

    from .conftest import tiny_model

    weights.save(
        weights_dir / "tiny_fe_x2.safetensors", tiny_model(2, seed=5, restore_blocks=2), trained_on="x"
    )
    photo = _png(tmp_path / "noisy.png", 16, 12, seed=6)
    expected = np.asarray(Upscaler("tiny_fe_x2", device="cpu", denoise=0.25)(np.asarray(Image.open(photo))))
    with _serving(_app(tmp_path, models=("tiny_x2", "tiny_fe_x2"))) as url:
        page = page_of(viewport={"width": 1280, "height": 900})
        page.goto(url + "/")
        model = page.get_by_label("Model", exact=True)
        expect(model).to_be_enabled(timeout=TIMEOUT_MS)
        expect(page.locator("#denoise-field")).to_be_hidden()  # tiny_x2 has no front-end
        model.select_option("tiny_fe_x2")
        slider = page.get_by_label(re.compile("^Noise removal"))
        expect(slider).to_be_visible()
        expect(page.locator("#denoise-value")).to_have_text("100%")
        slider.fill("0.25")
        expect(page.locator("#denoise-value")).to_have_text("25%")
        page.locator("input[type=file]").set_input_files([str(photo)])
        card = page.locator("li.job").first
        expect(card).to_have_attribute("data-state", "done", timeout=TIMEOUT_MS)
        expect(card.locator(".job-opts")).to_contain_text("noise removal 25%")
        with page.expect_download() as info:
            card.get_by_role("link", name=re.compile("^Download")).click()
        assert np.array_equal(np.asarray(Image.open(info.value.path())), expected)
        model.select_option("tiny_x2")
        expect(page.locator("#denoise-field")).to_be_hidden()
        assert page.js_errors == []


def test_token_needed(page_of: Any, weights_dir: Path, tmp_path: Path) -> None:
    """A server with a token: without it, the page says where to find it; with `?token=`, it works."""
    from playwright.sync_api import expect

    with _serving(_app(tmp_path, models=("tiny_x2",), token="s3cret")) as url:
        page = page_of()
        page.goto(url + "/")
        # the server's own short page, or this page's notice when only /api is guarded
        expect(page.get_by_text(re.compile("needs a token"))).to_be_visible(timeout=TIMEOUT_MS)
        expect(page.get_by_text(re.compile(r"\?token="))).to_be_visible()
        page.goto(url + "/?token=s3cret")  # sets a cookie (or the page keeps the token for this tab)
        expect(page.get_by_label("Model", exact=True)).to_have_value("tiny_x2", timeout=TIMEOUT_MS)
        expect(page.locator("#notice")).to_be_hidden()
        assert "token" not in page.url  # taken off the address bar
        assert page.js_errors == []
