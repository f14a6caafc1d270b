"""`srgan benchmark serve` (issue 42): `srgan serve` under load, measured from outside.

The server runs in a subprocess (`python -m srgan_cli serve` on 127.0.0.1, a free port), so its own
memory can be read from /proc/<pid>/status (VmRSS, and VmHWM for the peak) while N client threads
POST /api/upscale for a fixed time. Every client sends its own distinct images and checks that each
answer is the upscale of the image it sent (its size, its headers and its pixels, against the same
model run in this process), so a result given to the wrong request is counted, never missed.
Refusals (429 queue full, 503 shutting down) are answered by a short backoff and counted.

Beside it, the same upscale in this process (one thread, no HTTP) is timed as the reference, so the
server's throughput reads as a fraction of what the model alone does on this machine.

Linux only (/proc). Library code: no typer, no rich; `benchmark_serve` returns a ServeLoadBenchmark.
"""

from __future__ import annotations

import http.client
import io
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SrganError, UsageError
from ..weights import ENV_DIR

TINY_MODEL = "tiny"  # `-m tiny`: a 1-block, 8-channel x4 SRResNet made on the fly (seconds of work per 1000)
HOST = "127.0.0.1"
VARIANTS_PER_CLIENT = 4  # distinct images each client cycles through, so even its own results cannot swap
TOLERANCE = 1.0  # mean |difference| (0-255) between an answer and the same upscale in this process
SAMPLE_EVERY = 0.5  # seconds between memory samples
STOP_GRACE = 10.0  # seconds the server has to exit after SIGTERM before it is killed
_MAX_EXAMPLES = 5
_CLEAN_EXITS = (0, -signal.SIGTERM, 128 + signal.SIGTERM)  # a stop on SIGTERM, however it is said
_TIMELINE_POINTS = 60


class ServerFailed(SrganError):
    """The server subprocess did not start, or died during the benchmark."""


@dataclass
class ServeLoadBenchmark:
    """What `benchmark_serve` measured. Memory is the server process's, in MB (2**20 bytes)."""

    model: str
    device: str
    clients: int
    workers: int
    queue: int
    threads: int | None  # torch threads of the server and the reference; None: torch's default
    batch: int | None  # the server's --batch; None: its default
    seconds: float  # asked for
    duration_s: float  # from the first request of the timed run to the last answer
    input_size: tuple[int, int]  # (width, height) of every image sent
    output_size: tuple[int, int]
    images: int  # distinct images sent (clients x VARIANTS_PER_CLIENT)
    warmup_requests: int  # sent one at a time before the timed run (every image once), checked too
    requests: int  # answered in the timed run, whatever the status
    ok: int  # 200s in the timed run
    requests_per_s: float  # 200s per second of the timed run
    answers_per_s: float  # answers of any status per second
    latency_ms_p50: float | None  # of the 200s
    latency_ms_p90: float | None
    latency_ms_p99: float | None
    latency_ms_max: float | None
    refused_latency_ms_p50: float | None  # of the 429s and 503s
    statuses: dict[str, int]  # answers by HTTP status ("200", "429", ...), "error:<kind>" when none came
    wrong_results: int  # answers that are not the upscale of the image sent (warm-up included): must be 0
    wrong_examples: list[str]  # the first few, said in words
    server_errors: int  # 5xx answers other than 503
    rss_start_mb: float  # after the warm-up, before the timed run
    rss_end_mb: float  # at the end of the timed run
    rss_peak_mb: float  # VmHWM: the most the server ever held, start-up included
    rss_first_third_mb: float  # median of the samples in the first third of the timed run
    rss_last_third_mb: float  # and in the last third
    rss_slope_mb_per_1000: float | None  # least squares of RSS against answers in the timed run
    rss_slope_late_mb_per_1000: float | None  # the same over its second half (allocator pools warm)
    rss_samples: int
    rss_timeline: list[tuple[float, float, int]]  # (seconds, RSS MB, answers so far), at most 60 points
    server_cpu_s: float  # CPU time the server used during the timed run (all its threads)
    in_process_ms_per_image: float  # the same model on the same images here: one thread, no HTTP
    in_process_images_per_s: float
    of_in_process: float  # requests_per_s / in_process_images_per_s
    server_exit_code: int | None  # after SIGTERM (0, -15 or 143: it stopped on it)
    server_killed: bool  # it did not stop within STOP_GRACE seconds of SIGTERM
    load_average: tuple[float, float, float]  # the machine's, before the run (other work on it)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- inputs and the truth -------------------------------------------------------------------


