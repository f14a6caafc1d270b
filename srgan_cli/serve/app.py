"""The HTTP API of `srgan serve`: `create_app(options)` builds the FastAPI app (FastAPI is imported
here, when called). Every upscale goes through the job queue and the shared warm Upscalers.

No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at run time."""

import atexit
import io
import ipaddress
import json
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs

from .. import weights
from ..errors import (
    ArgumentError,
    ImageReadError,
    QueueFull,
    ShuttingDown,
    SrganError,
    UploadTooLarge,
    UsageError,
    WeightsError,
    WeightsNotFound,
)
from ..imageio import DEFAULT_MAX_PIXELS, ImageData
from ..runtime.loader import check_denoise
from ..runtime.progress import PassCancelled, on_tiles
from ..runtime.upscaler import (
    DEFAULT_MAX_OUTPUT_PIXELS,
    OutputTooLarge,
    check_outscale,
    upscale_image,
    upscale_same_size,
)
from ..version import __version__
from ..weights import AUTO_JPEG_QUALITY, AUTO_MODEL, DEFAULT_MODEL, REAL_MODEL
from . import codec
from .jobs import KEEP_SECONDS, Job, JobCancelled, JobQueue, UpscalerPool

TOKEN_ENV = "SRGAN_SERVE_TOKEN"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_MAX_UPLOAD_BYTES = 50 * 2**20  # 50 MiB: a large camera JPEG or PNG, far from a server's memory
RUNNABLE_ARCHS = ("srresnet", "lapgan")  # what an Upscaler runs; text2img models are not upscalers
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
_NOT_FINISHED = 409
BATCH_MAX_PIXELS = 1_000_000  # images up to 1 MP may share a pass of the model; larger ones go alone
DEFAULT_GRACE = 30.0  # seconds running jobs get to finish at shutdown before they are cancelled


@dataclass(frozen=True)
class ServeOptions:
    """What `srgan serve` is started with (the CLI's options, one object)."""

    models: tuple[str, ...] = ()  # by name: loaded at start, and the only ones served; () = every one found
    device: str = "auto"
    precision: str = "auto"
    workers: int = 1  # jobs that run at once
    queue: int = 8  # jobs that may wait beyond those running; one more is refused (429)
    token: str | None = None  # when set, every /api request carries `Authorization: Bearer TOKEN`
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_input_pixels: int = DEFAULT_MAX_PIXELS  # the decompression-bomb guard of the reader
    max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS
    temp_dir: Path | None = None  # where the server's own temporary folder goes; None: the system's
    host: str = DEFAULT_HOST  # where it listens: on loopback, only localhost Host headers are answered
    allowed_hosts: tuple[str, ...] = ()  # more Host names a loopback server answers to (a proxy's)
    batch: int = 0  # images of one size per pass of the model; 0: 4 on a GPU, 1 on the CPU
    keep_seconds: float = KEEP_SECONDS  # how long a finished job's result waits to be fetched
    grace: float = DEFAULT_GRACE  # at shutdown, how long running jobs may take to finish


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_binding(host: str, token: str | None) -> None:
    """Serving beyond this machine needs a token: anyone who reaches the port could use the GPU."""
    if not is_loopback(host) and not token:
        raise UsageError(
            f"binding to {host} opens the server to other machines: give a token",
            hint=f"pass --token TOKEN (or set {TOKEN_ENV}); clients send 'Authorization: Bearer TOKEN'",
        )


# --- errors -> HTTP ---------------------------------------------------------------------------


def status_for(exc: BaseException) -> int:
    """The HTTP status of a library error."""
    if isinstance(exc, (OutputTooLarge, UploadTooLarge)):
        return 413
    if isinstance(exc, ImageReadError):
        return 413 if "decompression-bomb" in exc.reason else 400
    if isinstance(exc, QueueFull):
        return 429
    if isinstance(exc, (ShuttingDown, JobCancelled)):
        return 503
    if isinstance(exc, (WeightsNotFound, JobNotFound)):
        return 404
    if isinstance(exc, UsageError):
        return 422
    if isinstance(exc, WeightsError):
        return 500  # a model in the server's folder that cannot load: the server's fault, not the client's
    return 500


def error_body(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, SrganError):
        return {"error": exc.message, "hint": exc.hint}
    return {"error": "internal error: the server's log says more", "hint": None}


