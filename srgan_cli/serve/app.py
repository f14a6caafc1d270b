"""The HTTP API of `srgan serve`: `create_app(options)` builds the FastAPI app (FastAPI is imported
here, when called). Every upscale goes through the job queue and the shared warm Upscalers.

No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at run time."""

import ipaddress
import json
import re
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

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
from ..imageio import DEFAULT_MAX_PIXELS
from ..runtime.upscaler import DEFAULT_MAX_OUTPUT_PIXELS, OutputTooLarge, check_outscale, upscale_image
from ..version import __version__
from ..weights import DEFAULT_MODEL
from . import codec
from .jobs import Job, JobQueue, UpscalerPool

TOKEN_ENV = "SRGAN_SERVE_TOKEN"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_MAX_UPLOAD_BYTES = 50 * 2**20  # 50 MiB: a large camera JPEG or PNG, far from a server's memory
RUNNABLE_ARCHS = ("srresnet", "lapgan")  # what an Upscaler runs; text2img models are not upscalers
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
_NOT_FINISHED = 409


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
    temp_dir: Path | None = None  # where uploads and results pass through; None: the system's


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
    if isinstance(exc, ShuttingDown):
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
    """The models a client may ask for, by name: srgan-cli weights an Upscaler runs, then community
    models in the weights folders (or only `options.models`, when it names some)."""
    found: list[dict[str, Any]] = []
    for info in weights.list_models():
        if info.arch in RUNNABLE_ARCHS:
            found.append({"name": info.name, "scale": info.scale, "arch": info.arch, "kind": "srgan-cli"})
    names = {m["name"] for m in found}
    for path in weights.list_foreign():
        name = path.name.rsplit(".", 1)[0]
        if name not in names:
            found.append({"name": name, "scale": None, "arch": None, "kind": "community"})
    if options.models:
        found = [m for m in found if m["name"] in options.models]
    return found


def check_model(name: str, options: ServeOptions) -> str:
    """A model name a client may use, or an error: a path is refused (400), an unknown name is 404."""
    if not _MODEL_NAME.fullmatch(name) or ".." in name:
        raise ArgumentError(f"model is given by name (GET /api/models lists them), not as a path: {name!r}")
    names = [m["name"] for m in available_models(options)]
    stem = name.removesuffix(".safetensors")
    if stem not in names:
        raise WeightsNotFound(
            f"no model named {name!r} on this server (available: {', '.join(names) or 'none'})"
        )
    return stem


def default_model(options: ServeOptions) -> str:
    return options.models[0] if options.models else DEFAULT_MODEL


# --- the app ----------------------------------------------------------------------------------


class _Guard:
    """ASGI middleware in front of /api: the bearer token (401), then the upload limit (413), checked
    from Content-Length and again while the body streams in (a chunked upload has no length)."""

    def __init__(self, app: Any, options: ServeOptions) -> None:
        self.app, self.options = app, options

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.options.token is not None:
            given = headers.get("authorization", "")
            expected = f"Bearer {self.options.token}"
            if not secrets.compare_digest(given.encode(), expected.encode()):
                body = {"error": "this server needs a token", "hint": "send 'Authorization: Bearer TOKEN'"}
                await _send_json(send, 401, body, {"www-authenticate": "Bearer"})
                return
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