def make_images(width: int, height: int, count: int, seed: int = 0) -> list[np.ndarray]:
    """`count` distinct (H, W, 3) uint8 images: each its own colour, stripes and a block placed by
    its index, so no two upscale to anything alike."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = []
    for k in range(count):
        rng = np.random.default_rng([seed, k])
        base = rng.uniform(0.25, 0.75, 3)
        fx, fy = rng.uniform(3, 14, (2, 3))
        phase = rng.uniform(0, 2 * np.pi, 3)
        img = base + 0.2 * np.sin(xx[..., None] / fx + yy[..., None] / fy + phase)
        bh, bw = max(1, height // 4), max(1, width // 4)
        top, left = (k * 7) % max(1, height - bh), (k * 13) % max(1, width - bw)
        img[top : top + bh, left : left + bw] = rng.uniform(0, 1, 3)
        img += rng.normal(0, 0.02, img.shape)
        out.append(np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8))
    return out


def png_bytes(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def tiny_weights(folder: Path, seed: int = 0) -> str:
    """A tiny x4 SRResNet (1 block, 8 channels, global skip: its output follows its input) saved in
    `folder` as `TINY_MODEL`; returns its name."""
    import torch

    from .. import weights
    from ..sr.models import SRResNet, SRResNetConfig

    torch.manual_seed(seed)
    model = SRResNet(SRResNetConfig(scale=4, n_blocks=1, n_feats=8, global_skip=True)).eval()
    weights.save(folder / f"{TINY_MODEL}.safetensors", model, trained_on="nothing (srgan benchmark serve)")
    return TINY_MODEL


@dataclass
class _Truth:
    """The expected answer for each image, made by the same model in this process."""

    inputs: list[bytes]  # PNG bytes, as sent
    expected: list[np.ndarray]  # uint8 (H*s, W*s, 3)
    ms_per_image: float
    scale: int
    margin: float  # the smallest mean |difference| between two expected answers


def _truth(model: str, device: str, images: list[np.ndarray], runs: int, threads: int | None) -> _Truth:
    """Upscale every image here as the server does (read the PNG with read_image, upscale_image on
    the Upscaler's runtime), and time it: one calling thread (`threads` torch threads when given),
    median of `runs` after the untimed first pass over every image."""
    import torch

    saved = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _truth_here(model, device, images, runs)
    finally:
        torch.set_num_threads(saved)


def _truth_here(model: str, device: str, images: list[np.ndarray], runs: int) -> _Truth:
    from ..api import Upscaler
    from ..imageio import read_image
    from ..runtime.upscaler import upscale_image

    up = Upscaler(model, device=device)
    upscaler = up.runtime.upscaler
    inputs = [png_bytes(img) for img in images]
    decoded = []
    with tempfile.TemporaryDirectory(prefix="srgan-load-") as tmp:
        for i, data in enumerate(inputs):
            path = Path(tmp) / f"in{i}.png"
            path.write_bytes(data)
            decoded.append(read_image(path))
    expected = []
    for image in decoded:
        out = upscale_image(upscaler, image)
        expected.append(_as_u8(out.pixels))
    times = []
    for i in range(runs):
        start = time.perf_counter()
        upscale_image(upscaler, decoded[i % len(decoded)])
        times.append(time.perf_counter() - start)
    margin = min(
        (_mad(a, b) for i, a in enumerate(expected) for b in expected[i + 1 :]), default=float("inf")
    )
    return _Truth(inputs, expected, statistics.median(times) * 1000, up.scale, margin)


def _as_u8(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return pixels
    return np.clip(np.rint(pixels * 255), 0, 255).astype(np.uint8)


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two uint8 images of one shape, on the 0-255 scale."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# --- the server process ---------------------------------------------------------------------


def free_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def read_memory_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of a process, in MB, from /proc/<pid>/status."""
    values = {}
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024  # kB
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


def read_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _with_dirs(current: str | None, dirs: list[Path]) -> str:
    """A SRGAN_WEIGHTS_DIR value with `dirs` searched first."""
    return os.pathsep.join([*(str(p) for p in dirs), *([current] if current else [])])


@contextmanager
def _weights_env(dirs: list[Path]) -> Iterator[None]:
    """`dirs` searched first for weights in this process, for the time of the block."""
    saved = os.environ.get(ENV_DIR)
    if dirs:
        os.environ[ENV_DIR] = _with_dirs(saved, dirs)
    try:
        yield
    finally:
        if dirs and saved is None:
            os.environ.pop(ENV_DIR, None)
        elif dirs and saved is not None:
            os.environ[ENV_DIR] = saved


@dataclass
class ServerProcess:
    pid: int
    port: int
    url: str
    proc: subprocess.Popen[bytes]
    log: Path


def stop_server(proc: subprocess.Popen[bytes], grace: float = STOP_GRACE) -> tuple[int | None, bool]:
    """SIGTERM, then SIGKILL if it is still there after `grace` seconds: (exit code, killed)."""
    if proc.poll() is not None:
        return proc.returncode, False
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(grace), False
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(), True


@contextmanager
def run_server(
    model: str,
    *,
    workers: int,
    queue: int,
    device: str = "cpu",
    threads: int | None = None,
    batch: int | None = None,
    weights_dirs: list[Path] | None = None,
    startup_timeout: float = 300.0,
    stopped: dict[str, Any] | None = None,
) -> Iterator[ServerProcess]:
    """`python -m srgan_cli serve` on 127.0.0.1 and a free port, ready (GET /api/health answers);
    always stopped on the way out (SIGTERM, then SIGKILL after STOP_GRACE seconds), its exit code
    and whether it was killed put in `stopped`. `threads`: the server's torch threads (OMP_NUM_THREADS);
    `batch`: its --batch (None: its default)."""
    env = dict(os.environ)
    env.pop("SRGAN_SERVE_TOKEN", None)  # the user's token would make every request a 401
    env["PYTHONUNBUFFERED"] = "1"
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    if weights_dirs:
        env[ENV_DIR] = _with_dirs(env.get(ENV_DIR), weights_dirs)
    port = free_port()
    command = [sys.executable, "-m", "srgan_cli", "serve", "--host", HOST, "--port", str(port)]
    command += ["-m", model, "--workers", str(workers), "--queue", str(queue), "--device", device]
    if batch is not None:
        command += ["--batch", str(batch)]
    with tempfile.TemporaryDirectory(prefix="srgan-load-server-") as tmp:
        log = Path(tmp) / "server.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env
            )
        try:
            url = f"http://{HOST}:{port}"
            deadline = time.monotonic() + startup_timeout
            while True:
                if proc.poll() is not None:
                    raise ServerFailed(
                        f"the server exited with code {proc.returncode} before it answered",
                        hint="its log ends with: " + _tail(log),
                    )
                if _healthy(port):
                    break
                if time.monotonic() > deadline:
                    raise ServerFailed(
                        f"the server did not answer within {startup_timeout:g} s", hint=_tail(log)
                    )
                time.sleep(0.2)
            yield ServerProcess(proc.pid, port, url, proc, log)
        finally:
            code, killed = stop_server(proc)
            if stopped is not None:
                stopped.update(exit_code=code, killed=killed, log=_tail(log, 2000))