# --- models -----------------------------------------------------------------------------------


def available_models(options: ServeOptions) -> list[dict[str, Any]]:
    """The models a client may ask for, by name: srgan-cli weights an Upscaler runs, community
    models and `.onnx` exports in the weights folders (named with their suffix, beside the weights
    they came from), and `auto` first where both models it picks from are there (as `srgan upscale
    -m auto`: the real-world model for low-quality JPEGs, the default for the rest); or only
    `options.models`, when it names some."""
    found = _listing()["models"]
    by_name = {m["name"]: m for m in found}
    if DEFAULT_MODEL in by_name and REAL_MODEL in by_name:
        about = f"{REAL_MODEL} for JPEGs saved at quality {AUTO_JPEG_QUALITY} or lower, else {DEFAULT_MODEL}"
        auto = {"name": AUTO_MODEL, "scale": by_name[DEFAULT_MODEL]["scale"], "arch": None, "kind": "auto"}
        found = [{**auto, "about": about}, *found]
    return [m for m in found if m["name"] in options.models] if options.models else list(found)


_LISTED: dict[str, Any] = {"key": None, "models": [], "onnx": {}}
_LISTED_LOCK = threading.Lock()


def _listing() -> dict[str, Any]:
    """Every model in the weights folders ("models") and the `.onnx` paths by name ("onnx"), read
    again only when a folder changes (its mtime moves when a file is added, removed or renamed into
    it): every request checks its model name here."""
    key = tuple((str(d), _mtime(d)) for d in weights.search_dirs())
    with _LISTED_LOCK:
        if _LISTED["key"] != key:
            _LISTED.update(key=key, **_read_listing())
        return dict(_LISTED)


def _mtime(folder: Path) -> int | None:
    try:
        return folder.stat().st_mtime_ns
    except OSError:  # not there (yet)
        return None


def _read_listing() -> dict[str, Any]:
    from ..runtime.third_party import facts_of

    found: list[dict[str, Any]] = []
    for info in weights.list_models():
        if info.arch in RUNNABLE_ARCHS:
            entry = {"name": info.name, "scale": info.scale, "arch": info.arch, "kind": "srgan-cli"}
            if info.arch == "srresnet" and info.config.get("restore_blocks"):
                entry["denoise"] = True  # a restoration front-end: a request may set its strength
            found.append(entry)
    names = {m["name"] for m in found}
    for path in weights.list_foreign():
        name = path.name.rsplit(".", 1)[0]
        if name not in names:
            facts = facts_of(path) or {}  # from the one cached build that listed it as runnable
            kind = {"scale": facts.get("scale"), "arch": facts.get("architecture"), "kind": "community"}
            found.append({"name": name, **kind})
            names.add(name)
    onnx_paths: dict[str, Path] = {}
    for folder in weights.search_dirs():
        for file in sorted(folder.glob("*.onnx")) if folder.is_dir() else []:
            if file.is_file() and not file.name.startswith(".") and file.name not in names:
                onnx_paths[file.name] = file  # first folder wins
                names.add(file.name)
                scale, arch = _onnx_facts(file)
                found.append({"name": file.name, "scale": scale, "arch": arch, "kind": "onnx"})
    return {"models": found, "onnx": onnx_paths}


def _onnx_facts(path: Path) -> tuple[int | None, str | None]:
    """The scale and architecture an `.onnx` export's srgan-cli metadata states (None, None for
    another producer's file, which is measured when loaded)."""
    try:
        import onnx

        from ..runtime.onnx_export import META_PREFIX

        meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        scale = meta.get(META_PREFIX + "scale")
        return (int(scale) if scale is not None else None), meta.get(META_PREFIX + "arch")
    except Exception:  # noqa: BLE001 - unreadable here: the upscaler says why when it loads
        return None, None


def check_model(name: str, options: ServeOptions) -> str:
    """A model name a client may use, or an error: a path is refused (422), an unknown name is 404."""
    if not _MODEL_NAME.fullmatch(name) or ".." in name:
        raise ArgumentError(f"model is given by name (GET /api/models lists them), not as a path: {name!r}")
    names = [m["name"] for m in available_models(options)]
    stem = name if name in names else name.removesuffix(".safetensors")
    if stem not in names:
        raise WeightsNotFound(
            f"no model named {name!r} on this server (available: {', '.join(names) or 'none'})"
        )
    return stem


