"""Screenshots of the `srgan serve` web page for the docs: a real server (uvicorn in a thread), the
page in headless Chromium (Playwright), one image upscaled, then a desktop and a phone view.

usage:
  python scripts/screenshots.py [-m MODEL] [--image IMAGE] [-o DOCS_IMAGES] [--chromium PATH]

Needs the serve extra and Playwright (`pip install playwright`); the browser is the system's Chromium
(or --chromium / SRGAN_TEST_CHROMIUM), not Playwright's download. Writes serve_page.png (1280x900)
and serve_phone.png (390x844) into DOCS_IMAGES (default docs/images), each squeezed under ~300 KB.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
MAX_BYTES = 300_000
TIMEOUT_MS = 120_000  # a CPU upscale on a busy machine


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """`app` served by uvicorn on a free port of 127.0.0.1 in a thread; its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def save_small(png: bytes, path: Path, limit: int = MAX_BYTES) -> None:
    """A screenshot saved as an optimised PNG; as 256 colours, then smaller, while above `limit`."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    attempts = [image, image.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)]
    for factor in (0.85, 0.7, 0.6):
        small = image.resize((round(image.width * factor), round(image.height * factor)), Image.LANCZOS)
        attempts.append(small.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE))
    for candidate in attempts:
        buf = io.BytesIO()
        candidate.save(buf, format="PNG", optimize=True)
        if buf.tell() <= limit or candidate is attempts[-1]:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(buf.getvalue())
            print(f"{path}: {candidate.width}x{candidate.height}, {buf.tell() / 1000:.0f} kB")
            return


def shoot(page: Any, url: str, image: Path, split: int) -> None:
    from playwright.sync_api import expect

    page.goto(url + "/")
    expect(page.get_by_label("Model", exact=True)).to_be_enabled()
    page.locator("input[type=file]").set_input_files([str(image)])
    expect(page.locator("li.job").first).to_have_attribute("data-state", "done", timeout=TIMEOUT_MS)
    slider = page.get_by_label("Split", exact=False)
    slider.fill(str(split))
    page.locator("#after").evaluate("img => img.decode()")
    page.evaluate("document.activeElement.blur()")  # no focus ring in the picture


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-m", "--model", default="auto")
    parser.add_argument("--image", type=Path, default=ROOT / "examples" / "grace_hopper_lr.png")
    parser.add_argument("-o", "--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument(
        "--chromium",
        default=os.environ.get("SRGAN_TEST_CHROMIUM")
        or shutil.which("chromium")
        or shutil.which("chromium-browser")
        or shutil.which("google-chrome"),
    )
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if not args.chromium:
        parser.error("no Chromium found: pass --chromium PATH")

    from playwright.sync_api import sync_playwright

    from srgan_cli.serve.app import ServeOptions, create_app

    with tempfile.TemporaryDirectory() as scratch:
        app = create_app(ServeOptions(models=(args.model,), device=args.device, temp_dir=Path(scratch)))
        with serving(app) as url, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, headless=True)
            try:
                desktop = browser.new_page(viewport={"width": 1280, "height": 900}, color_scheme="light")
                desktop.set_default_timeout(TIMEOUT_MS)
                shoot(desktop, url, args.image, 50)
                save_small(desktop.screenshot(), args.out / "serve_page.png")

                phone = browser.new_page(
                    viewport={"width": 390, "height": 844},
                    device_scale_factor=2,
                    is_mobile=True,
                    has_touch=True,
                    color_scheme="dark",
                )
                phone.set_default_timeout(TIMEOUT_MS)
                shoot(phone, url, args.image, 40)
                phone.get_by_label("Fit to screen").check()
                phone.evaluate("document.activeElement.blur()")
                phone.evaluate("document.getElementById('viewer').scrollIntoView({block: 'start'})")
                save_small(phone.screenshot(), args.out / "serve_phone.png")
            finally:
                browser.close()


if __name__ == "__main__":
    main()