def _tail(path: Path, chars: int = 600) -> str:
    try:
        return path.read_bytes()[-chars:].decode("utf-8", "replace").strip() or "(empty)"
    except OSError:
        return "(no log)"


# --- the clients ----------------------------------------------------------------------------
# The standard library's HTTP client: `srgan serve`'s extra has no HTTP client, and one kept-alive
# connection per client thread is all this needs.

_TRANSPORT_ERRORS = (OSError, http.client.HTTPException)  # refused, reset, timed out, cut short


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    content: bytes


class Connection:
    """One kept-alive HTTP/1.1 connection to the server, reopened when the server has closed it."""

    def __init__(self, port: int, timeout: float) -> None:
        self.port, self.timeout = port, timeout
        self._conn: http.client.HTTPConnection | None = None

    def post_image(self, path: str, data: bytes, filename: str) -> Answer:
        """POST `data` as the multipart field `image`. A kept-alive connection the server closed
        while it was idle is retried once on a new one; any other failure raises."""
        boundary = os.urandom(16).hex()
        body = b"".join(
            [
                f"--{boundary}\r\n".encode(),
                f'Content-Disposition: form-data; name="image"; filename="{filename}"\r\n'.encode(),
                b"Content-Type: image/png\r\n\r\n",
                data,
                f"\r\n--{boundary}--\r\n".encode(),
            ]
        )
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        reused = self._conn is not None
        try:
            return self._request("POST", path, body, headers)
        except (ConnectionError, http.client.RemoteDisconnected):
            if not reused:
                raise
            return self._request("POST", path, body, headers)

    def get(self, path: str) -> Answer:
        return self._request("GET", path, None, {})

    def _request(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> Answer:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout)
        try:
            self._conn.request(method, path, body=body, headers=headers)
            response = self._conn.getresponse()
            content = response.read()
        except BaseException:
            self.close()
            raise
        answer = Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, content)
        if response.will_close:
            self.close()
        return answer

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _healthy(port: int) -> bool:
    conn = Connection(port, timeout=2.0)
    try:
        return conn.get("/api/health").status == 200
    except _TRANSPORT_ERRORS:
        return False
    finally:
        conn.close()