def check_denoise_for(name: str, denoise: float | None, options: ServeOptions) -> float | None:
    """A request's denoise strength, checked as `srgan upscale --denoise` checks it: 0-1, and only
    for a model with a restoration front-end (listed with "denoise": true); else 422."""
    if denoise is None:
        return None
    if name == AUTO_MODEL:
        raise UsageError(
            "denoise sets how much a restoration front-end removes; auto picks a model per image, "
            "and neither of the models it picks from has one",
            hint='name a model listed with "denoise": true (GET /api/models), e.g. srgan_x4_denoise',
        )
    listed = next((m for m in available_models(options) if m["name"] == name), {})
    info = weights.read_info(name) if listed.get("kind") == "srgan-cli" else None
    check_denoise(denoise, info, "sr", "torch", onnx=listed.get("kind") == "onnx")
    return float(denoise)


def model_source(name: str) -> str | Path:
    """What an Upscaler is built from for a checked name: the name itself (weights are found by
    name), or the server's own path of an `.onnx` file. Never anything a client sent."""
    if name.endswith(".onnx"):
        path = _listing()["onnx"].get(name)
        if path is None:
            raise WeightsNotFound(f"the ONNX file {name!r} is no longer in the weights folders")
        return path
    return name


def default_model(options: ServeOptions) -> str:
    """The model of a request that names none: the first of `options.models`, else `auto` where
    it can run, else the shipped default."""
    if options.models:
        return options.models[0]
    return AUTO_MODEL if any(m["name"] == AUTO_MODEL for m in available_models(options)) else DEFAULT_MODEL


# --- the guard in front of everything --------------------------------------------------------

