"""Community models from the network (`srgan models get`): OpenModelDB's catalogue, direct URLs and
the Hugging Face Hub; each download verified (size, SHA-256, a load without pickled code, spandrel's
recognition), converted to safetensors and stored in the weights folder with its source and licence.

Nothing here touches the network at import time. The catalogue is OpenModelDB's `models.json`
(`{"4x-Name": {"name", "author", "license", "architecture", "scale", "resources": [{"type",
"platform", "urls", "sha256", "size"}], ...}}`, the same records as data/models/*.json in
github.com/OpenModelDB/open-model-database), or any file or URL of that shape named by
SRGAN_MODEL_CATALOGUE; it is cached on disk with its fetch time.

A stored model is `NAME.safetensors` with the tensors of the downloaded file under their own names
and what is known about it in the safetensors metadata (RECORD_FORMAT: source URL, licence, author,
architecture, scale, SHA-256 and size of the original, date), so the record cannot be separated
from the file. It holds no `arch`/`config` keys: it is never taken for srgan-cli's own weights.
"""

from __future__ import annotations

import difflib
import hashlib
import http.client
import json
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

from . import weights
from .atomic import atomic_open
from .errors import SrganError, UsageError, WeightsError, WeightsFormatError, WeightsNotFound
from .version import __version__

ENV_CATALOGUE = "SRGAN_MODEL_CATALOGUE"  # a URL (http, https, file) or a local path
DEFAULT_CATALOGUE = "https://openmodeldb.info/api/v1/models.json"
MODEL_PAGE = "https://openmodeldb.info/models/{id}"  # for entries of the default catalogue only
CATALOGUE_MAX_AGE = 24 * 3600  # seconds a cached catalogue is used before the server is asked again
MAX_CATALOGUE_BYTES = 64 * 2**20  # today's catalogue is a few MB
TIMEOUT = 30.0  # seconds without an answer (connecting, or between two reads) before giving up
CHUNK = 2**20
RECORD_FORMAT = "srgan-cli-community/1"  # the "format" metadata of a file stored by `get`
# links that open a web page needing a browser rather than the file (many catalogue entries have
# one as a second mirror): never downloaded, named in the message when nothing else is offered
PAGE_HOSTS = ("mega.nz", "drive.google.com", "mediafire.com", "icedrive.net", "1drv.ms", "onedrive.live.com")
WEIGHTS_TYPES = ("pth", "safetensors", "pt", "ckpt", "bin")  # catalogue resource types that are weights
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_HF_URI = re.compile(r"hf://(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<rev>[\w.-]+))?/(?P<file>[^\s]+)")
_HF_SHORT = re.compile(r"(?P<repo>[\w.-]+/[\w.-]+)(?:@(?P<rev>[\w.-]+))?:(?P<file>[^\s:]+)")

OnProgress = Callable[[int, "int | None"], None]  # (bytes so far, bytes in all when known)


class DownloadError(SrganError):
    """A server that answers with an error, or a download that breaks off."""


class Unreachable(DownloadError):
    """No connection at all: offline, a wrong host name, a firewall."""


class IntegrityError(DownloadError):
    """A download whose size or SHA-256 is not what its source announced (deleted, never stored)."""

    exit_code = 2


# ---------------------------------------------------------------------------------------------
# the catalogue