def _upscale_path(model: str) -> str:
    return "/api/upscale?" + urllib.parse.urlencode({"model": model})


@dataclass
class _ClientStats:
    latencies: list[float] = field(default_factory=list)  # seconds, 200s
    refused: list[float] = field(default_factory=list)  # seconds, 429s and 503s
    statuses: Counter[str] = field(default_factory=Counter)
    answered: int = 0
    wrong: int = 0
    examples: list[str] = field(default_factory=list)
    first_sent: float | None = None
    last_answer: float | None = None
    bodies: list[str] = field(default_factory=list)  # the first unexpected error answers


class _Checker:
    """Whether an answer is the upscale of the image sent, and if not, whose it looks like."""

    def __init__(self, truth: _Truth, model: str) -> None:
        self.truth, self.model = truth, model
        h, w = truth.expected[0].shape[:2]
        self.size = f"{w}x{h}"

    def problem(self, k: int, response: Any) -> str | None:
        size, served = response.headers.get("x-srgan-size"), response.headers.get("x-srgan-model")
        if size != self.size:
            return f"image {k}: X-Srgan-Size {size}, expected {self.size}"
        if served is not None and served != self.model:
            return f"image {k}: X-Srgan-Model {served}, expected {self.model}"
        try:
            got = decode_png(response.content)
        except Exception as exc:  # noqa: BLE001 - any undecodable answer is a wrong one
            return f"image {k}: the answer is not a PNG ({type(exc).__name__})"
        want = self.truth.expected[k]
        if got.shape != want.shape:
            return f"image {k}: decoded {got.shape[1]}x{got.shape[0]}, expected {self.size}"
        diff = _mad(got, want)
        if diff <= TOLERANCE:
            return None
        nearest = min(range(len(self.truth.expected)), key=lambda j: _mad(got, self.truth.expected[j]))
        if nearest != k and _mad(got, self.truth.expected[nearest]) <= TOLERANCE:
            return f"image {k}: got the result of image {nearest}"
        return f"image {k}: differs from the in-process upscale by {diff:.2f}/255 on average"


