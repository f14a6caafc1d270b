"""`srgan serve`: the JSON/HTTP API (FastAPI + uvicorn, from the `serve` extra)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from ..errors import UsageError
from ..serve.app import DEFAULT_HOST, DEFAULT_PORT, TOKEN_ENV, ServeOptions, check_binding
from .common import DeviceOpt, Precision, PrecisionOpt, console, guard


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
            help=f"Every /api request must send 'Authorization: Bearer TOKEN'. Also from {TOKEN_ENV}.",
            show_default=False,
            show_envvar=False,
        ),
    ] = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = Precision.auto,
) -> None:
    """Serve upscaling over HTTP: a JSON API, its docs at /docs.

    POST an image to /api/upscale and get the upscaled image back, or queue it with /api/jobs and
    poll. Needs the serve extra: pip install 'srgan-cli[serve]'. docs/serve.md says more.
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
        )
        app = create_app(options)
    where = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    console.print(f"[green]serving[/] {escape(where)}/api (docs at {escape(where)}/docs)")
    uvicorn.run(app, host=host, port=port, log_level="info")