@dataclass(frozen=True)
class Resource:
    """One file of a catalogue entry: its kind, where it is (mirrors, in order) and what it must be."""

    kind: str  # "pth", "safetensors", "onnx", ...
    platform: str  # "pytorch", "onnx", "ncnn"
    urls: tuple[str, ...]
    sha256: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class CatalogueEntry:
    id: str  # the catalogue's key, e.g. "4x-UltraSharp": the name a model is stored under
    name: str
    architecture: str  # the catalogue's id for it, e.g. "esrgan", "compact"
    scale: int
    license: str
    author: str
    tags: tuple[str, ...] = ()
    date: str = ""
    description: str = ""
    resources: tuple[Resource, ...] = ()

    @property
    def weights(self) -> Resource | None:
        """The first PyTorch weights file it offers (None where only ONNX or ncnn files are)."""
        return next((r for r in self.resources if r.kind.lower() in WEIGHTS_TYPES), None)

    @property
    def size(self) -> int | None:
        return self.weights.size if self.weights is not None else None

    def matches(self, text: str) -> bool:
        """Every word of `text` appears in its id, name, author, architecture, tags or description."""
        hay = " ".join((self.id, self.name, self.author, self.architecture, *self.tags, self.description))
        hay = hay.casefold()
        return all(word in hay for word in text.casefold().split())

    def to_dict(self) -> dict[str, Any]:
        facts = asdict(self)
        facts.pop("resources")
        facts["tags"] = list(self.tags)
        facts["size_bytes"] = self.size
        facts["sha256"] = self.weights.sha256 if self.weights is not None else None
        facts["urls"] = list(self.weights.urls) if self.weights is not None else []
        return facts


@dataclass
class Catalogue:
    entries: list[CatalogueEntry]
    source: str  # the URL or file it came from
    fetched: float  # when (seconds since the epoch; a local file's modification time)
    stale: bool = False  # the server could not be reached: this is an older copy from the cache
    note: str = ""  # why it is stale

    def find(self, name: str) -> CatalogueEntry:
        """The entry whose id, else whose name, is `name` (any case)."""
        key = name.casefold()
        hits = [e for e in self.entries if e.id.casefold() == key] or [
            e for e in self.entries if e.name.casefold() == key
        ]
        if len(hits) == 1:
            return hits[0]
        if hits:
            raise UsageError(
                f"{len(hits)} catalogue models are named {name!r}: {', '.join(e.id for e in hits)}",
                hint="give one of those ids",
            )
        ids = [e.id for e in self.entries]
        close = difflib.get_close_matches(name, ids, n=3, cutoff=0.6)
        close += [i for i in ids if key in i.casefold() and i not in close][: 5 - len(close)]
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise WeightsNotFound(
            f"no model named {name!r} in the catalogue ({self.source}, {len(self.entries)} models)",
            hint=f"{hint}`srgan models list --available WORDS` searches it; a URL or a file path works too",
        )

    def search(
        self, text: str = "", *, scale: int | None = None, arch: str | None = None
    ) -> list[CatalogueEntry]:
        """The entries matching every word of `text`, of scale `scale` and architecture `arch` (any
        case), by id."""
        found = [
            e
            for e in self.entries
            if (scale is None or e.scale == scale)
            and (arch is None or e.architecture.casefold() == arch.casefold())
            and e.matches(text)
        ]
        return sorted(found, key=lambda e: e.id.casefold())


def catalogue_source() -> str:
    return os.environ.get(ENV_CATALOGUE, "").strip() or DEFAULT_CATALOGUE


def load_catalogue(*, refresh: bool = False, max_age: float = CATALOGUE_MAX_AGE) -> Catalogue:
    """The catalogue: from the disk cache while it is younger than `max_age` (unless `refresh`),
    else from its server; when the server cannot be reached an older cached copy is used (marked
    stale); a local file (SRGAN_MODEL_CATALOGUE=PATH) is read as it is."""
    source = catalogue_source()
    if not _is_url(source):
        path = Path(source).expanduser()
        try:
            raw = path.read_bytes()
            fetched = path.stat().st_mtime
        except OSError as exc:
            raise WeightsNotFound(
                f"{ENV_CATALOGUE}={source}: cannot read the catalogue: {exc.strerror or exc}"
            ) from exc
        return Catalogue(_parse_catalogue(_json(raw, source), source), source, fetched)
    cache = _cache_path(source)
    cached = _read_cache(cache, source)
    if cached is not None and not refresh and time.time() - cached[0] < max_age:
        return Catalogue(_parse_catalogue(cached[1], source), source, cached[0])
    try:
        data = _json(_fetch_bytes(source, MAX_CATALOGUE_BYTES, what="the catalogue"), source)
        entries = _parse_catalogue(data, source)  # checked before it replaces a cached copy
    except Unreachable as exc:
        if cached is None:
            raise
        when = _date(cached[0])
        return Catalogue(
            _parse_catalogue(cached[1], source),
            source,
            cached[0],
            True,
            f"{exc.message}; the copy of {when} is used",
        )
    now = time.time()
    if source.startswith(("http://", "https://")):
        with atomic_open(cache) as fh:
            fh.write(json.dumps({"source": source, "fetched": now, "catalogue": data}).encode())
    return Catalogue(entries, source, now)