def _client_loop(
    index: int,
    port: int,
    model: str,
    checker: _Checker,
    deadline: float,
    stats: _ClientStats,
    stop: threading.Event,
    *,
    backoff: tuple[float, float],
    timeout: float,
) -> None:
    rng = random.Random(index)
    inputs = checker.truth.inputs
    path = _upscale_path(model)
    n = 0
    conn = Connection(port, timeout)
    try:
        while time.perf_counter() < deadline and not stop.is_set():
            k = index * VARIANTS_PER_CLIENT + n % VARIANTS_PER_CLIENT
            n += 1
            start = time.perf_counter()
            if stats.first_sent is None:
                stats.first_sent = start
            try:
                response = conn.post_image(path, inputs[k], f"client{index}-{n}.png")
            except _TRANSPORT_ERRORS as exc:
                stats.statuses[f"error:{type(exc).__name__}"] += 1
                stats.answered += 1
                time.sleep(rng.uniform(*backoff))
                continue
            end = time.perf_counter()
            stats.last_answer = end
            stats.statuses[str(response.status)] += 1
            stats.answered += 1
            if response.status == 200:
                stats.latencies.append(end - start)
                problem = checker.problem(k, response)
                if problem is not None:
                    stats.wrong += 1
                    if len(stats.examples) < _MAX_EXAMPLES:
                        stats.examples.append(f"client {index}, request {n}: {problem}")
            elif response.status in (429, 503):
                stats.refused.append(end - start)
                time.sleep(rng.uniform(*backoff))
            else:
                if len(stats.bodies) < _MAX_EXAMPLES:
                    stats.bodies.append(
                        f"{response.status}: {response.content[:200].decode('utf-8', 'replace')}"
                    )
                time.sleep(rng.uniform(*backoff))
    finally:
        conn.close()


def _warmup(server: ServerProcess, model: str, checker: _Checker, timeout: float) -> _ClientStats:
    """Every image once, one request at a time (also checks the server against this process)."""
    stats = _ClientStats()
    path = _upscale_path(model)
    conn = Connection(server.port, timeout)
    try:
        for k, data in enumerate(checker.truth.inputs):
            for _attempt in range(50):  # a fresh server has room for one request, but be patient
                try:
                    response = conn.post_image(path, data, f"warmup-{k}.png")
                except _TRANSPORT_ERRORS as exc:
                    raise ServerFailed(
                        f"the warm-up request for image {k} got no answer ({type(exc).__name__})",
                        hint="the server's log ends with: " + _tail(server.log),
                    ) from None
                if response.status not in (429, 503):
                    break
                time.sleep(0.1)
            stats.statuses[str(response.status)] += 1
            if response.status != 200:
                raise ServerFailed(
                    f"the warm-up request for image {k} was answered {response.status}",
                    hint=response.content[:300].decode("utf-8", "replace"),
                )
            problem = checker.problem(k, response)
            if problem is not None:
                stats.wrong += 1
                if len(stats.examples) < _MAX_EXAMPLES:
                    stats.examples.append(f"warm-up: {problem}")
    finally:
        conn.close()
    return stats


# --- the benchmark --------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 2) if values else None


def _slope_per_1000(samples: list[tuple[float, float, int]]) -> float | None:
    """Least-squares slope of RSS (MB) against answers so far, per 1000 answers."""
    if len(samples) < 3:
        return None
    x = np.array([s[2] for s in samples], dtype=np.float64)
    y = np.array([s[1] for s in samples], dtype=np.float64)
    if float(np.ptp(x)) == 0:
        return None
    slope = np.polyfit(x, y, 1)[0]
    return round(float(slope) * 1000, 3)


def _thin(samples: list[tuple[float, float, int]], points: int) -> list[tuple[float, float, int]]:
    if len(samples) <= points:
        return samples
    idx = np.linspace(0, len(samples) - 1, points).round().astype(int)
    return [samples[i] for i in sorted(set(idx.tolist()))]


