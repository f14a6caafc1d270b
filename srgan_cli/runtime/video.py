"""Video through any upscaler, with PyAV (FFmpeg): `srgan upscale clip.mp4`.

Frames are decoded, upscaled (8-bit results rounded by the upscaler, on the device where there is
one) and encoded; audio and subtitle streams are copied packet for packet; the frame rate and the
timestamps of the source are kept, and so are its display rotation and colour tags. The file is
written through atomic.atomic_open: it appears whole at the end or not at all. `frames_dir`
writes the upscaled frames as numbered images instead of a video.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_open, remove_stale_temps
from ..errors import ImageError, SrganError, UsageError
from ..imageio import ImageData, write_image
from .background import Behind, ahead
from .upscaler import (
    DEFAULT_MAX_OUTPUT_PIXELS,
    Upscaler,
    check_output_size,
    images_per_pass,
    scaled_size,
    to_uint8,
    upscale_image,
)

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v")
CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mkv": "matroska", ".webm": "webm", ".mov": "mov", ".avi": "avi"}
# --codec names -> FFmpeg encoders, and each one's default constant rate factor (visually lossless-ish)
CODECS = {"h264": "libx264", "h265": "libx265", "av1": "libsvtav1", "vp9": "libvpx-vp9"}
DEFAULT_CRF = {"h264": 18, "h265": 20, "av1": 30, "vp9": 30}
_DEPTH = 4  # frames decoded ahead of the model, and frames waiting to be encoded behind it
# FFmpeg's colour spaces (AVColorSpace) -> swscale's conversion matrices, for the RGB round trip
_SWS_COLORSPACE = {1: "itu709", 5: "itu601", 6: "itu601", 7: "smpte240m", 9: "bt2020"}


class VideoError(ImageError):
    """A video that cannot be read or written (the input's path and the reason)."""


@dataclass
class VideoOptions:
    codec: str = "auto"  # auto: vp9 for .webm, else h264
    crf: int | None = None  # None: the codec's DEFAULT_CRF
    pix_fmt: str = "yuv420p"
    frames_dir: Path | None = None  # write frames as images here instead of a video
    frame_format: str = "png"
    batch: int = 0  # frames per model pass; 0: upscaler.images_per_pass decides (4 on a GPU)
    max_output_pixels: int | None = DEFAULT_MAX_OUTPUT_PIXELS  # larger frames are refused up front


@dataclass
class VideoResult:
    src: Path
    dst: Path
    frames: int = 0
    seconds: float = 0.0
    in_size: tuple[int, int] = (0, 0)
    out_size: tuple[int, int] = (0, 0)
    fps: float = 0.0
    copied: list[str] = field(default_factory=list)  # "audio (aac)", "subtitle (mov_text)", ...
    notes: list[str] = field(default_factory=list)


def _av() -> Any:
    try:
        import av
    except ImportError as exc:  # a dependency; missing only in a broken install
        raise UsageError("video needs PyAV", hint="pip install av") from exc
    return av


def is_video(path: str | os.PathLike[str]) -> bool:
    """Whether the file looks like a video container, by its first bytes (MP4/MOV, Matroska/WebM,
    AVI), not only by its name."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError:
        return False
    return (
        head[4:8] == b"ftyp"
        and head[8:12] not in (b"avif", b"avis", b"heic", b"heix", b"mif1", b"msf1")  # still images
        or head[:4] == b"\x1a\x45\xdf\xa3"  # EBML: Matroska, WebM
        or (head[:4] == b"RIFF" and head[8:12] == b"AVI ")
        or head[4:8] in (b"moov", b"mdat", b"wide", b"free")  # QuickTime without ftyp
    )


def codec_for(dst: Path, codec: str) -> str:
    """The --codec name for `dst`: auto is vp9 for WebM (which allows VP9/AV1 only), else h264."""
    if codec == "auto":
        return "vp9" if dst.suffix.lower() == ".webm" else "h264"
    if codec not in CODECS:
        raise UsageError(f"unknown codec {codec!r}: use auto, {', '.join(CODECS)}")
    if dst.suffix.lower() == ".webm" and codec not in ("vp9", "av1"):
        raise UsageError(f"WebM holds VP9 or AV1 video, not {codec}", hint="--codec vp9, or write .mp4/.mkv")
    return codec


def upscale_video(
    upscaler: Upscaler,
    src: Path,
    dst: Path,
    options: VideoOptions,
    *,
    outscale: float | None = None,
    overwrite: bool = False,
    on_frame: Callable[[int, int], None] | None = None,
) -> VideoResult:
    """Upscale every frame of `src` into `dst` (or into options.frames_dir). `on_frame(done,
    total)` is called after each frame (total 0 when the container does not say)."""
    av = _av()
    start = time.perf_counter()
    try:
        source = av.open(str(src))
    except (av.error.FFmpegError, OSError) as exc:
        raise VideoError(src, f"cannot open as a video ({_reason(exc)})") from exc
    with source:
        if not source.streams.video:
            raise VideoError(src, "has no video stream")
        video = source.streams.video[0]
        video.thread_type = "AUTO"
        result = VideoResult(src, options.frames_dir or dst)
        result.in_size = (video.codec_context.width, video.codec_context.height)
        result.fps = float(video.average_rate or video.guessed_rate or 0)
        total = int(video.frames or 0)
        if not total and video.duration and video.time_base and result.fps:
            total = round(float(video.duration * video.time_base) * result.fps)
        width, height = scaled_size(*result.in_size, upscaler.scale, outscale)
        if options.frames_dir is None and options.pix_fmt.startswith(("yuv420", "nv12", "yuv422")):
            width, height = width - width % 2, height - height % 2  # chroma subsampling: even sides
        check_output_size(width, height, options.max_output_pixels)
        result.out_size = (width, height)

        def decoded(streams: list[Any]) -> Any:
            """(packet, frames) in file order; the video's packets decoded, the others as they are."""
            try:
                for packet in source.demux(*streams):
                    yield packet, packet.decode() if packet.stream is video else []
            except av.error.FFmpegError as exc:
                raise VideoError(src, f"is corrupt or truncated ({_reason(exc)})") from exc

        batch = images_per_pass(upscaler, outscale, options.batch)

        def upscaled(frames: list[np.ndarray]) -> list[np.ndarray]:
            """(H, W, 3) uint8 frames -> the upscaled frames, uint8 at the output size."""
            if batch > 1:  # one pass for all of them (the u8 path: the same result as one by one)
                outs = upscaler.upscale_u8_batch(frames)  # type: ignore[attr-defined]
            else:
                outs = [upscale_image(upscaler, ImageData(rgb, None), outscale).pixels for rgb in frames]
            # [:height, :width]: --outscale to even sides for 4:2:0
            return [np.ascontiguousarray(to_uint8(pixels)[:height, :width]) for pixels in outs]

        count = _Counter(result, total, overwrite, on_frame, batch)
        if options.frames_dir is not None:
            frames = (_rgb(frame) for _, decoded_frames in decoded([video]) for frame in decoded_frames)
            _write_frames(ahead(frames, _DEPTH), upscaled, options, count)
        else:
            _write_video(av, source, video, decoded, upscaled, dst, options, count)
    result.seconds = time.perf_counter() - start
    return result


@dataclass
class _Counter:
    """The frames written so far, told to `on_frame(done, total)` after each one."""

    result: VideoResult
    total: int
    overwrite: bool
    on_frame: Callable[[int, int], None] | None
    batch: int = 1  # frames per model pass

    def tick(self) -> None:
        self.result.frames += 1
        if self.on_frame is not None:
            self.on_frame(self.result.frames, self.total)


def _rgb(frame: Any) -> np.ndarray:
    """A decoded frame as (H, W, 3) uint8 RGB, converted with the matrix the source is tagged with."""
    space = _SWS_COLORSPACE.get(int(frame.colorspace))
    if space:
        return frame.to_ndarray(format="rgb24", src_colorspace=space)
    return frame.to_ndarray(format="rgb24")


def _in_batches(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive lists of `size` items (the last one shorter)."""
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _write_frames(
    frames: Iterator[np.ndarray],
    upscaled: Callable[[list[np.ndarray]], list[np.ndarray]],
    options: VideoOptions,
    count: _Counter,
) -> None:
    """Each upscaled frame as a numbered image, encoded and written on a thread behind the model."""
    folder = options.frames_dir
    assert folder is not None

    def write(item: tuple[int, np.ndarray]) -> None:
        path = folder / f"frame_{item[0]:06d}.{options.frame_format}"
        write_image(path, ImageData(item[1], None), overwrite=count.overwrite)

    with Behind(write, _DEPTH, "srgan-frames") as writer:
        for chunk in _in_batches(frames, count.batch):
            for pixels in upscaled(chunk):
                writer.put((count.result.frames + 1, pixels))
                count.tick()


def _write_video(
    av: Any,
    source: Any,
    video: Any,
    decoded: Callable[[list[Any]], Any],
    upscaled: Callable[[list[np.ndarray]], list[np.ndarray]],
    dst: Path,
    options: VideoOptions,
    count: _Counter,
) -> None:
    result, overwrite = count.result, count.overwrite
    container = CONTAINERS.get(dst.suffix.lower())
    if container is None:
        raise UsageError(f"cannot write video as {dst.suffix!r}: use one of {', '.join(CONTAINERS)}")
    codec = codec_for(dst, options.codec)
    if dst.exists() and not overwrite:
        raise VideoError(dst, "already exists; pass --overwrite to replace it")
    try:
        with atomic_open(dst, overwrite=overwrite) as fh, av.open(fh, "w", format=container) as out:
            stream = out.add_stream(CODECS[codec], rate=video.average_rate or Fraction(25))
            stream.width, stream.height = result.out_size
            stream.pix_fmt = options.pix_fmt
            stream.time_base = video.time_base
            crf = options.crf if options.crf is not None else DEFAULT_CRF[codec]
            stream.options = {"crf": str(crf)} | ({"b": "0"} if codec == "vp9" else {})
            _copy_colour_tags(video.codec_context, stream.codec_context)
            copies = _copy_streams(source, out, dst, result)
            space = _SWS_COLORSPACE.get(int(video.codec_context.colorspace))

            def read() -> Iterator[tuple[Any, ...]]:  # on a thread ahead: demux, decode, to RGB
                for packet, frames in decoded([video, *copies]):
                    if packet.stream in copies:
                        if packet.dts is not None:  # not the flush packet at the end of a stream
                            yield ("copy", packet)
                        continue
                    for frame in frames:
                        yield (
                            "frame",
                            _rgb(frame),
                            frame.pts,
                            frame.time_base,
                            getattr(frame, "rotation", 0),
                        )

            def write(item: tuple[Any, ...]) -> None:  # on a thread behind: encode, mux
                if item[0] == "copy":
                    item[1].stream = copies[item[1].stream]
                    out.mux(item[1])
                    return
                _, pixels, pts, time_base, rotation = item
                if rotation and not stream.codec_context.is_open:
                    stream.set_display_rotation(rotation)  # kept as a tag, like the source
                rgb = av.VideoFrame.from_ndarray(pixels, format="rgb24")
                new = rgb.reformat(format=options.pix_fmt, dst_colorspace=space) if space else rgb
                new.pts, new.time_base = pts, time_base
                for encoded in stream.encode(new):
                    out.mux(encoded)

            with Behind(write, _DEPTH, "srgan-encode") as writer:
                waiting: list[tuple[Any, ...]] = []  # frames for the next model pass
                for item in ahead(read(), _DEPTH + count.batch, "srgan-decode"):
                    if item[0] == "copy":  # the muxer interleaves the streams by time itself
                        writer.put(item)
                        continue
                    waiting.append(item)
                    if len(waiting) == count.batch:
                        _pass(waiting, upscaled, writer, count)  # the model, between the two threads
                _pass(waiting, upscaled, writer, count)
            for encoded in stream.encode():
                out.mux(encoded)
    except SrganError:
        raise
    except (av.error.FFmpegError, ValueError) as exc:
        raise VideoError(dst, f"cannot write the video ({_reason(exc)})") from exc
    except OSError as exc:
        raise VideoError(dst, f"cannot write: {exc.strerror or exc}") from exc
    if result.frames == 0:
        dst.unlink(missing_ok=True)
        raise VideoError(result.src, "holds no frames that could be decoded")


def _pass(
    waiting: list[tuple[Any, ...]],
    upscaled: Callable[[list[np.ndarray]], list[np.ndarray]],
    writer: Behind[tuple[Any, ...]],
    count: _Counter,
) -> None:
    """Upscale the waiting frames in one pass and hand them to the encoder, in order."""
    if not waiting:
        return
    for item, pixels in zip(waiting, upscaled([item[1] for item in waiting]), strict=True):
        writer.put(("frame", pixels, *item[2:]))
        count.tick()
    waiting.clear()


def _copy_colour_tags(source: Any, target: Any) -> None:
    """Primaries, transfer, matrix and range as the source has them (when it has them)."""
    for name in ("color_primaries", "color_trc", "colorspace", "color_range"):
        value = getattr(source, name, None)
        if value:
            with contextlib.suppress(AttributeError, ValueError, TypeError):  # a tag this PyAV cannot set
                setattr(target, name, value)


def _copy_streams(source: Any, out: Any, dst: Path, result: VideoResult) -> dict[Any, Any]:
    """Output streams for the source's audio and subtitle streams, packet copies of them; a stream
    the target container cannot hold is left out with a note."""
    copies = {}
    for stream in [*source.streams.audio, *source.streams.subtitles]:
        name = f"{stream.type} ({stream.codec_context.name})"
        try:
            copies[stream] = out.add_stream_from_template(stream)
            result.copied.append(name)
        except Exception as exc:  # the muxer refuses this codec in this container
            result.notes.append(f"{name} not copied: {dst.suffix} cannot hold it ({_reason(exc)})")
    return copies


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "strerror", None) or exc).strip() or type(exc).__name__


def video_output(src: Path, output: Path | None, suffix: str | None, scale: int, single: bool) -> Path:
    """Where a video's result goes: `output` itself for a single input named as a video file,
    else `<stem>_x<scale><ext>` beside the input or, without the suffix, in the `output` folder."""
    if single and output is not None and output.suffix.lower() in CONTAINERS and not output.is_dir():
        return output
    ext = src.suffix if src.suffix.lower() in CONTAINERS else ".mp4"
    tail = suffix if suffix is not None else ("" if output is not None else f"_x{scale}")
    name = f"{src.stem}{tail}{ext}"
    return output / name if output is not None else src.with_name(name)


def video_job(
    upscaler: Upscaler,
    src: Path,
    dst: Path,
    options: VideoOptions,
    *,
    outscale: float | None,
    overwrite: bool,
    skip_existing: bool,
    on_frame: Callable[[int, int], None] | None = None,
) -> tuple[str, VideoResult | None, str | None, str | None]:
    """(status, result, error, hint) of one video, as `srgan upscale` reports it: failures are
    returned, never raised, so the rest of a batch goes on."""
    if options.frames_dir is None and dst.exists() and not overwrite:
        if skip_existing:
            return "skipped", None, None, None
        return "failed", None, "output already exists", "pass --overwrite to replace it"
    if options.frames_dir is None and dst.parent.is_dir():
        remove_stale_temps(dst.parent, {dst.name})  # what a killed run left while writing it
    try:
        result = upscale_video(
            upscaler, src, dst, options, outscale=outscale, overwrite=overwrite, on_frame=on_frame
        )
    except ImageError as exc:
        return "failed", None, exc.reason, exc.hint
    except SrganError as exc:
        return "failed", None, exc.message, exc.hint
    except MemoryError:
        return "failed", None, "out of memory", "try a smaller --tile"
    return "ok", result, None, None