TOKEN_COOKIE = "srgan_token"
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def _host_name(host_header: str) -> str:
    """The host of a Host header or an Origin's netloc, without the port ("[::1]:80" -> "::1")."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _cookie(headers: dict[str, str], name: str) -> str | None:
    for part in headers.get("cookie", "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


class _Guard:
    """ASGI middleware in front of every path:

    - the Host header (DNS rebinding): a server on loopback answers only to localhost names;
    - a cross-site form post (its Origin is another site) is refused (403);
    - the token, when set, on every request (/, /docs and /api alike): `Authorization: Bearer T`,
      or the cookie that opening `/?token=T` once sets (how a browser gets in);
    - the upload limit on /api (413), from Content-Length and again while the body streams in
      (a chunked upload has no length)."""

    def __init__(self, app: Any, options: ServeOptions) -> None:
        self.app, self.options = app, options
        self.hosts = None
        if is_loopback(options.host):
            self.hosts = {*_LOOPBACK_NAMES, _host_name(options.host), *map(str.lower, options.allowed_hosts)}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path, api = scope["path"], scope["path"].startswith("/api")
        if self.hosts is not None and _host_name(headers.get("host", "")) not in self.hosts:
            body = {
                "error": f"this server answers to localhost only, not to host {headers.get('host', '')!r}",
                "hint": "open http://127.0.0.1:PORT/, or start srgan serve with --allow-host NAME",
            }
            await _send_json(send, 403, body)
            return
        origin = headers.get("origin")
        unsafe = scope["method"] not in ("GET", "HEAD", "OPTIONS")
        if unsafe and origin and origin.split("://", 1)[-1].lower() != headers.get("host", "").lower():
            body = {"error": f"a request from another site ({origin}) is refused", "hint": None}
            await _send_json(send, 403, body)
            return
        if self.options.token is not None:
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            if path == "/" and "token" in query:  # the address srgan serve prints: set the cookie
                await self._log_in(send, query["token"][0])
                return
            if not self._authorized(headers):
                await self._refuse(send, api)
                return
        if not api:
            await self.app(scope, receive, send)
            return
        await self._limited(scope, receive, send, headers)

    def _authorized(self, headers: dict[str, str]) -> bool:
        expected = str(self.options.token).encode()
        auth = headers.get("authorization", "")
        bearer = auth[7:] if auth[:7].lower() == "bearer " else ""
        cookie = _cookie(headers, TOKEN_COOKIE) or ""
        return secrets.compare_digest(bearer.encode(), expected) or secrets.compare_digest(
            cookie.encode(), expected
        )

    async def _log_in(self, send: Any, given: str) -> None:
        if not secrets.compare_digest(given.encode(), str(self.options.token).encode()):
            await self._refuse(send, api=False)
            return
        cookie = f"{TOKEN_COOKIE}={given}; Path=/; HttpOnly; SameSite=Strict"
        headers = [(b"location", b"/"), (b"set-cookie", cookie.encode()), (b"content-length", b"0")]
        await send({"type": "http.response.start", "status": 303, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    async def _refuse(self, send: Any, api: bool) -> None:
        extra = {"www-authenticate": "Bearer"}
        if api:
            body = {"error": "this server needs a token", "hint": "send 'Authorization: Bearer TOKEN'"}
            await _send_json(send, 401, body, extra)
            return
        page = (
            b"<!doctype html><meta charset=utf-8><title>srgan-cli: token needed</title>"
            b"<h1>This server needs a token</h1><p>Open the address that <code>srgan serve</code> "
            b"printed when it started: it ends in <code>/?token=...</code>.</p>"
        )
        headers = [
            (b"content-type", b"text/html; charset=utf-8"),
            (b"content-length", str(len(page)).encode()),
        ]
        headers += [(k.encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": page})

    async def _limited(self, scope: dict[str, Any], receive: Any, send: Any, headers: dict[str, str]) -> None:
        limit = self.options.max_upload_bytes
        too_large = UploadTooLarge(
            f"the request is larger than this server's upload limit of {limit / 2**20:g} MiB"
        )
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            await _send_json(send, 413, error_body(too_large))
            return
        seen = 0
        over = False

        async def counted_receive() -> dict[str, Any]:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    over = True
                    raise _BodyTooLarge
            return message

        replied = False

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal replied
            if not over:
                await send(message)
            elif not replied:  # whatever the app made of the cut body, the answer is 413
                replied = True
                await _send_json(send, 413, error_body(too_large))

        try:
            await self.app(scope, counted_receive, guarded_send)
        except _BodyTooLarge:
            if not replied:
                await _send_json(send, 413, error_body(too_large))


class _BodyTooLarge(Exception):
    pass


async def _send_json(
    send: Any, status: int, body: dict[str, Any], extra: dict[str, str] | None = None
) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


# --- the work of one job, or of a batch of them -----------------------------------------------


class _Work:
    """Decode -> upscale -> write, for one job or a batch of jobs of one size (a single pass of
    the model); results go to files of the server's own naming in its temporary folder."""

    def __init__(self, options: ServeOptions, pool: UpscalerPool, scratch: Path) -> None:
        self.options, self.pool, self.scratch = options, pool, scratch
        self.results = scratch / "results"
        self.results.mkdir(exist_ok=True)

    def one(self, job: Job) -> dict[str, Any]:
        image = self._decode(job)
        up, lock = self.pool.get(
            job.meta["model"], self.options.device, self.options.precision, job.meta["denoise"]
        )
        with lock, on_tiles(job.report):  # the same runtime path as Upscaler.__call__
            out = upscale_image(
                up.runtime.upscaler, image, job.meta["outscale"], max_pixels=self.options.max_output_pixels
            )
        return self._write(job, out, up.scale)

    def group(self, jobs: list[Job]) -> list[tuple[Any, BaseException | None]]:
        """Jobs of one batch key: the 8-bit RGB ones of the first one's size in one pass, any other
        one by one. Each job's failure is its own."""
        outcomes: list[tuple[Any, BaseException | None]] = [(None, None)] * len(jobs)
        images: list[ImageData | None] = [None] * len(jobs)
        for i, job in enumerate(jobs):
            try:
                images[i] = self._decode(job)
            except Exception as exc:  # noqa: BLE001 - this job fails, the others go on
                outcomes[i] = (None, exc)
        first = jobs[0].meta
        up, lock = self.pool.get(
            first["model"], self.options.device, self.options.precision, first["denoise"]
        )
        inner = up.runtime.upscaler
        outscale = jobs[0].meta["outscale"]

        shared: list[int] = []  # the jobs in the shared pass: its progress is each one's

        def report(done: int, total: int) -> None:
            for i in shared:
                jobs[i].report(done, total)

        with lock, on_tiles(report):
            limit = self.options.max_output_pixels
            together = upscale_same_size(inner, images, outscale, limit, before=shared.extend)
        for i, out in together.items():
            outcomes[i] = self._attempt(lambda job=jobs[i], out=out: self._write(job, out, up.scale))
            images[i] = None  # its outcome is known
        for i, image in enumerate(images):
            if image is None:
                continue
            job = jobs[i]

            def single(job: Job = job, image: ImageData = image) -> dict[str, Any]:
                with lock, on_tiles(job.report):
                    out = upscale_image(inner, image, outscale, max_pixels=self.options.max_output_pixels)
                return self._write(job, out, up.scale)

            outcomes[i] = self._attempt(single)
        return outcomes

    @staticmethod
    def _attempt(fn: Any) -> tuple[Any, BaseException | None]:
        try:
            return fn(), None
        except PassCancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded as this job's error
            return None, exc

    def _decode(self, job: Job) -> ImageData:
        data = job.meta.pop("data")  # the upload's bytes are not kept past this
        return codec.decode(data, folder=self.scratch, max_pixels=self.options.max_input_pixels)

    def _write(self, job: Job, out: ImageData, model_scale: int) -> dict[str, Any]:
        meta = job.meta
        path = codec.write_result(
            out, meta["format"], meta["quality"], self.results / f"{job.id}.{meta['format']}"
        )
        scale = meta["outscale"] if meta["outscale"] is not None else float(model_scale)
        return {
            "path": path,
            "format": meta["format"],
            "width": out.width,
            "height": out.height,
            "model": meta["model"],
            "denoise": meta["denoise"],
            "name": codec.download_name(meta["client_name"], scale, meta["format"]),
        }