def _cache_path(source: str) -> Path:
    from .runtime.loader import cache_dir  # ($SRGAN_CACHE_DIR, else ~/.cache/srgan-cli)

    return cache_dir() / "catalogue" / f"{hashlib.sha256(source.encode()).hexdigest()[:16]}.json"


def _read_cache(path: Path, source: str) -> tuple[float, Any] | None:
    """(fetch time, catalogue data) of a cached copy; None if there is none, or it is unreadable."""
    try:
        doc = json.loads(path.read_bytes())
        if doc["source"] != source:
            return None
        return float(doc["fetched"]), doc["catalogue"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _json(raw: bytes, source: str) -> Any:
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WeightsFormatError(f"the catalogue at {source} is not JSON ({exc})") from exc


def _parse_catalogue(data: Any, source: str) -> list[CatalogueEntry]:
    """Entries from OpenModelDB's `{id: model}` (or a list of models, each with an "id"); models
    that say too little (no architecture or scale) are left out."""
    if isinstance(data, Mapping) and isinstance(data.get("models"), (Mapping, list)):
        data = data["models"]
    if isinstance(data, list):
        data = {str(m.get("id", "")): m for m in data if isinstance(m, Mapping)}
    if not isinstance(data, Mapping):
        raise WeightsFormatError(
            f"the catalogue at {source} is not an OpenModelDB models.json (an object of models by id)"
        )
    entries = []
    for key, model in data.items():
        entry = _entry(str(key), model)
        if entry is not None:
            entries.append(entry)
    if data and not entries:
        raise WeightsFormatError(f"the catalogue at {source} holds no model records OpenModelDB's way")
    return entries


def _entry(key: str, model: Any) -> CatalogueEntry | None:
    if not key or not isinstance(model, Mapping):
        return None
    try:
        scale = int(model["scale"])
        arch = str(model["architecture"])
    except (KeyError, TypeError, ValueError):
        return None
    author = model.get("author") or ""
    resources = []
    for res in model.get("resources") or []:
        if not isinstance(res, Mapping):
            continue
        urls = tuple(str(u) for u in res.get("urls") or [] if isinstance(u, str))
        sha = str(res.get("sha256") or "").lower() or None
        size = res.get("size")
        resources.append(
            Resource(
                kind=str(res.get("type") or ""),
                platform=str(res.get("platform") or ""),
                urls=urls,
                sha256=sha if sha and _SHA256.fullmatch(sha) else None,
                size=int(size) if isinstance(size, int) and size > 0 else None,
            )
        )
    tags = model.get("tags") or []
    return CatalogueEntry(
        id=key,
        name=str(model.get("name") or key),
        architecture=arch,
        scale=scale,
        license=str(model.get("license") or ""),
        author=", ".join(map(str, author)) if isinstance(author, list) else str(author),
        tags=tuple(str(t) for t in tags) if isinstance(tags, list) else (),
        date=str(model.get("date") or ""),
        description=str(model.get("description") or ""),
        resources=tuple(resources),
    )


# ---------------------------------------------------------------------------------------------
# what to download


@dataclass(frozen=True)
class Source:
    """What `get` downloads: from where (mirrors, in order), what it must be (size, SHA-256, when
    the source says), and what it is said to be."""

    spec: str  # as the user gave it
    name: str  # stored as NAME.safetensors
    urls: tuple[str, ...]
    sha256: str | None = None
    size: int | None = None
    license: str = ""
    author: str = ""
    architecture: str = ""  # as the source names it (the stored record has spandrel's name)
    scale: int | None = None
    catalogue_id: str = ""
    page: str = ""  # a web page about the model
    headers: tuple[tuple[str, str], ...] = ()  # e.g. a Hugging Face token (never sent to another host)

    @property
    def host(self) -> str:
        return _host(self.urls[0]) if self.urls else ""


def resolve(spec: str, *, name: str | None = None, refresh: bool = False) -> Source:
    """What `spec` names: an http(s) URL, `hf://owner/repo/path/file` or `owner/repo:file` (the
    Hugging Face Hub), a file on this machine, or a model of the catalogue by id or name. `name`
    replaces the name it is stored under. Touches the network for the catalogue (cached) and for
    the Hub's file metadata."""
    spec = spec.strip()
    if name is not None:
        check_name(name)
    if spec.startswith(("http://", "https://", "file://")):
        source = Source(spec, _name_from_url(spec), (spec,))
    elif match := _HF_URI.fullmatch(spec):
        source = _hf_source(spec, match["repo"], match["file"], match["rev"])
    elif Path(spec).expanduser().is_file():
        path = Path(spec).expanduser().resolve()
        source = Source(spec, _clean_name(path.name), (path.as_uri(),))
    elif match := _HF_SHORT.fullmatch(spec):
        source = _hf_source(spec, match["repo"], match["file"], match["rev"])
    elif "/" in spec or os.sep in spec or spec.lower().endswith(weights.TORCH_SUFFIXES + (".safetensors",)):
        raise WeightsNotFound(f"no such file: {spec}", hint="give a file path, a URL or a catalogue name")
    else:
        source = _catalogue_source(spec, load_catalogue(refresh=refresh))
    if name is not None:
        source = replace(source, name=name)
    check_name(source.name)
    return source


def _catalogue_source(spec: str, catalogue: Catalogue) -> Source:
    entry = catalogue.find(spec)
    res = entry.weights
    if res is None:
        kinds = ", ".join(sorted({r.kind for r in entry.resources})) or "none"
        raise UsageError(
            f"{entry.id}: the catalogue offers no PyTorch weights for it (files: {kinds})",
            hint="`srgan upscale -m FILE.onnx` runs ONNX files: download it yourself and pass its path",
        )
    direct = tuple(u for u in res.urls if u.startswith(("http://", "https://")) and not _is_page(u))
    if not direct:
        hosts = ", ".join(sorted({_host(u) for u in res.urls})) or "nowhere"
        raise UsageError(
            f"{entry.id}: the catalogue offers it only through pages that need a browser ({hosts})",
            hint=f"download it yourself, then: srgan models get FILE --name {entry.id}",
        )
    page = MODEL_PAGE.format(id=entry.id) if catalogue.source == DEFAULT_CATALOGUE else ""
    return Source(
        spec=spec,
        name=_clean_name(entry.id),
        urls=direct,
        sha256=res.sha256,
        size=res.size,
        license=entry.license,
        author=entry.author,
        architecture=entry.architecture,
        scale=entry.scale,
        catalogue_id=entry.id,
        page=page,
    )


def _hf_source(spec: str, repo: str, file: str, revision: str | None) -> Source:
    """A file of a Hugging Face model repo, with its size and (for LFS files: their ETag) SHA-256."""
    try:
        import huggingface_hub
    except ImportError:
        direct = f"https://huggingface.co/{repo}/resolve/{revision or 'main'}/{file}"
        raise UsageError(
            f"{spec}: Hugging Face downloads need huggingface_hub: pip install 'srgan-cli[hub]'",
            hint=f"or get the plain URL, unverified: srgan models get {direct}",
        ) from None
    url = huggingface_hub.hf_hub_url(repo, file, revision=revision)
    try:
        meta = huggingface_hub.get_hf_file_metadata(url)
    except Exception as exc:  # httpx / requests / huggingface_hub errors, by version
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status is None:
            raise Unreachable(
                f"cannot reach huggingface.co ({type(exc).__name__}): offline? download the file "
                "yourself and pass its path"
            ) from exc
        hint = (
            "a gated or private repo needs a token: log in with the hf command, or set HF_TOKEN"
            if status in (401, 403)
            else None
        )
        raise DownloadError(f"huggingface.co answered {status} for {repo}: {file}", hint=hint) from exc
    etag = (meta.etag or "").strip('"').lower()
    license_ = ""
    try:  # the model card's licence; a repo without a card (or an old huggingface_hub) has none
        card = huggingface_hub.model_info(repo, revision=revision).card_data
        license_ = str(getattr(card, "license", "") or "")
    except Exception:  # the licence is a courtesy: its absence never stops the download
        pass
    from huggingface_hub.utils import build_hf_headers

    headers = build_hf_headers()  # the user's token (hf auth login, HF_TOKEN), if any
    return Source(
        spec=spec,
        name=_clean_name(Path(file).name),
        urls=(url,),
        sha256=etag if _SHA256.fullmatch(etag) else None,
        size=meta.size,
        license=license_,
        author=repo.split("/")[0],
        page=f"https://huggingface.co/{repo}",
        headers=tuple((str(k), str(v)) for k, v in headers.items()),
    )


def check_name(name: str) -> None:
    """A name a model can be stored under: a plain file name without a model suffix."""
    if not _NAME.fullmatch(name) or name.lower().endswith((*weights.TORCH_SUFFIXES, ".safetensors")):
        raise UsageError(
            f"{name!r} cannot name a model: use letters, digits and . _ + - (at most 100, no file suffix)",
            hint="choose one with --name",
        )


def _clean_name(file_name: str) -> str:
    stem = urllib.parse.unquote(file_name)
    for suffix in (".safetensors", *weights.TORCH_SUFFIXES):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", stem).strip("._-")[:100] or "model"


def _name_from_url(url: str) -> str:
    return _clean_name(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])


