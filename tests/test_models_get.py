"""`srgan models get` and `srgan models list --available`, offline: a catalogue (tests/data, in
OpenModelDB's models.json shape) and a tiny Compact model served by an HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import sys
import threading
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from srgan_cli import community, weights
from srgan_cli.cli.app import app

from .conftest import make_photo

runner = CliRunner()
CATALOGUE = Path(__file__).parent / "data" / "openmodeldb_catalogue.json"


def tiny_compact_state(seed: int = 0) -> dict[str, torch.Tensor]:
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(seed)
    return Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2).state_dict()


@dataclass
class Server:
    url: str
    files: Path
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """tmp_path/www served on 127.0.0.1; each request's path and headers recorded."""
    root = tmp_path / "www"
    (root / "files").mkdir(parents=True)
    seen: list[tuple[str, dict[str, str]]] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            seen.append((self.path, dict(self.headers)))
            if self.path.startswith("/redirect/"):  # to the same file on another host name
                port = self.server.server_address[1]
                self.send_response(302)
                self.send_header("Location", f"http://localhost:{port}/files/{self.path[10:]}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            super().do_GET()

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield Server(f"http://127.0.0.1:{httpd.server_address[1]}", root / "files", seen)
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def env(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tiny model served as files/tiny_compact.pth, the catalogue (its size, hash and the
    server's address filled in) as models.json, and every folder the command touches in tmp_path;
    returns the weights folder (made by `get`)."""
    model = server.files / "tiny_compact.pth"
    torch.save(tiny_compact_state(), model)
    data = model.read_bytes()
    text = CATALOGUE.read_text()
    text = text.replace('"@size"', str(len(data))).replace("@sha256", hashlib.sha256(data).hexdigest())
    (server.files.parent / "models.json").write_text(text.replace("@server", server.url))
    folder = tmp_path / "weights"
    monkeypatch.setenv(community.ENV_CATALOGUE, f"{server.url}/models.json")
    monkeypatch.setenv(weights.ENV_DIR, str(folder))
    monkeypatch.setenv("SRGAN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))  # never the real user folder
    return folder


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "100"})
    return result.exit_code, result.stdout, result.stderr


def nothing_left(folder: Path) -> bool:
    """No model, and no temporary file or folder (hidden ones included)."""
    return not folder.exists() or not any(folder.iterdir())


def test_get_by_name_verifies_converts_registers_and_lists(env: Path, server: Server, tmp_path: Path) -> None:
    code, out, err = run("models", "get", "2x-TinyCompact")
    assert code == 0, err
    stored = env / "2x-TinyCompact.safetensors"
    assert sorted(p.name for p in env.iterdir()) == [stored.name]  # no temporary left
    assert "stored 2x-TinyCompact: RealESRGAN Compact x2, licence CC0-1.0" in " ".join(out.split())
    assert "srgan upscale -m 2x-TinyCompact" in err
    # the mega.nz mirror (a page, not a file) was skipped; the served file was downloaded once
    assert [p for p, _ in server.requests].count("/files/tiny_compact.pth") == 1

    original = (server.files / "tiny_compact.pth").read_bytes()
    record = weights.read_metadata(stored)
    assert record["format"] == community.RECORD_FORMAT
    assert record["sha256"] == hashlib.sha256(original).hexdigest()
    assert record["original_size"] == str(len(original))
    assert record["source"] == f"{server.url}/files/tiny_compact.pth"
    assert (record["license"], record["author"], record["catalogue_id"]) == (
        "CC0-1.0",
        "tester",
        "2x-TinyCompact",
    )
    assert (record["architecture"], record["scale"], record["source_architecture"]) == (
        "RealESRGAN Compact",
        "2",
        "compact",
    )
    assert "arch" not in record and record["retrieved"][:2] == "20"
    # the tensors keep their names and values, and spandrel still knows the converted file
    state, want = weights.read_state(stored), tiny_compact_state()
    assert state.keys() == want.keys() and all(torch.equal(state[k], want[k]) for k in want)
    from srgan_cli.runtime.third_party import describe

    assert describe(stored).architecture.name == "RealESRGAN Compact"

    # registered: listed with its licence, found by name
    code, out, _ = run("models", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    row = rows["2x-TinyCompact"]
    assert (row["arch"], row["architecture"], row["scale"], row["license"]) == (
        "third-party",
        "RealESRGAN Compact",
        2,
        "CC0-1.0",
    )
    assert row["size_bytes"] == stored.stat().st_size and row["source"] == record["source"]
    code, out, _ = run("models")
    assert code == 0 and "third-party models" in out
    line = next(x for x in out.splitlines() if x.strip().startswith("2x-TinyCompact"))
    assert "Compact" in line and "x2" in line and "CC0-1.0" in line
    src = tmp_path / "p.png"
    Image.fromarray(make_photo(12, 10)).save(src)
    code, _, err = run("upscale", src, "-m", "2x-TinyCompact", "-o", tmp_path / "o.png", "--device", "cpu")
    assert code == 0, err
    assert np.asarray(Image.open(tmp_path / "o.png")).shape == (24, 20, 3)


def test_get_by_url_unwraps_a_wrapped_state_dict(env: Path, server: Server) -> None:
    """A URL without a catalogue entry: no hash to check, no licence; a BasicSR-style
    {"params_ema": ...} file is stored as its plain state dict."""
    torch.save({"params_ema": tiny_compact_state(1)}, server.files / "wrapped x2.pth")
    code, out, err = run("models", "get", f"{server.url}/files/wrapped%20x2.pth", "--json")
    assert code == 0, err
    done = json.loads(out)
    assert (
        done["name"] == "wrapped_x2" and done["architecture"] == "RealESRGAN Compact" and done["scale"] == 2
    )
    assert done["license"] == "" and done["catalogue_id"] == ""
    state = weights.read_state(env / "wrapped_x2.safetensors")
    assert state.keys() == tiny_compact_state().keys()
    assert not any(r[0] == "/models.json" for r in server.requests)  # a URL needs no catalogue
    # a file downloaded by hand works the same way, under the name asked for
    code, _, err = run("models", "get", str(server.files / "tiny_compact.pth"), "--name", "by-hand")
    assert code == 0, err
    assert weights.read_metadata(env / "by-hand.safetensors")["source"].startswith("file://")


@pytest.mark.parametrize(
    ("entry", "words"),
    [("2x-TinyCompact-BadHash", "SHA-256"), ("2x-TinyCompact-BadSize", "1234")],
)
def test_a_download_that_is_not_what_was_announced_is_refused_and_deleted(
    env: Path, entry: str, words: str
) -> None:
    code, out, err = run("models", "get", entry)
    text = " ".join(err.split())
    assert code == 2 and words in text and "refused" in text and "Traceback" not in err
    assert nothing_left(env)


def test_a_web_page_is_not_a_model(env: Path, server: Server) -> None:
    (server.files / "page.pth").write_text("<!doctype html><html>sign in to download</html>")
    code, _, err = run("models", "get", f"{server.url}/files/page.pth")
    assert code == 2 and "web page" in err and nothing_left(env)


def test_offline_says_so_in_one_line(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:  # a port that nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv(community.ENV_CATALOGUE, f"http://127.0.0.1:{port}/models.json")
    code, out, err = run("models", "get", "2x-TinyCompact")
    text = " ".join(err.split())  # one message (the console wraps it), no hint below it
    assert code == 1 and text.count("error:") == 1 and "hint:" not in text, err
    assert text.startswith("error: cannot reach 127.0.0.1") and "offline?" in text
    assert "download the file yourself and pass its path" in text and community.ENV_CATALOGUE in text
    code, _, err = run("models", "get", f"http://127.0.0.1:{port}/x.pth")
    assert code == 1 and "cannot reach 127.0.0.1" in err and "offline?" in err
    code, out, err = run("models", "list", "--available", "--json")
    assert code == 1 and "cannot reach" in json.loads(out)["error"]
    assert nothing_left(env)


def test_the_catalogue_is_cached_and_used_offline(
    env: Path, server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run("models", "list", "--available")[0] == 0
    cached = list((tmp_path / "cache" / "catalogue").glob("*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["fetched"] > 0
    fetches = [p for p, _ in server.requests].count("/models.json")
    assert run("models", "list", "--available")[0] == 0
    assert [p for p, _ in server.requests].count("/models.json") == fetches  # from the cache
    (server.files.parent / "models.json").unlink()  # the server now answers 404
    code, _, err = run("models", "list", "--available", "--refresh")
    assert code == 1 and "404" in err
    # a server that cannot be reached, with a cached copy: the copy, and a note saying how old it is
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        gone = f"http://127.0.0.1:{sock.getsockname()[1]}/models.json"
    doc = json.loads(cached[0].read_text())
    community._cache_path(gone).write_text(json.dumps({**doc, "source": gone}))
    monkeypatch.setenv(community.ENV_CATALOGUE, gone)
    code, out, err = run("models", "list", "--available", "--refresh")
    assert code == 0 and "2x-TinyCompact" in out
    assert "cannot reach 127.0.0.1" in err and "the copy of 20" in err


def test_overwrite_is_refused_unless_asked(env: Path, server: Server) -> None:
    assert run("models", "get", "2x-TinyCompact")[0] == 0
    asked = len(server.requests)
    code, _, err = run("models", "get", "2x-tinycompact")  # a name matches in any case
    assert code == 2 and "already exists" in err and "--overwrite" in err
    assert server.requests[asked:] == []  # refused before any download (the catalogue: cached)
    code, _, err = run("models", "get", "2x-TinyCompact", "--overwrite")
    assert code == 0, err
    assert sorted(p.name for p in env.iterdir()) == ["2x-TinyCompact.safetensors"]
    # a shipped model's name is never taken
    code, _, err = run("models", "get", "2x-TinyCompact", "--name", weights.DEFAULT_MODEL)
    assert code == 2 and "shipped model" in err


def test_available_lists_and_filters_the_catalogue(env: Path) -> None:
    code, out, err = run("models", "list", "--available")
    assert code == 0, err
    for name in ("2x-TinyCompact", "4x-MegaOnly", "4x-OnnxOnly"):
        assert name in out
    line = next(x for x in out.splitlines() if x.strip().startswith("4x-MegaOnly"))
    assert "esrgan" in line and "x4" in line and "CC-BY-NC-SA-4.0" in line and "63.9" in line
    assert "5 of 5 models" in err

    code, out, _ = run("models", "list", "--available", "--scale", "4", "--json")
    assert sorted(e["id"] for e in json.loads(out)) == ["4x-MegaOnly", "4x-OnnxOnly"]
    code, out, _ = run("models", "list", "--available", "--arch", "COMPACT", "--json")
    assert {e["id"] for e in json.loads(out)} == {
        "2x-TinyCompact",
        "2x-TinyCompact-BadHash",
        "2x-TinyCompact-BadSize",
    }
    code, out, _ = run("models", "list", "--available", "anime", "fast", "--json")
    rows = json.loads(out)
    assert [e["id"] for e in rows] == ["4x-OnnxOnly"] and rows[0]["license"] == "MIT"
    code, out, err = run("models", "list", "--available", "--scale", "8")
    assert code == 0 and "no catalogue model matches" in err
    code, _, err = run("models", "list", "--scale", "4")
    assert code == 2 and "--available" in err
    code, out, _ = run("models", "list", "--json")  # without --available: the installed models
    assert any(r["name"] == weights.DEFAULT_MODEL for r in json.loads(out))


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("4x-MegaOnly", "pages that need a browser (mega.nz)"),
        ("4x-OnnxOnly", "no PyTorch weights"),
        ("2x-TinyCompat", "did you mean 2x-TinyCompact"),
        ("./missing.pth", "no such file"),
    ],
)
def test_what_cannot_be_fetched_says_why(env: Path, spec: str, words: str) -> None:
    code, _, err = run("models", "get", spec)
    assert code == 2 and words in " ".join(err.split()) and nothing_left(env)


def test_hugging_face_needs_its_package(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    for spec in ("hf://someone/models/x2/tiny.pth", "someone/models:tiny.pth"):
        code, _, err = run("models", "get", spec)
        text = " ".join(err.split())
        assert code == 2 and "pip install 'srgan-cli[hub]'" in text
        assert "https://huggingface.co/someone/models/resolve/main/" in text


def test_hugging_face_through_huggingface_hub(
    env: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through huggingface_hub's calls (a stand-in module here): its URL, its LFS ETag as the
    SHA-256, its headers (a token) sent to the Hub and never to the host it redirects to."""
    data = (server.files / "tiny_compact.pth").read_bytes()
    calls: list[tuple[str, str, str | None]] = []

    def hf_hub_url(repo_id: str, filename: str, *, revision: str | None = None) -> str:
        calls.append((repo_id, filename, revision))
        return f"{server.url}/files/{filename}"

    def get_hf_file_metadata(url: str) -> object:
        return types.SimpleNamespace(etag=hashlib.sha256(data).hexdigest(), size=len(data), location=url)

    def model_info(repo_id: str, revision: str | None = None) -> object:
        return types.SimpleNamespace(card_data=types.SimpleNamespace(license="apache-2.0"))

    hub = types.ModuleType("huggingface_hub")
    hub.hf_hub_url = hf_hub_url  # type: ignore[attr-defined]
    hub.get_hf_file_metadata = get_hf_file_metadata  # type: ignore[attr-defined]
    hub.model_info = model_info  # type: ignore[attr-defined]
    utils = types.ModuleType("huggingface_hub.utils")
    utils.build_hf_headers = lambda: {"authorization": "Bearer hf_test"}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
    monkeypatch.setitem(sys.modules, "huggingface_hub.utils", utils)
    code, out, err = run("models", "get", "someone/tiny@v1:tiny_compact.pth", "--json")
    assert code == 0, err
    done = json.loads(out)
    assert calls == [("someone/tiny", "tiny_compact.pth", "v1")]
    assert (done["name"], done["license"], done["author"]) == ("tiny_compact", "apache-2.0", "someone")
    assert done["sha256"] == hashlib.sha256(data).hexdigest()
    headers = next(h for p, h in server.requests if p == "/files/tiny_compact.pth")
    assert headers.get("Authorization") == "Bearer hf_test"
    # redirected to another host (127.0.0.1 -> localhost): the token stays behind
    hub.hf_hub_url = lambda repo_id, filename, revision=None: f"{server.url}/redirect/{filename}"  # type: ignore[attr-defined]
    server.requests.clear()
    code, _, err = run("models", "get", "someone/tiny:tiny_compact.pth", "--name", "moved")
    assert code == 0, err
    (_, first), (_, second) = server.requests
    assert first.get("Authorization") == "Bearer hf_test" and "Authorization" not in second
    # a Hub file whose ETag is not the file's hash is refused
    hub.get_hf_file_metadata = lambda url: types.SimpleNamespace(etag="a" * 64, size=len(data))  # type: ignore[attr-defined]
    code, _, err = run("models", "get", "hf://someone/tiny/tiny_compact.pth", "--name", "other")
    assert code == 2 and "SHA-256" in err and not (env / "other.safetensors").exists()


def test_the_user_weights_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(weights.ENV_DIR, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    home = tmp_path / "xdg" / "srgan-cli" / "weights"
    if sys.platform.startswith("linux"):
        assert weights.user_dir() == home and home in weights.search_dirs()
    mine = tmp_path / "mine"
    monkeypatch.setenv(weights.ENV_DIR, str(mine))
    assert weights.user_dir() == mine and weights.search_dirs()[0] == mine
    assert weights.search_dirs()[-len(weights.shipped_dirs()) :] == weights.shipped_dirs()


def test_names_and_sources_are_parsed_without_the_network() -> None:
    src = community.resolve("https://example.org/dl/4x_Foo%20Bar.v2.pth?download=1")
    assert src.name == "4x_Foo_Bar.v2" and src.host == "example.org"
    assert community.resolve("https://example.org/a.pth", name="mine").name == "mine"
    for bad in ("../x", "a/b", ".hidden", "x.pth", ""):
        with pytest.raises(community.UsageError):
            community.check_name(bad)