def _forget_result(job: Job) -> None:
    if isinstance(job.result, dict) and isinstance(job.result.get("path"), Path):
        job.result["path"].unlink(missing_ok=True)


_SCRATCH = re.compile(r"srgan-serve-(\d+)-\w+")
STALE_AFTER = 600.0  # a dead server's folder untouched this long is removed by the next one


def remove_stale_folders(parent: Path) -> list[Path]:
    """Remove the temporary folders that servers killed outright (SIGKILL, a power cut) left in
    `parent`: ours by name and owner, of a process that is gone, untouched for 10 minutes."""
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for folder in entries:
        match = _SCRATCH.fullmatch(folder.name)
        if match is None or int(match.group(1)) == os.getpid():
            continue
        try:
            info = folder.lstat()
            if not folder.is_dir() or folder.is_symlink() or info.st_uid != os.getuid():
                continue
            newest = max([info.st_mtime, *(p.lstat().st_mtime for p in folder.iterdir())])
            os.kill(int(match.group(1)), 0)
            continue  # that server is alive (or the pid is someone else's now): leave it
        except ProcessLookupError:
            if time.time() - newest < STALE_AFTER:
                continue
        except (OSError, ValueError):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def batch_size(options: ServeOptions) -> int:
    """Images of one size that go through the model together: `options.batch`, or by default 4 on
    a GPU (small images alone leave it mostly idle) and 1 on the CPU (no gain there)."""
    if options.batch:
        return options.batch
    from ..devices import resolve_device

    return 4 if resolve_device(options.device).type == "cuda" else 1


# --- the app ----------------------------------------------------------------------------------