def _host(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return "local file" if parts.scheme == "file" else parts.hostname or url


def _is_page(url: str) -> bool:
    host = _host(url).lower()
    return any(host == h or host.endswith("." + h) for h in PAGE_HOSTS)


def _is_url(text: str) -> bool:
    return text.startswith(("http://", "https://", "file://"))


# ---------------------------------------------------------------------------------------------
# downloading


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects (GitHub releases and the Hub answer with one), but carry no credentials to
    another host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _host(newurl) != _host(req.full_url):
            new.remove_header("Authorization")
        return new


def _open(url: str, headers: tuple[tuple[str, str], ...] = (), *, what: str) -> Any:
    """The response to GET `url`; DownloadError (Unreachable without a connection) otherwise."""
    request = urllib.request.Request(url, headers={"User-Agent": f"srgan-cli/{__version__}", **dict(headers)})
    opener = urllib.request.build_opener(_Redirects())
    try:
        return opener.open(request, timeout=TIMEOUT)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise DownloadError(f"{_host(url)} answered {exc.code} {exc.reason} for {what}: {url}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        if url.startswith("file://"):
            raise WeightsNotFound(f"cannot read {urllib.parse.unquote(url[7:])}: {_reason(exc)}") from None
        raise _unreachable(url, exc, what) from None


def _unreachable(url: str, exc: BaseException, what: str) -> Unreachable:
    where = _host(url)
    if what == "the catalogue":
        advice = f"download the file yourself and pass its path, or set {ENV_CATALOGUE} to a local file"
    else:
        advice = "download the file yourself and pass its path"
    return Unreachable(f"cannot reach {where} ({_reason(exc)}) for {what}: offline? {advice}")


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__


def _fetch_bytes(url: str, limit: int, *, what: str) -> bytes:
    """A whole (small) document, refused beyond `limit` bytes."""
    with _open(url, what=what) as response:
        try:
            data = response.read(limit + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise _unreachable(url, exc, what) from None
    if len(data) > limit:
        raise DownloadError(f"{what} at {url} is larger than {limit // 2**20} MB: refused")
    return data


def _download(
    url: str,
    out: BinaryIO,
    *,
    headers: tuple[tuple[str, str], ...] = (),
    size: int | None = None,
    on_progress: OnProgress | None = None,
) -> tuple[str, int]:
    """Stream `url` into `out`: (SHA-256 hex, bytes). Stops as soon as more than `size` bytes (when
    known) or more than a model file may hold have come."""
    limit = weights.MAX_UNPACKED_BYTES
    with _open(url, headers, what="the model") as response:
        declared = int(response.headers.get("Content-Length") or 0) or None
        if size is not None and declared is not None and declared != size:
            raise IntegrityError(
                f"{url}: the server offers {declared} bytes, the source announced {size}: refused"
            )
        total = size or declared
        if total is not None and total > limit:
            raise DownloadError(f"{url}: {total} bytes, more than a model file may hold: refused")
        digest, done = hashlib.sha256(), 0
        if on_progress is not None:
            on_progress(0, total)
        while True:
            try:
                chunk = response.read(CHUNK)
            except (OSError, http.client.HTTPException) as exc:
                raise DownloadError(
                    f"the download from {_host(url)} broke off after {done / 2**20:.1f} MB ({_reason(exc)})",
                    hint="run the command again",
                ) from None
            if not chunk:
                break
            done += len(chunk)
            if size is not None and done > size:
                raise IntegrityError(f"{url}: larger than the {size} bytes its source announced: refused")
            if done > limit:
                raise DownloadError(f"{url}: more than a model file may hold: refused")
            digest.update(chunk)
            out.write(chunk)
            if on_progress is not None:
                on_progress(done, total)
    if declared is not None and done < declared:
        raise DownloadError(
            f"the download from {_host(url)} broke off after {done} of {declared} bytes",
            hint="run the command again",
        )
    return digest.hexdigest(), done


# ---------------------------------------------------------------------------------------------
# verifying, converting, storing


@dataclass
class Installed:
    """A community model in the weights folder and what is recorded about it."""

    name: str
    path: Path
    architecture: str  # spandrel's name, e.g. "ESRGAN", "Compact"; "?" when unknown
    scale: int | None
    license: str = ""
    author: str = ""
    source: str = ""  # the URL it came from
    page: str = ""
    catalogue_id: str = ""
    sha256: str = ""  # of the file as downloaded
    size_bytes: int = 0  # of the stored file
    retrieved: str = ""  # when, ISO 8601 UTC
    kind: str = "community"  # "community" (through spandrel) or "srgan-cli" (our own format)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


def get(
    spec: str,
    *,
    name: str | None = None,
    folder: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    refresh: bool = False,
    on_progress: OnProgress | None = None,
) -> Installed:
    """Download, verify and store a model (`srgan models get`): resolve() then install()."""
    return install(
        resolve(spec, name=name, refresh=refresh), folder=folder, overwrite=overwrite, on_progress=on_progress
    )


def target(source: Source, folder: str | os.PathLike[str] | None = None) -> Path:
    """Where `install` stores `source`: FOLDER/NAME.safetensors (the user weights folder by default)."""
    base = Path(folder).expanduser() if folder is not None else weights.user_dir()
    return base / f"{source.name}.safetensors"


def check_free(dest: Path, overwrite: bool) -> None:
    """Refuse a name a shipped model has (it would hide it), or one in use unless `overwrite`."""
    name = dest.name.removesuffix(".safetensors")
    if any((d / dest.name).is_file() for d in weights.shipped_dirs()):
        raise UsageError(f"{name} is the name of a shipped model", hint="store it under another with --name")
    if not overwrite and (dest.exists() or dest.is_symlink()):
        raise UsageError(
            f"{dest} already exists", hint="--overwrite replaces it, --name stores it under another"
        )


def install(
    source: Source,
    *,
    folder: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    on_progress: OnProgress | None = None,
) -> Installed:
    """Download `source` into a temporary folder inside the weights folder, check it (size,
    SHA-256, a safe load, spandrel's recognition), convert it to safetensors and move it into place
    as NAME.safetensors. On any failure nothing is left behind."""
    dest = target(source, folder)
    check_free(dest, overwrite)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{source.name}.get-") as work:
        raw, url, sha, size = _fetch(source, Path(work), on_progress)
        record = {
            "name": source.name,
            "source": url,
            "page": source.page,
            "catalogue_id": source.catalogue_id,
            "license": source.license,
            "author": source.author,
            "sha256": sha,
            "original_size": str(size),
            "original_file": urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1]),
            "retrieved": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        }
        return _store(raw, dest, source, record, overwrite, Path(work))


def _fetch(source: Source, work: Path, on_progress: OnProgress | None) -> tuple[Path, str, str, int]:
    """Download from the first mirror that answers; (file, its URL, SHA-256, size), size and hash
    checked against what the source announced (a mismatch is refused at once, mirrors or not)."""
    failures: list[DownloadError] = []
    raw = work / "download"
    for url in source.urls:
        try:
            with raw.open("wb") as out:
                sha, size = _download(
                    url, out, headers=source.headers, size=source.size, on_progress=on_progress
                )
        except IntegrityError:
            raise
        except DownloadError as exc:
            failures.append(exc)
            continue
        if source.size is not None and size != source.size:
            raise IntegrityError(
                f"{url}: {size} bytes, its source announced {source.size}: refused and deleted"
            )
        if source.sha256 is not None and sha != source.sha256.lower():
            raise IntegrityError(
                f"{url}: SHA-256 {sha} is not the {source.sha256} its source announced: refused and deleted",
                hint="the file changed on the server, or the download was tampered with",
            )
        return raw.rename(raw.with_suffix(_sniff_suffix(raw, url))), url, sha, size
    if len(failures) == 1:
        raise failures[0]
    raise type(failures[-1])(
        "no mirror answered: " + "; ".join(f.message for f in failures), hint=failures[-1].hint
    )


def _sniff_suffix(path: Path, url: str) -> str:
    """.pth or .safetensors, from the file's first bytes (a URL's name may say neither)."""
    with path.open("rb") as fh:
        head = fh.read(9)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # a torch zip archive, or a legacy pickle
        return ".pth"
    if len(head) == 9 and head[8:9] == b"{":  # 8 bytes of header length, then the JSON header
        return ".safetensors"
    what = "a web page" if head.lstrip()[:1] == b"<" else f"a file starting with {head!r}"
    raise WeightsFormatError(
        f"{url}: the download is {what}, not a model file: refused and deleted",
        hint="links to download pages need a browser: download the file yourself and pass its path",
    )


def _store(
    raw: Path, dest: Path, source: Source, record: dict[str, str], overwrite: bool, work: Path
) -> Installed:
    """Check the downloaded file and move it (converted where it is a community model) to `dest`."""
    if raw.suffix == ".safetensors":
        try:
            ours = weights.read_info(raw)
        except WeightsError:
            ours = None
        if ours is not None:  # srgan-cli's own weights: they carry their config; stored as they are
            weights.read_state(raw)
            _place(raw, dest, overwrite)
            return _installed(dest, record, ours.arch, ours.scale, kind="srgan-cli")
    from safetensors.torch import save_file

    from .runtime.third_party import describe, summary

    facts = summary(describe(raw))  # the project's loader: no pickled code, zip bombs refused
    state = weights.read_state(raw)
    notes = []
    if source.scale is not None and source.scale != facts["scale"]:
        notes.append(f"the source says x{source.scale}, the file is a x{facts['scale']} model")
    if facts["purpose"] != "SR" or int(facts["scale"]) < 2:
        notes.append(
            f"a x{facts['scale']} {facts['purpose']} model: srgan upscale runs only models that enlarge"
        )
    record = {
        "format": RECORD_FORMAT,
        **record,
        "architecture": str(facts["architecture"]),
        "arch_id": str(facts["arch_id"]),
        "scale": str(facts["scale"]),
        "source_architecture": source.architecture,
    }
    converted = work / "converted.safetensors"
    save_file(_unshared(state), str(converted), metadata=record)  # the tensors keep their names
    del state
    check = summary(describe(converted))
    same = ("arch_id", "scale", "parameters", "input_channels", "output_channels")
    if any(check[k] != facts[k] for k in same):
        raise WeightsFormatError(
            f"{raw.name}: spandrel reads the converted file as a different model "
            f"({check['architecture']} x{check['scale']}): not stored"
        )
    _place(converted, dest, overwrite)
    return _installed(dest, record, str(facts["architecture"]), int(facts["scale"]), notes=notes)


def _unshared(state: dict[str, Any]) -> dict[str, Any]:
    """Contiguous tensors, each with its own memory (safetensors refuses shared or strided ones)."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for key, tensor in state.items():
        t = tensor.detach().contiguous()
        spot = (t.untyped_storage().data_ptr(), t.storage_offset())
        out[key] = t.clone() if spot in seen or t.untyped_storage().nbytes() != t.nbytes else t
        seen.add(spot)
    return out


def _place(file: Path, dest: Path, overwrite: bool) -> None:
    """Copy `file` to `dest` through atomic_open (whole or not at all; never over a file that
    appeared meanwhile unless `overwrite`)."""
    try:
        with file.open("rb") as src, atomic_open(dest, overwrite=overwrite) as out:
            shutil.copyfileobj(src, out, CHUNK)
    except FileExistsError:
        raise UsageError(f"{dest} appeared meanwhile: not replaced", hint="--overwrite replaces it") from None


def _installed(
    dest: Path,
    record: Mapping[str, str],
    arch: str,
    scale: int | None,
    *,
    kind: str = "community",
    notes: list[str] | None = None,
) -> Installed:
    return Installed(
        name=dest.name.removesuffix(".safetensors"),
        path=dest,
        architecture=arch,
        scale=scale,
        license=record.get("license", ""),
        author=record.get("author", ""),
        source=record.get("source", ""),
        page=record.get("page", ""),
        catalogue_id=record.get("catalogue_id", ""),
        sha256=record.get("sha256", ""),
        size_bytes=dest.stat().st_size,
        retrieved=record.get("retrieved", ""),
        kind=kind,
        notes=notes or [],
    )


def about(path: Path) -> Installed:
    """What a community model file in a weights folder is: the record `get` stored in it, else
    what spandrel says (architecture "?" where it cannot tell; the file is not otherwise judged)."""
    record: dict[str, str] = {}
    if path.suffix.lower() == ".safetensors":
        try:
            record = weights.read_metadata(path)
        except WeightsError:
            record = {}
    if record.get("format") == RECORD_FORMAT:
        try:
            scale: int | None = int(record.get("scale", ""))
        except ValueError:
            scale = None
        return _installed(path, record, record.get("architecture", "?"), scale)
    from .runtime.third_party import facts_of

    facts = facts_of(path)  # the build `srgan models` already made to judge the file
    if facts is None:
        return _installed(path, {}, "?", None)
    return _installed(path, {}, str(facts["architecture"]), int(facts["scale"]))


def _date(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def fetched_text(catalogue: Catalogue) -> str:
    """ "SOURCE (N models, fetched DATE)" for the listing's caption."""
    return f"{catalogue.source} ({len(catalogue.entries)} models, fetched {_date(catalogue.fetched)})"
