"""Reading a TOML options file (training configs, degradation ranges) with one clear error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import SrganError


def read_toml(path: str | Path, error: type[SrganError], what: str) -> dict[str, Any]:
    """The tables of the TOML file at `path`; a missing, unreadable or invalid file raises `error`
    with a sentence that names `what` it is ("config file", "degradation file")."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"cannot read {what} {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path} is not valid TOML: {exc}") from exc