def create_app(options: ServeOptions | None = None) -> Any:
    """The FastAPI app of `srgan serve`. The models named in `options.models` are loaded now, so a
    wrong name fails at start (WeightsNotFound) and the first request is fast. Uploads and results
    pass through a temporary folder of its own, removed when the app stops (and at exit)."""
    from contextlib import asynccontextmanager

    from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from starlette.background import BackgroundTask

    options = options or ServeOptions()
    pool = UpscalerPool(max_output_pixels=options.max_output_pixels)
    for name in options.models:
        checked = check_model(name, options)
        for each in (DEFAULT_MODEL, REAL_MODEL) if checked == AUTO_MODEL else (checked,):
            pool.get(each, options.device, options.precision)
    remove_stale_folders(Path(options.temp_dir or tempfile.gettempdir()))
    scratch = Path(tempfile.mkdtemp(prefix=f"srgan-serve-{os.getpid()}-", dir=options.temp_dir))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    work = _Work(options, pool, scratch)
    batch = batch_size(options)
    jobs = JobQueue(
        options.workers,
        options.queue,
        batch=batch,
        run_group=work.group,
        keep_seconds=options.keep_seconds,
        on_forget=_forget_result,
    )

    def shut_down() -> None:
        """Stop taking work, let running jobs end (up to the grace time, counted from the first
        signal), cancel the rest, and remove every upload and result."""
        since = getattr(app.state, "stop_requested", None) or time.monotonic()
        jobs.close(grace=max(0.0, options.grace - (time.monotonic() - since)))
        jobs.forget_all()
        shutil.rmtree(scratch, ignore_errors=True)

    @asynccontextmanager
    async def lifespan(_: Any) -> Any:
        yield
        import anyio.to_thread

        await anyio.to_thread.run_sync(shut_down)

    app = FastAPI(
        title="srgan-cli",
        version=__version__,
        summary="Image super-resolution over HTTP (srgan serve).",
        lifespan=lifespan,
    )
    app.state.jobs, app.state.pool, app.state.options, app.state.scratch = jobs, pool, options, scratch
    app.state.stop_requested = None
    app.add_middleware(_Guard, options=options)

    @app.exception_handler(SrganError)
    async def _library_error(_: Request, exc: SrganError) -> JSONResponse:
        return JSONResponse(error_body(exc), status_code=status_for(exc))

    def submit(
        data: bytes,
        client_name: str | None,
        model: str | None,
        outscale: float | None,
        fmt: str,
        quality: int,
        denoise: float | None = None,
    ) -> Job:
        """Check the options (before queueing), then queue decode -> upscale -> write."""
        fmt = codec.check_format(fmt)
        codec.check_quality(quality)
        scale = check_outscale(outscale)
        name = check_model(model, options) if model is not None else default_model(options)
        denoise = check_denoise_for(name, denoise, options)
        if name == AUTO_MODEL:
            name = weights.auto_model(io.BytesIO(data))
        key = None
        if batch > 1:
            size = codec.probe(data)
            if size is not None and size[0] * size[1] <= BATCH_MAX_PIXELS:
                key = (name, size, scale, denoise)
        meta = {
            "data": data,
            "client_name": client_name,
            "model": name,
            "denoise": denoise,
            "outscale": scale,
            "format": fmt,
            "quality": quality,
        }
        return jobs.submit(work.one, key=key, meta=meta)

    def image_response(job: Job, *, then_forget: bool = False) -> Response:
        result = job.result
        headers = {
            "X-Srgan-Model": result["model"],
            "X-Srgan-Size": f"{result['width']}x{result['height']}",
            **({"X-Srgan-Denoise": f"{result['denoise']:g}"} if result["denoise"] is not None else {}),
            "Content-Disposition": f'inline; filename="{result["name"]}"',
            "Cache-Control": "no-store",
        }
        after = BackgroundTask(jobs.discard, job.id) if then_forget else None
        return FileResponse(
            result["path"],
            media_type=codec.OUTPUT_FORMATS[result["format"]],
            headers=headers,
            background=after,
        )

    async def read_upload(image: UploadFile) -> bytes:
        limit = options.max_upload_bytes
        data = await image.read(limit + 1)
        if len(data) > limit:
            raise UploadTooLarge(
                f"the image is larger than this server's upload limit of {limit / 2**20:g} MiB"
            )
        return data

    def pick(form: Any, query: Any) -> Any:
        return form if form is not None else query

    static = Path(__file__).with_name("static")

    @app.get("/", include_in_schema=False)
    def page() -> Response:
        """The web page (static, offline: no CDN, no build step)."""
        return FileResponse(static / "index.html", media_type="text/html; charset=utf-8")

    app.mount("/static", StaticFiles(directory=static), name="static")

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        """Whether the server is up, its version, its queue, the models loaded and its limits."""
        return {
            "status": "ok",
            "version": __version__,
            "jobs": jobs.counts(),
            "loaded": pool.loaded(),
            "limits": {
                "max_upload_bytes": options.max_upload_bytes,
                "max_input_pixels": options.max_input_pixels,
                "max_output_pixels": options.max_output_pixels,
            },
        }

    @app.get("/api/models")
    def models() -> dict[str, Any]:
        """The models a request may name, and the default one."""
        return {"default": default_model(options), "models": available_models(options)}

    async def request_job(
        image: Annotated[UploadFile, File(description="The image to upscale.")],
        model: str | None = Query(None, description="A model by name (GET /api/models)."),
        outscale: float | None = Query(None, description="A final scale other than the model's."),
        format: str = Query("png", description="png, jpg or webp."),
        quality: int = Query(95, description="JPEG/WebP quality, 1-100."),
        denoise: float | None = Query(
            None,
            description="For a model with a restoration front-end (listed with denoise: true): the "
            "share (0-1) of its correction to apply; default 1, the model as trained.",
        ),
        model_f: str | None = Form(None, alias="model"),
        outscale_f: float | None = Form(None, alias="outscale"),
        format_f: str | None = Form(None, alias="format"),
        quality_f: int | None = Form(None, alias="quality"),
        denoise_f: float | None = Form(None, alias="denoise"),
    ) -> Job:
        """The queued job of one request (its options as query or form fields), for both endpoints."""
        return submit(
            await read_upload(image),
            image.filename,
            pick(model_f, model),
            pick(outscale_f, outscale),
            pick(format_f, format),
            pick(quality_f, quality),
            pick(denoise_f, denoise),
        )

    @app.post("/api/upscale", responses={200: {"content": {f: {} for f in codec.OUTPUT_FORMATS.values()}}})
    async def upscale(job: Annotated[Job, Depends(request_job)]) -> Response:
        """Upscale one image and answer with it (options as query or form fields)."""
        await _wait(job)
        if job.error is not None:
            jobs.discard(job.id)
            raise job.error
        return image_response(job, then_forget=True)

    @app.post("/api/jobs", status_code=202)
    async def submit_job(job: Annotated[Job, Depends(request_job)]) -> dict[str, Any]:
        """Queue one image; poll GET /api/jobs/{id}, then fetch GET /api/jobs/{id}/result."""
        return _job_document(job, jobs)

    @app.get("/api/jobs/{job_id}")
    def job_status(job_id: str) -> dict[str, Any]:
        """A job's status: queued (with its place in the line), running (with its progress), done
        or failed (with the error)."""
        return _job_document(_job(jobs, job_id), jobs)

    @app.get("/api/jobs/{job_id}/result")
    def job_result(job_id: str) -> Response:
        """A finished job's image; 409 while it runs, the job's own error when it failed."""
        job = _job(jobs, job_id)
        if job.status == "failed" and job.error is not None:
            return JSONResponse(error_body(job.error), status_code=status_for(job.error))
        if job.status != "done":
            body = {"error": f"job {job_id} is {job.status}, not done", "hint": "poll GET /api/jobs/{id}"}
            return JSONResponse(body, status_code=_NOT_FINISHED)
        return image_response(job)

    @app.delete("/api/jobs/{job_id}", status_code=204)
    def forget_job(job_id: str) -> Response:
        """Forget a finished job and remove its result now (else it goes after a while); 409 while
        it is queued or running."""
        job = _job(jobs, job_id)
        if not jobs.discard(job_id):
            body = {
                "error": f"job {job_id} is {job.status}; only a finished job can be removed",
                "hint": None,
            }
            return JSONResponse(body, status_code=_NOT_FINISHED)
        return Response(status_code=204)

    return app


async def _wait(job: Job) -> None:
    import anyio.to_thread

    await anyio.to_thread.run_sync(job.wait)


class JobNotFound(SrganError):
    """An unknown job id (HTTP 404)."""


def _job(jobs: JobQueue, job_id: str) -> Job:
    job = jobs.get(job_id)
    if job is None:
        raise JobNotFound(f"no job {job_id!r} (finished jobs are kept for a while, then forgotten)")
    return job


def _job_document(job: Job, jobs: JobQueue) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": job.id,
        "status": job.status,
        "url": f"/api/jobs/{job.id}",
        "progress": round(job.progress, 4),
    }
    if job.status == "queued":
        position = jobs.position(job)
        if position is not None:
            doc["position"] = position
    if job.status == "done":
        doc["result"] = f"/api/jobs/{job.id}/result"
        doc["size"] = f"{job.result['width']}x{job.result['height']}"
        doc["name"] = job.result["name"]
        doc["model"] = job.result["model"]
        if job.result["denoise"] is not None:
            doc["denoise"] = job.result["denoise"]
    if job.status == "failed" and job.error is not None:
        doc.update(error_body(job.error), status_code=status_for(job.error))
    return doc
