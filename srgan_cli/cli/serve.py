"""`srgan serve`: the web page and the JSON/HTTP API (FastAPI + uvicorn)."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.markup import escape

from ..errors import UsageError
from ..imageio import DEFAULT_MAX_PIXELS
from ..runtime.upscaler import DEFAULT_MAX_OUTPUT_PIXELS, check_max_pixels
from ..serve.app import (
    DEFAULT_GRACE,
    DEFAULT_HOST,
    DEFAULT_MAX_UPLOAD_BYTES,
    DEFAULT_PORT,
    TOKEN_ENV,
    ServeOptions,
    check_binding,
)
from ..serve.jobs import KEEP_SECONDS
from .common import (
    DeviceOpt,
    MaxMegapixelsOpt,
    MaxOutputMegapixelsOpt,
    Precision,
    PrecisionOpt,
    console,
    guard,
)


def serve(
    host: Annotated[
        str,
        typer.Option("--host", help="The address to listen on. Any but loopback needs --token."),
    ] = DEFAULT_HOST,
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="The TCP port.")] = DEFAULT_PORT,
    models: Annotated[
        list[str] | None,
        typer.Option(
            "-m",
            "--model",
            metavar="MODEL",
            help="A model to load at start and serve (repeatable; the first is the default). "
            "Default: every model `srgan models` finds, loaded on first use.",
            show_default=False,
        ),
    ] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Jobs that run at once.")] = 1,
    queue: Annotated[
        int, typer.Option("--queue", min=0, help="Jobs that may wait; one more is refused (HTTP 429).")
    ] = 8,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar=TOKEN_ENV,
            help=f"Every request must carry it: 'Authorization: Bearer TOKEN', or the cookie that "
            f"opening /?token=TOKEN sets. Also from {TOKEN_ENV}.",
            show_default=False,
            show_envvar=False,
        ),
    ] = None,
    batch: Annotated[
        int,
        typer.Option(
            "--batch",
            min=0,
            help="Small images of one size that share a pass of the model. 0: 4 on a GPU, 1 on the CPU.",
        ),
    ] = 0,
    keep: Annotated[
        float,
        typer.Option("--keep", min=1, help="Seconds a finished job's result waits to be fetched."),
    ] = KEEP_SECONDS,
    grace: Annotated[
        float,
        typer.Option(
            "--grace",
            min=0,
            help="At shutdown, seconds running jobs get to finish before they are cancelled.",
        ),
    ] = DEFAULT_GRACE,
    allow_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-host",
            metavar="NAME",
            help="Another Host name a loopback server answers to (a reverse proxy's; repeatable).",
            show_default=False,
        ),
    ] = None,
    max_upload_mb: Annotated[
        float,
        typer.Option(
            "--max-upload-mb",
            min=0.01,
            help="Refuse requests larger than this (HTTP 413).",
            rich_help_panel="Limits",
        ),
    ] = DEFAULT_MAX_UPLOAD_BYTES / 2**20,
    max_megapixels: MaxMegapixelsOpt = DEFAULT_MAX_PIXELS / 1e6,
    max_output_megapixels: MaxOutputMegapixelsOpt = DEFAULT_MAX_OUTPUT_PIXELS / 1e6,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = Precision.auto,
) -> None:
    """Serve upscaling over HTTP: a web page to drop photos on, and a JSON API (docs at /docs).

    Open the printed address in a browser, or POST an image to /api/upscale and get the upscaled
    image back, or queue it with /api/jobs and poll. docs/serve.md says more.
    """
    with guard():
        check_binding(host, token)
        try:
            import fastapi  # noqa: F401
            import uvicorn
        except ImportError:
            raise UsageError(
                "srgan serve needs FastAPI and uvicorn", hint="pip install 'srgan-cli[serve]'"
            ) from None
        from ..serve.app import create_app

        options = ServeOptions(
            models=tuple(models or ()),
            device=device,
            precision=precision.value,
            workers=workers,
            queue=queue,
            token=token or None,
            host=host,
            allowed_hosts=tuple(allow_host or ()),
            batch=batch,
            keep_seconds=keep,
            grace=grace,
            max_upload_bytes=max(1, int(max_upload_mb * 2**20)),
            max_input_pixels=check_max_pixels(max_megapixels, "--max-megapixels"),
            max_output_pixels=check_max_pixels(max_output_megapixels, "--max-output-megapixels"),
        )
        app = create_app(options)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    where = f"http://{shown if ':' not in shown else f'[{shown}]'}:{port}"
    page = f"{where}/?token={token}" if token else f"{where}/"
    console.print(f"[green]serving[/] {escape(page)}  (API docs at {escape(where)}/docs)", soft_wrap=True)
    server = _server_class()(
        uvicorn.Config(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=grace)
    )
    server.run()


def _server_class() -> type:
    import threading

    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, which on the first Ctrl-C or SIGTERM also stops the job queue at once:
        waiting jobs fail (503) and running ones finish, before uvicorn waits for open requests."""

        def handle_exit(self, sig: int, frame: object) -> None:
            app = self.config.app
            if getattr(app.state, "stop_requested", None) is None:
                app.state.stop_requested = time.monotonic()
                threading.Thread(target=app.state.jobs.stop, daemon=True).start()  # not in the handler
            super().handle_exit(sig, frame)  # type: ignore[arg-type]

    return Server
