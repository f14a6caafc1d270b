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
    return TestClient(create_app(options), base_url="http://127.0.0.1:8765")


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
    scratch: Path = client.app.state.scratch  # type: ignore[attr-defined]
    assert scratch.parent == tmp_path
    assert [p.name for p in scratch.rglob("*")] == ["results"]  # the upload and the result are gone


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
    blocker = jobs.submit(lambda job: release.wait())  # the one worker is busy, nothing may wait
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
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: seen.update(config=self.config))
    monkeypatch.setenv("SRGAN_SERVE_TOKEN", "t")
    limits = ["--max-upload-mb", "1.5", "--max-megapixels", "2", "--max-output-megapixels", "30"]
    args = ["serve", "--host", "0.0.0.0", "-m", "tiny_x2", "--device", "cpu", *limits]
    result = CliRunner().invoke(cli_app, args)
    assert result.exit_code == 0, result.output
    config = seen["config"]
    assert config.host == "0.0.0.0" and config.port == 8765  # type: ignore[attr-defined]
    options = config.app.state.options  # type: ignore[attr-defined]
    assert options.token == "t" and options.max_upload_bytes == int(1.5 * 2**20)
    assert (options.max_input_pixels, options.max_output_pixels) == (2_000_000, 30_000_000)
    assert "http://127.0.0.1:8765/?token=t" in result.output


def test_cli_says_how_to_install_fastapi(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "fastapi", None)  # `import fastapi` raises ImportError
    result = CliRunner().invoke(cli_app, ["serve"])
    assert result.exit_code == 2
    assert "needs FastAPI" in result.output and "srgan-cli[serve]" in result.output


# --- results, their names and their lifetime -------------------------------------------------


def _done(client: TestClient, job: dict[str, object]) -> dict[str, object]:
    for _ in range(500):
        status = client.get(str(job["url"])).json()
        if status["status"] in ("done", "failed"):
            return status
        time.sleep(0.02)
    raise AssertionError(f"the job did not finish: {status}")


def test_job_document_names_and_frees_its_result(client: TestClient) -> None:
    job = client.post("/api/jobs", params={"model": "tiny_x2", "format": "jpeg"}, files=_files()).json()
    status = _done(client, job)
    assert status["progress"] == 1.0 and status["size"] == "32x24"
    assert status["name"] == "passwd_x2.jpg"  # the client's path is cut to its last part
    result = client.get(str(status["result"]))
    assert 'filename="passwd_x2.jpg"' in result.headers["content-disposition"]
    scratch: Path = client.app.state.scratch  # type: ignore[attr-defined]
    assert len(list((scratch / "results").iterdir())) == 1
    assert client.delete(str(job["url"])).status_code == 204
    assert list((scratch / "results").iterdir()) == []
    assert client.get(str(job["url"])).status_code == 404
    assert client.delete(str(job["url"])).status_code == 404


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("C:\\Users\\me\\holiday photo.JPG", "holiday photo_x4.png"),
        ("../../../.bashrc", "bashrc_x4.png"),
        ("", "image_x4.png"),
        (None, "image_x4.png"),
        ("ünïcødé<>|.png", "n_c_d_x4.png"),
        ("a" * 300 + ".png", "a" * 80 + "_x4.png"),
    ],
)
def test_download_names_are_plain(given: str | None, expected: str) -> None:
    from srgan_cli.serve.codec import download_name

    assert download_name(given, 4.0, "png") == expected


def test_results_expire_and_the_folder_goes_at_exit(weights_dir: Path, tmp_path: Path) -> None:
    with _client(weights_dir, temp_dir=tmp_path, keep_seconds=0.2) as c:
        scratch: Path = c.app.state.scratch  # type: ignore[attr-defined]
        job = c.post("/api/jobs", files=_files()).json()
        _done(c, job)
        assert len(list((scratch / "results").iterdir())) == 1
        time.sleep(0.3)
        assert c.get(str(job["url"])).status_code == 404  # forgotten, and its file removed
        assert list((scratch / "results").iterdir()) == []
        _done(c, c.post("/api/jobs", files=_files()).json())  # one left behind when the server stops
    assert not scratch.exists()


