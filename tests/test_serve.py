"""`srgan serve` (issue 42): the JSON/HTTP API through FastAPI's TestClient, offline, on the CPU, with
the tiny models of conftest.py."""

from __future__ import annotations

import io
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

with warnings.catch_warnings():  # starlette >= 1.x: "install httpx2" (httpx still works)
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from srgan_cli.cli.app import app as cli_app  # noqa: E402
from srgan_cli.serve.app import ServeOptions, create_app  # noqa: E402
from srgan_cli.serve.jobs import JobQueue  # noqa: E402

from .conftest import make_photo  # noqa: E402


def _png(height: int = 12, width: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(make_photo(height, width)).save(buf, format="PNG")
    return buf.getvalue()


def _client(weights_dir: Path, **changes: object) -> TestClient:
    options = ServeOptions(**{"models": ("tiny_x4", "tiny_x2"), "device": "cpu", **changes})  # type: ignore[arg-type]
    return TestClient(create_app(options))


@pytest.fixture
def client(weights_dir: Path, tmp_path: Path) -> Iterator[TestClient]:
    with _client(weights_dir, temp_dir=tmp_path) as c:
        yield c


def _files(data: bytes | None = None) -> dict[str, tuple[str, bytes, str]]:
    return {"image": ("../../etc/passwd.png", data if data is not None else _png(), "image/png")}


def test_health_and_models(client: TestClient) -> None:
    health = client.get("/api/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert {m["model"] for m in health.json()["loaded"]} == {"tiny_x4", "tiny_x2"}
    models = client.get("/api/models").json()
    assert models["default"] == "tiny_x4"
    assert {(m["name"], m["scale"]) for m in models["models"]} == {("tiny_x4", 4), ("tiny_x2", 2)}
    assert client.get("/openapi.json").status_code == 200


@pytest.mark.parametrize(("model", "scale"), [("tiny_x4", 4), ("tiny_x2", 2)])
def test_upscale_returns_the_image(client: TestClient, tmp_path: Path, model: str, scale: int) -> None:
    r = client.post("/api/upscale", params={"model": model}, files=_files())
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (16 * scale, 12 * scale)
    assert list(tmp_path.glob("srgan-serve-*")) == []  # the scratch files are gone


def test_upscale_options_as_form_fields(client: TestClient) -> None:
    form = {"model": "tiny_x2", "format": "jpg", "quality": "80", "outscale": "3"}
    r = client.post("/api/upscale", data=form, files=_files())
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(r.content)).size == (48, 36)


def test_bad_options_say_why(client: TestClient) -> None:
    r = client.post("/api/upscale", params={"format": "bmp"}, files=_files())
    assert r.status_code == 422 and "format is one of png, jpg, webp" in r.json()["error"]
    r = client.post("/api/upscale", params={"quality": 0}, files=_files())
    assert r.status_code == 422 and "quality is a whole number from 1 to 100" in r.json()["error"]


def test_unknown_model_is_404_and_a_path_is_refused(client: TestClient, weights_dir: Path) -> None:
    r = client.post("/api/upscale", params={"model": "nope"}, files=_files())
    assert r.status_code == 404 and "no model named 'nope'" in r.json()["error"]
    for path in (str(weights_dir / "tiny_x4.safetensors"), "../weights/tiny_x4", "sub/tiny_x4"):
        r = client.post("/api/upscale", params={"model": path}, files=_files())
        assert r.status_code == 422, path
        assert "not as a path" in r.json()["error"]


def test_not_an_image_says_so(client: TestClient, tmp_path: Path) -> None:
    r = client.post("/api/upscale", files=_files(b"hello, not a picture"))
    assert r.status_code == 400
    error = r.json()["error"]
    assert error.startswith("upload: not an image") and str(tmp_path) not in error


def test_too_large_is_413(weights_dir: Path, tmp_path: Path) -> None:
    with _client(weights_dir, max_output_pixels=1000, temp_dir=tmp_path) as c:
        r = c.post("/api/upscale", files=_files())
        assert r.status_code == 413 and "above the limit" in r.json()["error"]
    with _client(weights_dir, max_input_pixels=100, temp_dir=tmp_path) as c:
        r = c.post("/api/upscale", files=_files())
        assert r.status_code == 413 and "decompression-bomb" in r.json()["error"]
    with _client(weights_dir, max_upload_bytes=100, temp_dir=tmp_path) as c:
        r = c.post("/api/upscale", files=_files())
        assert r.status_code == 413 and "upload limit" in r.json()["error"]


def test_job_submit_poll_result(client: TestClient) -> None:
    r = client.post("/api/jobs", params={"model": "tiny_x2", "format": "webp"}, files=_files())
    assert r.status_code == 202, r.text
    job = r.json()
    for _ in range(200):
        status = client.get(job["url"]).json()
        if status["status"] in ("done", "failed"):
            break
        time.sleep(0.02)
    assert status["status"] == "done", status
    result = client.get(status["result"])
    assert result.status_code == 200 and result.headers["content-type"] == "image/webp"
    assert Image.open(io.BytesIO(result.content)).size == (32, 24)
    assert client.get("/api/jobs/nope").status_code == 404


def test_failed_job_keeps_its_error(client: TestClient) -> None:
    job = client.post("/api/jobs", files=_files(b"nope")).json()
    for _ in range(200):
        status = client.get(job["url"]).json()
        if status["status"] == "failed":
            break
        time.sleep(0.02)
    assert status["status_code"] == 400 and "not an image" in status["error"]
    assert client.get(f"{job['url']}/result").status_code == 400


def test_queue_full_is_429(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    jobs: JobQueue = client.app.state.jobs  # type: ignore[attr-defined]
    release = threading.Event()
    monkeypatch.setattr(jobs, "capacity", 0)
    blocker = jobs.submit(release.wait)  # the one worker is busy, nothing may wait
    try:
        r = client.post("/api/jobs", files=_files())
        assert r.status_code == 429 and "the server is busy" in r.json()["error"]
    finally:
        release.set()
        blocker.wait(5)
    assert client.post("/api/upscale", files=_files()).status_code == 200


def test_shutting_down_is_503(client: TestClient) -> None:
    client.app.state.jobs.close()  # type: ignore[attr-defined]
    r = client.post("/api/upscale", files=_files())
    assert r.status_code == 503 and "shutting down" in r.json()["error"]


def test_token(weights_dir: Path) -> None:
    with _client(weights_dir, token="s3cret") as c:
        assert c.get("/api/health").status_code == 401
        assert c.get("/api/health", headers={"Authorization": "Bearer wrong"}).status_code == 401
        r = c.post("/api/upscale", files=_files())
        assert r.status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        assert c.get("/api/health", headers=auth).status_code == 200
        assert c.post("/api/upscale", files=_files(), headers=auth).status_code == 200


def test_cli_refuses_an_open_host_without_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SRGAN_SERVE_TOKEN", raising=False)
    result = CliRunner().invoke(cli_app, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "give a token" in result.output


def test_cli_serves_with_uvicorn(weights_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    seen: dict[str, object] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw, app=app))
    monkeypatch.setenv("SRGAN_SERVE_TOKEN", "t")
    result = CliRunner().invoke(cli_app, ["serve", "--host", "0.0.0.0", "-m", "tiny_x2", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert seen["host"] == "0.0.0.0" and seen["port"] == 8765
    assert seen["app"].state.options.token == "t"  # type: ignore[attr-defined]


def test_cli_says_how_to_install_fastapi(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "fastapi", None)  # `import fastapi` raises ImportError
    result = CliRunner().invoke(cli_app, ["serve"])
    assert result.exit_code == 2
    assert "needs FastAPI" in result.output and "srgan-cli[serve]" in result.output
