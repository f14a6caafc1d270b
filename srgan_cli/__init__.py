"""srgan-cli: image super-resolution with SRGAN.

The Python API is `srgan_cli.Upscaler` (docs/python.md); it is imported on first use, so that
`import srgan_cli` stays light."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .version import __version__

__all__ = ["Upscaler", "__version__"]

if TYPE_CHECKING:
    from .api import Upscaler


def __getattr__(name: str) -> Any:
    if name == "Upscaler":
        from .api import Upscaler

        return Upscaler
    raise AttributeError(f"module 'srgan_cli' has no attribute {name!r}")