def test_delete_refuses_a_running_job(client: TestClient) -> None:
    jobs: JobQueue = client.app.state.jobs  # type: ignore[attr-defined]
    release = threading.Event()
    blocker = jobs.submit(lambda job: release.wait())
    try:
        queued = client.post("/api/jobs", files=_files()).json()
        status = client.get(str(queued["url"])).json()
        assert status["status"] == "queued" and status["position"] == 0
        r = client.delete(str(queued["url"]))
        assert r.status_code == 409 and "only a finished job" in r.json()["error"]
    finally:
        release.set()
        blocker.wait(5)
    assert _done(client, queued)["status"] == "done"


# --- who may ask ------------------------------------------------------------------------------


def test_token_guards_every_path_and_the_page_logs_in_with_a_cookie(weights_dir: Path) -> None:
    with _client(weights_dir, token="s3cret") as c:
        for path in ("/", "/docs", "/openapi.json", "/static/app.js", "/api/models"):
            assert c.get(path).status_code == 401, path
        page = c.get("/")
        assert "text/html" in page.headers["content-type"] and "?token=" in page.text
        assert c.get("/?token=wrong", follow_redirects=False).status_code == 401
        login = c.get("/?token=s3cret", follow_redirects=False)
        assert login.status_code == 303 and login.headers["location"] == "/"
        cookie = login.headers["set-cookie"]
        assert "srgan_token=s3cret" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        # the client keeps the cookie from here on
        for path in ("/", "/docs", "/openapi.json", "/api/models"):
            assert c.get(path).status_code == 200, path
        assert c.post("/api/upscale", files=_files()).status_code == 200


def test_loopback_answers_only_to_local_host_names(weights_dir: Path) -> None:
    with _client(weights_dir) as c:
        for host in ("127.0.0.1:8765", "localhost:8765", "[::1]:8765", "LOCALHOST"):
            assert c.get("/api/health", headers={"host": host}).status_code == 200, host
        r = c.get("/api/health", headers={"host": "attacker.example:8765"})  # DNS rebinding
        assert r.status_code == 403 and "localhost only" in r.json()["error"]
        assert c.get("/", headers={"host": "attacker.example"}).status_code == 403
    with _client(weights_dir, allowed_hosts=("srgan.lan",)) as c:
        assert c.get("/api/health", headers={"host": "srgan.lan"}).status_code == 200
    with _client(weights_dir, host="0.0.0.0", token="t") as c:  # open binding: the token guards it
        auth = {"Authorization": "Bearer t", "host": "box.lan:8765"}
        assert c.get("/api/health", headers=auth).status_code == 200


def test_cross_site_posts_are_refused(client: TestClient) -> None:
    r = client.post("/api/upscale", files=_files(), headers={"origin": "https://attacker.example"})
    assert r.status_code == 403 and "another site" in r.json()["error"]
    assert client.post("/api/upscale", files=_files(), headers={"origin": "null"}).status_code == 403
    same = client.post("/api/upscale", files=_files(), headers={"origin": "http://127.0.0.1:8765"})
    assert same.status_code == 200
    assert client.get("/api/models", headers={"origin": "https://attacker.example"}).status_code == 200


# --- batching ---------------------------------------------------------------------------------