def create_app(options: ServeOptions | None = None) -> Any:
    """The FastAPI app of `srgan serve`. The models named in `options.models` are loaded now, so a
    wrong name fails at start (WeightsNotFound) and the first request is fast."""
    from contextlib import asynccontextmanager

    from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
    from fastapi.responses import JSONResponse, Response

    options = options or ServeOptions()
    pool = UpscalerPool(max_output_pixels=options.max_output_pixels)
    for name in options.models:
        pool.get(check_model(name, options), options.device, options.precision)
    jobs = JobQueue(options.workers, options.queue)
    scratch = options.temp_dir or Path(tempfile.gettempdir())

    @asynccontextmanager
    async def lifespan(_: Any) -> Any:
        yield
        jobs.close()

    app = FastAPI(
        title="srgan-cli",
        version=__version__,
        summary="Image super-resolution over HTTP (srgan serve).",
        lifespan=lifespan,
    )
    app.state.jobs, app.state.pool, app.state.options = jobs, pool, options
    app.add_middleware(_Guard, options=options)

    @app.exception_handler(SrganError)
    async def _library_error(_: Request, exc: SrganError) -> JSONResponse:
        return JSONResponse(error_body(exc), status_code=status_for(exc))

    def work(data: bytes, model: str | None, outscale: float | None, fmt: str, quality: int) -> Job:
        """Check the options (before queueing), then queue decode -> upscale -> encode."""
        fmt = codec.check_format(fmt)
        codec.check_quality(quality)
        scale = check_outscale(outscale)
        name = check_model(model, options) if model is not None else default_model(options)

        def run() -> dict[str, Any]:
            image = codec.decode(data, folder=scratch, max_pixels=options.max_input_pixels)
            up, lock = pool.get(name, options.device, options.precision)
            with lock:  # the same runtime path as Upscaler.__call__ (its own outscale left alone)
                out = upscale_image(up.runtime.upscaler, image, scale, max_pixels=options.max_output_pixels)
            body = codec.encode(out, fmt, quality, folder=scratch)
            return {"body": body, "format": fmt, "width": out.width, "height": out.height, "model": name}

        return jobs.submit(run)

    def image_response(result: dict[str, Any]) -> Response:
        headers = {
            "X-Srgan-Model": result["model"],
            "X-Srgan-Size": f"{result['width']}x{result['height']}",
            "Content-Disposition": f'inline; filename="upscaled.{result["format"]}"',
        }
        return Response(result["body"], media_type=codec.OUTPUT_FORMATS[result["format"]], headers=headers)

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

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        """Whether the server is up, its version, its queue and the models loaded."""
        return {"status": "ok", "version": __version__, "jobs": jobs.counts(), "loaded": pool.loaded()}

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
        model_f: str | None = Form(None, alias="model"),
        outscale_f: float | None = Form(None, alias="outscale"),
        format_f: str | None = Form(None, alias="format"),
        quality_f: int | None = Form(None, alias="quality"),
    ) -> Job:
        """The queued job of one request (its options as query or form fields), for both endpoints."""
        return work(
            await read_upload(image),
            pick(model_f, model),
            pick(outscale_f, outscale),
            pick(format_f, format),
            pick(quality_f, quality),
        )

    @app.post("/api/upscale", responses={200: {"content": {f: {} for f in codec.OUTPUT_FORMATS.values()}}})
    async def upscale(job: Annotated[Job, Depends(request_job)]) -> Response:
        """Upscale one image and answer with it (options as query or form fields)."""
        await _wait(job)
        if job.error is not None:
            raise job.error
        return image_response(job.result)

    @app.post("/api/jobs", status_code=202)
    async def submit(job: Annotated[Job, Depends(request_job)]) -> dict[str, Any]:
        """Queue one image; poll GET /api/jobs/{id}, then fetch GET /api/jobs/{id}/result."""
        return _job_document(job)

    @app.get("/api/jobs/{job_id}")
    def job_status(job_id: str) -> dict[str, Any]:
        """A job's status: queued, running, done or failed (with the error)."""
        return _job_document(_job(jobs, job_id))

    @app.get("/api/jobs/{job_id}/result")
    def job_result(job_id: str) -> Response:
        """A finished job's image; 409 while it runs, the job's own error when it failed."""
        job = _job(jobs, job_id)
        if job.status == "failed" and job.error is not None:
            return JSONResponse(error_body(job.error), status_code=status_for(job.error))
        if job.status != "done":
            body = {"error": f"job {job_id} is {job.status}, not done", "hint": "poll GET /api/jobs/{id}"}
            return JSONResponse(body, status_code=_NOT_FINISHED)
        return image_response(job.result)

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


def _job_document(job: Job) -> dict[str, Any]:
    doc: dict[str, Any] = {"id": job.id, "status": job.status, "url": f"/api/jobs/{job.id}"}
    if job.status == "done":
        doc["result"] = f"/api/jobs/{job.id}/result"
        doc["size"] = f"{job.result['width']}x{job.result['height']}"
    if job.status == "failed" and job.error is not None:
        doc.update(error_body(job.error), status_code=status_for(job.error))
    return doc