def benchmark_serve(
    model: str = "srresnet_x4_fast",
    *,
    clients: int = 8,
    workers: int = 2,
    queue: int = 4,
    seconds: float = 20.0,
    size: tuple[int, int] = (64, 64),
    device: str = "cpu",
    threads: int | None = None,
    batch: int | None = None,
    reference_runs: int = 10,
    backoff: tuple[float, float] = (0.05, 0.1),
    request_timeout: float = 60.0,
    on_progress: Callable[[str, float, float, int], None] | None = None,
) -> ServeLoadBenchmark:
    """`clients` threads POST /api/upscale for `seconds` against a `srgan serve` subprocess (this
    model, `workers`, `queue`, on `device`) and check every answer; see the module's docstring.

    `model` "tiny" is a tiny SRResNet made on the fly into a temporary weights folder. Other names
    are looked up as the server looks them up (SRGAN_WEIGHTS_DIR, then the shipped weights).
    `threads`: torch's threads, in the server (OMP_NUM_THREADS) and for the reference; None: its
    default (the CPU's cores). `batch`: the server's --batch (images of one size per pass of the
    model; None: the server's default).
    `on_progress(phase, done, total, answers)` is told of the phases ("reference", "starting",
    "warm-up", "load" with seconds done of `seconds`, "stopping")."""
    if not sys.platform.startswith("linux"):
        raise UsageError("srgan benchmark serve reads the server's memory from /proc: Linux only")
    if clients < 1 or workers < 1 or queue < 0 or seconds <= 0:
        raise UsageError("clients and workers are at least 1, queue at least 0, seconds above 0")
    width, height = size

    def progress(phase: str, done: float = 0.0, total: float = 0.0, answers: int = 0) -> None:
        if on_progress is not None:
            on_progress(phase, done, total, answers)

    load_average = tuple(round(v, 2) for v in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="srgan-load-weights-") as tmp:
        weights_dirs: list[Path] = []
        if model == TINY_MODEL:
            tiny_weights(Path(tmp))
            weights_dirs.append(Path(tmp))
        progress("reference")
        with _weights_env(weights_dirs):
            images = make_images(width, height, clients * VARIANTS_PER_CLIENT)
            truth = _truth(model, device, images, reference_runs, threads)
        notes: list[str] = []
        if truth.margin <= 4 * TOLERANCE:
            raise UsageError(
                f"model {model} upscales the benchmark's images too much alike to tell answers apart "
                f"(closest pair: {truth.margin:.2f}/255 apart)",
                hint="use another model or a larger --size",
            )
        checker = _Checker(truth, model)
        stopped: dict[str, Any] = {}
        progress("starting")
        with run_server(
            model,
            workers=workers,
            queue=queue,
            device=device,
            threads=threads,
            batch=batch,
            weights_dirs=weights_dirs,
            stopped=stopped,
        ) as server:
            progress("warm-up")
            warm = _warmup(server, model, checker, request_timeout)
            rss_start, _ = read_memory_mb(server.pid)
            cpu_start = read_cpu_seconds(server.pid)
            stats = [_ClientStats() for _ in range(clients)]
            stop = threading.Event()  # set when this ends early (the server died, Ctrl-C)
            begin = time.perf_counter()
            deadline = begin + seconds
            senders = [
                threading.Thread(
                    target=_client_loop,
                    args=(i, server.port, model, checker, deadline, stats[i], stop),
                    kwargs={"backoff": backoff, "timeout": request_timeout},
                    name=f"srgan-load-client-{i}",
                    daemon=True,
                )
                for i in range(clients)
            ]
            for thread in senders:
                thread.start()
            samples: list[tuple[float, float, int]] = []
            peak = 0.0
            try:
                while any(t.is_alive() for t in senders):
                    if server.proc.poll() is not None:
                        raise ServerFailed(
                            f"the server exited with code {server.proc.returncode} under load",
                            hint=_tail(server.log),
                        )
                    rss, hwm = read_memory_mb(server.pid)
                    peak = max(peak, hwm)
                    answers = sum(s.answered for s in stats)
                    now = time.perf_counter() - begin
                    samples.append((round(now, 2), round(rss, 1), answers))
                    progress("load", min(now, seconds), seconds, answers)
                    senders[0].join(SAMPLE_EVERY)  # (a thread that is done returns at once: then sleep)
                    if not senders[0].is_alive():
                        time.sleep(max(0.0, begin + now + SAMPLE_EVERY - time.perf_counter()))
            finally:
                stop.set()
            rss_end, hwm = read_memory_mb(server.pid)
            peak = max(peak, hwm)
            cpu_used = read_cpu_seconds(server.pid) - cpu_start
            answers = sum(s.answered for s in stats)
            samples.append((round(time.perf_counter() - begin, 2), round(rss_end, 1), answers))
            progress("stopping", seconds, seconds, answers)
    if stopped.get("exit_code") not in _CLEAN_EXITS or stopped.get("killed"):
        notes.append(
            f"the server's exit after SIGTERM: code {stopped.get('exit_code')}, "
            f"killed: {stopped.get('killed')}"
        )

    firsts = [s.first_sent for s in stats if s.first_sent is not None]
    lasts = [s.last_answer for s in stats if s.last_answer is not None]
    duration = (max(lasts) - min(firsts)) if firsts and lasts else seconds
    latencies = [v for s in stats for v in s.latencies]
    refused = [v for s in stats for v in s.refused]
    statuses: Counter[str] = Counter()
    for s in stats:
        statuses.update(s.statuses)
    ok = statuses.get("200", 0)
    requests = sum(statuses.values())
    wrong = warm.wrong + sum(s.wrong for s in stats)
    examples = (warm.examples + [e for s in stats for e in s.examples])[:_MAX_EXAMPLES]
    for s in stats:
        for body in s.bodies:
            if len(notes) < _MAX_EXAMPLES:
                notes.append(f"unexpected answer {body}")
    server_errors = sum(
        n for code, n in statuses.items() if code.isdigit() and int(code) >= 500 and code != "503"
    )
    third = max(1, len(samples) // 3)
    rps = ok / duration if duration > 0 else 0.0
    in_process_ips = 1000 / truth.ms_per_image
    return ServeLoadBenchmark(
        model=model,
        device=device,
        clients=clients,
        workers=workers,
        queue=queue,
        threads=threads,
        batch=batch,
        seconds=seconds,
        duration_s=round(duration, 2),
        input_size=(width, height),
        output_size=(width * truth.scale, height * truth.scale),
        images=len(truth.inputs),
        warmup_requests=sum(warm.statuses.values()),
        requests=requests,
        ok=ok,
        requests_per_s=round(rps, 2),
        answers_per_s=round(requests / duration, 2) if duration > 0 else 0.0,
        latency_ms_p50=_percentile(latencies, 50),
        latency_ms_p90=_percentile(latencies, 90),
        latency_ms_p99=_percentile(latencies, 99),
        latency_ms_max=_percentile(latencies, 100),
        refused_latency_ms_p50=_percentile(refused, 50),
        statuses=dict(sorted(statuses.items())),
        wrong_results=wrong,
        wrong_examples=examples,
        server_errors=server_errors,
        rss_start_mb=round(rss_start, 1),
        rss_end_mb=round(rss_end, 1),
        rss_peak_mb=round(peak, 1),
        rss_first_third_mb=round(statistics.median(s[1] for s in samples[:third]), 1),
        rss_last_third_mb=round(statistics.median(s[1] for s in samples[-third:]), 1),
        rss_slope_mb_per_1000=_slope_per_1000(samples),
        rss_slope_late_mb_per_1000=_slope_per_1000(samples[len(samples) // 2 :]),
        rss_samples=len(samples),
        rss_timeline=_thin(samples, _TIMELINE_POINTS),
        server_cpu_s=round(cpu_used, 2),
        in_process_ms_per_image=round(truth.ms_per_image, 2),
        in_process_images_per_s=round(in_process_ips, 2),
        of_in_process=round(rps / in_process_ips, 3),
        server_exit_code=stopped.get("exit_code"),
        server_killed=bool(stopped.get("killed")),
        load_average=load_average,  # type: ignore[arg-type]
        notes=notes,
    )