def test_same_size_images_share_a_pass_and_each_gets_its_own_result(
    weights_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uploads = [_png_seeded(seed) for seed in range(3)] + [b"broken", _png(20, 16)]
    with _client(weights_dir, temp_dir=tmp_path) as c:  # one at a time: the reference
        alone = [c.post("/api/upscale", files=_files(data)) for data in uploads]
    with _client(weights_dir, temp_dir=tmp_path, batch=8) as c:
        jobs: JobQueue = c.app.state.jobs  # type: ignore[attr-defined]
        up, _ = c.app.state.pool.get("tiny_x4", "cpu", "auto")  # type: ignore[attr-defined]
        passes: list[int] = []
        real = up.runtime.upscaler.upscale_u8_batch
        monkeypatch.setattr(
            up.runtime.upscaler, "upscale_u8_batch", lambda images: passes.append(len(images)) or real(images)
        )
        release = threading.Event()
        blocker = jobs.submit(lambda job: release.wait())  # the one worker is busy while they queue
        queued = [c.post("/api/jobs", files=_files(data)).json() for data in uploads]
        release.set()
        blocker.wait(5)
        statuses = [_done(c, job) for job in queued]
        results = [c.get(f"{job['url']}/result") for job in queued]
    assert passes == [3, 1]  # the three 16x12 photos in one pass, then the 16x20 alone
    assert [s["status"] for s in statuses] == ["done", "done", "done", "failed", "done"]
    for i, (mine, reference) in enumerate(zip(results, alone, strict=True)):
        assert mine.status_code == reference.status_code, i
        if i != 3:
            assert mine.content == reference.content, i  # bit for bit its own image's result
    assert "not an image" in str(statuses[3]["error"])


def _png_seeded(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(make_photo(12, 16, seed=seed)).save(buf, format="PNG")
    return buf.getvalue()


# --- shutting down ----------------------------------------------------------------------------


def test_close_cancels_what_waits_and_what_runs_past_the_grace_time() -> None:
    from srgan_cli.errors import ShuttingDown
    from srgan_cli.serve.jobs import JobCancelled

    jobs = JobQueue(1, 4)
    started = threading.Event()

    def slow(job: object) -> str:
        started.set()
        for step in range(1000):  # a pass that reports its progress, as the tiler does
            job.report(step, 1000)  # type: ignore[attr-defined]
            time.sleep(0.01)
        return "finished"

    running = jobs.submit(slow)
    waiting = jobs.submit(lambda job: "never")
    assert started.wait(5)
    jobs.close(grace=0.2)
    assert waiting.status == "failed" and isinstance(waiting.error, ShuttingDown)
    assert running.status == "failed" and isinstance(running.error, JobCancelled)
    assert 0 < running.progress < 1


def test_sigterm_finishes_the_running_request_and_cleans_up(weights_dir: Path, tmp_path: Path) -> None:
    import json
    import os
    import signal
    import socket
    import subprocess
    import sys

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = f"""
import time, uvicorn
import srgan_cli.serve.app as serve_app
from srgan_cli.cli.serve import _server_class
real = serve_app.upscale_image
def slow(*args, **kwargs):
    time.sleep(1.5)
    return real(*args, **kwargs)
serve_app.upscale_image = slow
options = serve_app.ServeOptions(models=("tiny_x4",), device="cpu", temp_dir={str(tmp_path)!r})
app = serve_app.create_app(options)
print("SCRATCH", app.state.scratch, flush=True)
_server_class()(uvicorn.Config(app, host="127.0.0.1", port={port}, log_level="warning")).run()
"""
    server = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=os.environ
    )
    try:
        scratch = Path(server.stdout.readline().split(" ", 1)[1].strip())  # type: ignore[union-attr]
        base = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                httpx.get(f"{base}/api/health", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        answers: dict[str, httpx.Response] = {}

        def post(name: str) -> None:
            answers[name] = httpx.post(f"{base}/api/upscale", files=_files(), timeout=30)

        first = threading.Thread(target=post, args=("first",))
        first.start()
        for _ in range(200):  # until it runs
            if httpx.get(f"{base}/api/health").json()["jobs"]["running"] == 1:
                break
            time.sleep(0.02)
        second = threading.Thread(target=post, args=("second",))
        second.start()
        for _ in range(200):  # until it waits behind the first
            if httpx.get(f"{base}/api/health").json()["jobs"]["waiting"] == 1:
                break
            time.sleep(0.02)
        server.send_signal(signal.SIGTERM)
        first.join(30)
        second.join(30)
        # uvicorn re-raises the signal once it has shut down: the status a process manager expects
        assert server.wait(30) in (0, -signal.SIGTERM)
    finally:
        if server.poll() is None:
            server.kill()
    assert answers["first"].status_code == 200  # the running job finished and was answered
    assert Image.open(io.BytesIO(answers["first"].content)).size == (64, 48)
    assert answers["second"].status_code == 503, answers["second"].text  # the waiting one was told
    assert "shut down" in json.loads(answers["second"].text)["error"]
    assert not scratch.exists()


def test_onnx_exports_in_the_weights_folder_are_served_by_name(weights_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from srgan_cli.runtime.onnx_export import export_onnx

    from .conftest import tiny_model

    export_onnx(tiny_model(4, global_skip=True), weights_dir / "tiny_x4.onnx", source={"weights": "tiny"})
    with TestClient(
        create_app(ServeOptions(device="cpu", temp_dir=tmp_path)), base_url="http://127.0.0.1"
    ) as c:
        listed = {m["name"]: m["kind"] for m in c.get("/api/models").json()["models"]}
        assert listed["tiny_x4.onnx"] == "onnx" and listed["tiny_x4"] == "srgan-cli"
        onnx_entry = next(m for m in c.get("/api/models").json()["models"] if m["name"] == "tiny_x4.onnx")
        assert (onnx_entry["scale"], onnx_entry["arch"]) == (4, "srresnet")  # from its metadata
        r = c.post("/api/upscale", params={"model": "tiny_x4.onnx"}, files=_files())
        assert r.status_code == 200, r.text
        assert r.headers["x-srgan-model"] == "tiny_x4.onnx"
        assert Image.open(io.BytesIO(r.content)).size == (64, 48)
        loaded = c.get("/api/health").json()["loaded"]
        assert {"tiny_x4.onnx"} <= {m["model"] for m in loaded}
        r = c.post("/api/upscale", params={"model": str(weights_dir / "tiny_x4.onnx")}, files=_files())
        assert r.status_code == 422  # a path, even to a file the server has, is never loaded


def test_a_killed_servers_folder_is_removed_by_the_next_one(weights_dir: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from srgan_cli.serve.app import STALE_AFTER

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    old = time.time() - STALE_AFTER - 60
    folders = {
        "dead_old": tmp_path / f"srgan-serve-{gone.pid}-abc123",
        "dead_recent": tmp_path / f"srgan-serve-{gone.pid}-def456",
        "alive": tmp_path / f"srgan-serve-{os.getppid()}-ghi789",
        "not_ours": tmp_path / "srgan-serve-notapid",
    }
    for name, folder in folders.items():
        (folder / "results").mkdir(parents=True)
        (folder / "results" / "x.png").write_bytes(b"x")
        if name != "dead_recent":
            for path in (folder / "results" / "x.png", folder / "results", folder):
                os.utime(path, (old, old))
    with _client(weights_dir, temp_dir=tmp_path) as c:
        assert c.app.state.scratch.name.startswith(f"srgan-serve-{os.getpid()}-")  # type: ignore[attr-defined]
    assert not folders["dead_old"].exists()
    assert all(folders[name].exists() for name in ("dead_recent", "alive", "not_ours"))


@pytest.mark.parametrize("batch", [1, 4])
def test_lying_headers_are_refused_like_the_cli_refuses_them(
    weights_dir: Path, tmp_path: Path, batch: int
) -> None:
    from .test_imageio import _png_with_size

    bomb = _png_with_size(tmp_path / "bomb.png", 100_000, 100_000).read_bytes()
    liar = _png_with_size(tmp_path / "liar.png", 3, 3).read_bytes()  # the pixels are for 2x2
    with _client(weights_dir, temp_dir=tmp_path, batch=batch) as c:
        r = c.post("/api/upscale", files=_files(bomb))
        assert r.status_code == 413 and "decompression-bomb" in r.json()["error"]
        assert "100000x100000" in r.json()["error"]
        r = c.post("/api/upscale", files=_files(liar))
        assert r.status_code == 400 and r.json()["error"].startswith("upload: ")
        assert c.post("/api/upscale", files=_files()).status_code == 200  # and it goes on


def test_community_models_in_the_weights_folder_are_listed_with_their_scale(
    weights_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("spandrel")
    from safetensors.torch import save_file

    from .test_containers import compact

    save_file(compact(seed=1, scale=2), str(weights_dir / "tiny-compact-x2.safetensors"))
    with TestClient(
        create_app(ServeOptions(device="cpu", temp_dir=tmp_path)), base_url="http://127.0.0.1"
    ) as c:
        entry = next(m for m in c.get("/api/models").json()["models"] if m["name"] == "tiny-compact-x2")
        assert (entry["kind"], entry["scale"], entry["arch"]) == ("community", 2, "RealESRGAN Compact")
        r = c.post("/api/upscale", params={"model": "tiny-compact-x2"}, files=_files())
        assert r.status_code == 200, r.text
        assert Image.open(io.BytesIO(r.content)).size == (32, 24)


def test_the_model_listing_is_read_once_until_a_weights_folder_changes(
    weights_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from srgan_cli import weights

    from .conftest import tiny_model

    reads: list[int] = []
    real = weights.list_models
    monkeypatch.setattr(weights, "list_models", lambda: reads.append(1) or real())
    with _client(weights_dir, models=(), temp_dir=tmp_path) as c:
        assert c.get("/api/models").status_code == 200
        once = len(reads)  # one read of the folders (the community listing reads ours too)
        assert once >= 1
        for _ in range(3):
            assert c.post("/api/upscale", params={"model": "tiny_x2"}, files=_files()).status_code == 200
            assert c.get("/api/models").status_code == 200
        assert len(reads) == once  # six more requests, no more reads
        weights.save(weights_dir / "tiny_new_x4.safetensors", tiny_model(4, seed=9), trained_on="nothing")
        names = {m["name"] for m in c.get("/api/models").json()["models"]}
        assert "tiny_new_x4" in names and len(reads) == 2 * once


def test_auto_picks_the_real_world_model_for_low_quality_jpegs(weights_dir: Path, tmp_path: Path) -> None:
    """Without -m the server offers `auto` first and uses it by default, as `srgan upscale` does: a
    JPEG saved at quality 75 or lower gets srgan_x4_real, anything else srresnet_x4."""
    from srgan_cli import weights

    from .conftest import tiny_model

    # stand-ins for the two shipped models (SRGAN_WEIGHTS_DIR is searched first)
    weights.save(weights_dir / "srresnet_x4.safetensors", tiny_model(4, seed=3), trained_on="x")
    weights.save(weights_dir / "srgan_x4_real.safetensors", tiny_model(4, seed=4), trained_on="x")

    def jpeg(quality: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(make_photo(12, 16)).save(buf, format="JPEG", quality=quality)
        return buf.getvalue()

    with _client(weights_dir, models=(), temp_dir=tmp_path) as c:
        listing = c.get("/api/models").json()
        assert listing["default"] == "auto"
        first = listing["models"][0]
        assert (first["name"], first["scale"], first["kind"]) == ("auto", 4, "auto")
        assert "srgan_x4_real for JPEGs saved at quality 75 or lower" in first["about"]
        for data, params, expected in [
            (jpeg(40), {}, "srgan_x4_real"),  # the default is auto
            (jpeg(40), {"model": "auto"}, "srgan_x4_real"),
            (jpeg(92), {"model": "auto"}, "srresnet_x4"),
            (_png(), {}, "srresnet_x4"),
            (jpeg(40), {"model": "srresnet_x4"}, "srresnet_x4"),  # a named model always wins
        ]:
            r = c.post("/api/upscale", params=params, files=_files(data))
            assert r.status_code == 200, r.text
            assert r.headers["x-srgan-model"] == expected, (params, expected)
        queued = c.post("/api/jobs", data={"model": "auto"}, files=_files(jpeg(30))).json()
        assert _done(c, queued)["model"] == "srgan_x4_real"  # the job document names it too
    with _client(weights_dir, models=("auto",), temp_dir=tmp_path) as c:  # `srgan serve -m auto`
        assert {m["model"] for m in c.get("/api/health").json()["loaded"]} == {"srresnet_x4", "srgan_x4_real"}
        assert [m["name"] for m in c.get("/api/models").json()["models"]] == ["auto"]
        r = c.post("/api/upscale", files=_files(jpeg(40)))
        assert r.status_code == 200 and r.headers["x-srgan-model"] == "srgan_x4_real"


def test_denoise_sets_the_front_ends_strength_as_upscale_does(weights_dir: Path, tmp_path: Path) -> None:
    """A model with a restoration front-end is listed with "denoise": true, and a request may set
    its strength (query or form field), as `srgan upscale --denoise S` does: the result is the
    library's at that strength, named in the header and the job document. A strength outside 0-1,
    or one for a model without a front-end, auto or an ONNX file, is refused with 422 and says why."""
    import numpy as np

    from srgan_cli import Upscaler, weights

    from .conftest import tiny_model

    weights.save(
        weights_dir / "tiny_fe_x2.safetensors", tiny_model(2, seed=5, restore_blocks=2), trained_on="x"
    )
    (weights_dir / "tiny_x2.onnx").write_bytes(b"not read before the denoise check")
    weights.save(weights_dir / "srresnet_x4.safetensors", tiny_model(4, seed=3), trained_on="x")
    weights.save(weights_dir / "srgan_x4_real.safetensors", tiny_model(4, seed=4), trained_on="x")
    photo = make_photo(12, 16)
    expected = {s: np.asarray(Upscaler("tiny_fe_x2", device="cpu", denoise=s)(photo)) for s in (0.0, 1.0)}
    assert not np.array_equal(expected[0.0], expected[1.0])  # the strength changes the output
    with _client(weights_dir, models=(), temp_dir=tmp_path) as c:
        listed = {m["name"]: m for m in c.get("/api/models").json()["models"]}
        assert listed["tiny_fe_x2"]["denoise"] is True
        assert "denoise" not in listed["tiny_x2"] and "denoise" not in listed["auto"]
        r = c.post("/api/upscale", params={"model": "tiny_fe_x2", "denoise": 0}, files=_files())
        assert r.status_code == 200, r.text
        assert r.headers["x-srgan-denoise"] == "0"
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(r.content))), expected[0.0])
        plain = c.post("/api/upscale", data={"model": "tiny_fe_x2"}, files=_files())
        assert "x-srgan-denoise" not in plain.headers
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(plain.content))), expected[1.0])
        job = c.post("/api/jobs", data={"model": "tiny_fe_x2", "denoise": "0.5"}, files=_files()).json()
        assert _done(c, job)["denoise"] == 0.5
        loaded = c.get("/api/health").json()["loaded"]
        assert {(m["model"], m.get("denoise")) for m in loaded} >= {("tiny_fe_x2", 0.0), ("tiny_fe_x2", 0.5)}
        for params, says in [
            ({"model": "tiny_fe_x2", "denoise": 1.5}, "between 0 and 1"),
            ({"model": "tiny_x2", "denoise": 0.5}, "this model has none"),
            ({"model": "auto", "denoise": 0.5}, "auto picks a model per image"),
            ({"model": "tiny_x2.onnx", "denoise": 0.5}, "ONNX"),
        ]:
            r = c.post("/api/upscale", params=params, files=_files())
            assert r.status_code == 422 and says in r.json()["error"], (params, r.text)


def test_the_pool_keeps_only_the_last_few_chosen_strengths(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each denoise strength a request names is a model copy: the pool keeps the last
    MAX_STRENGTHS of them (the least recently used goes first) and every model as trained."""
    import srgan_cli.api
    from srgan_cli.serve.jobs import UpscalerPool

    built: list[float | None] = []

    class Fake:
        def __init__(self, source: object, *, denoise: float | None = None, **_: object) -> None:
            built.append(denoise)
            self.scale, self.device, self.precision = 2, "cpu", "fp32"

    monkeypatch.setattr(srgan_cli.api, "Upscaler", Fake)
    pool = UpscalerPool(max_output_pixels=10**6)
    plain = pool.get("m", "cpu", "auto")
    for s in (0.1, 0.2, 0.3, 0.4):
        pool.get("m", "cpu", "auto", s)
    pool.get("m", "cpu", "auto", 0.1)  # used again: now the most recent
    pool.get("m", "cpu", "auto", 0.5)  # a fifth strength: 0.2, the least recently used, goes
    kept = {m.get("denoise") for m in pool.loaded()}
    assert kept == {None, 0.1, 0.3, 0.4, 0.5}
    assert pool.get("m", "cpu", "auto") is plain and built.count(None) == 1
    pool.get("m", "cpu", "auto", 0.2)
    assert built.count(0.2) == 2  # built again when asked again
    assert len([m for m in pool.loaded() if m.get("denoise") is not None]) == UpscalerPool.MAX_STRENGTHS
