"""Video through any upscaler, with PyAV (FFmpeg): `srgan upscale clip.mp4`.

Frames are decoded, upscaled (8-bit results rounded by the upscaler, on the device where there is
one) and encoded; audio and subtitle streams are copied packet for packet; the frame rate and the
timestamps of the source are kept (variable frame rates too; AVI, which has no presentation
timestamps, gets the average rate), and so are its display rotation and colour tags. The file is
written through atomic.atomic_open: it appears whole at the end or not at all, and not at all when
the input holds fewer frames than its container declares (truncated or corrupt) unless
`allow_partial` says to keep what could be read. The input itself is never the output. `frames_dir`
writes the upscaled frames as numbered images instead of a video.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_open, remove_stale_temps, same_file
from ..errors import ImageError, SrganError, UsageError
from ..imageio import READABLE_SUFFIXES, ImageData, write_image
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
# --codec names -> FFmpeg encoders, and each one's default constant rate factor (visually lossless-ish);
# mpeg4 (MPEG-4 Part 2, what AVI files hold) has no CRF: its --crf is a fixed quantizer, 2 (best) to 31
CODECS = {"h264": "libx264", "h265": "libx265", "av1": "libsvtav1", "vp9": "libvpx-vp9", "mpeg4": "mpeg4"}
DEFAULT_CRF = {"h264": 18, "h265": 20, "av1": 30, "vp9": 30, "mpeg4": 3}
MPEG4_QUANTIZERS = range(2, 32)
# codecs that reorder frames (B-frames, hidden frames): AVI has no presentation timestamps to undo that
_NOT_IN_AVI = ("h264", "h265", "av1", "vp9")
MIN_SIDE = 2  # pixels: smaller frames are refused (4:2:0 chroma needs 2x2)
_ENCODER_MIN_SIDE = {"h265": 16, "av1": 4}  # x265 and SVT-AV1 refuse smaller pictures
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
    allow_partial: bool = False  # a truncated input: write the frames that could be read, with a note


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
    """The --codec name for `dst`: auto is vp9 for WebM (which allows VP9/AV1 only), mpeg4 for AVI
    (which cannot keep the timestamps of codecs that reorder frames), else h264."""
    ext = dst.suffix.lower()
    if codec == "auto":
        return {".webm": "vp9", ".avi": "mpeg4"}.get(ext, "h264")
    if codec not in CODECS:
        raise UsageError(f"unknown codec {codec!r}: use auto, {', '.join(CODECS)}")
    if ext == ".webm" and codec not in ("vp9", "av1"):
        raise UsageError(f"WebM holds VP9 or AV1 video, not {codec}", hint="--codec vp9, or write .mp4/.mkv")
    if ext == ".avi" and codec in _NOT_IN_AVI:
        raise UsageError(
            f"AVI cannot keep the frame order of {codec} (it has no presentation timestamps)",
            hint="--codec mpeg4 (the default for .avi), or write .mp4/.mkv",
        )
    return codec


@dataclass
class _Encoder:
    """What _write_video encodes with, checked before any frame is decoded."""

    container: str  # FFmpeg muxer name
    codec: str  # --codec name
    name: str  # FFmpeg encoder
    options: dict[str, str]
    width_step: int = 2  # chroma subsampling: sides are multiples of these
    height_step: int = 2
    min_side: int = MIN_SIDE  # pixels: the encoder refuses smaller pictures


def encoder_for(dst: Path, options: VideoOptions) -> _Encoder:
    """The container, encoder and encoder options for writing `dst`; a UsageError (one line, with a
    hint) for anything that cannot work: an unknown suffix, codec or pixel format, a codec the
    container cannot hold, an encoder this FFmpeg lacks, a pixel format the encoder does not take."""
    av = _av()
    container = CONTAINERS.get(dst.suffix.lower())
    if container is None:
        raise UsageError(f"cannot write video as {dst.suffix!r}: use one of {', '.join(CONTAINERS)}")
    codec = codec_for(dst, options.codec)
    try:
        encoder = av.codec.Codec(CODECS[codec], "w")
    except (av.error.FFmpegError, ValueError) as exc:  # UnknownCodecError is a ValueError
        raise UsageError(
            f"this FFmpeg build has no {CODECS[codec]} encoder for --codec {codec}",
            hint=f"try another --codec (auto picks {codec_for(dst, 'auto')} for {dst.suffix})",
        ) from exc
    try:
        fmt = av.VideoFormat(options.pix_fmt, 64, 64)
    except (ValueError, TypeError) as exc:
        raise UsageError(
            f"unknown pixel format {options.pix_fmt!r}", hint="e.g. --pix-fmt yuv420p, yuv444p or yuv420p10le"
        ) from exc
    supported = [f.name for f in encoder.video_formats or ()]
    if supported and options.pix_fmt not in supported:
        shown = ", ".join(supported[:6]) + (", ..." if len(supported) > 6 else "")
        raise UsageError(
            f"{encoder.name} ({codec}) cannot encode pixel format {options.pix_fmt}; it takes {shown}",
            hint=f"--pix-fmt {supported[0]}"
            + (", or yuv444p for full-resolution colour" if "yuv444p" in supported else ""),
        )
    crf = options.crf if options.crf is not None else DEFAULT_CRF[codec]
    if codec == "mpeg4":
        if crf not in MPEG4_QUANTIZERS:
            raise UsageError(
                f"mpeg4 takes --crf {MPEG4_QUANTIZERS.start} to {MPEG4_QUANTIZERS.stop - 1} (its quantizer), "
                f"not {crf}",
                hint=f"lower is better; the default, {DEFAULT_CRF['mpeg4']}, is near visually lossless",
            )
        settings = {"qmin": str(crf), "qmax": str(crf)}  # a fixed quantizer: constant quality
    else:
        settings = {"crf": str(crf)} | ({"b": "0"} if codec == "vp9" else {})
    # planes at a fraction of the size (4:2:0, 4:2:2) need sides that divide evenly
    width_step = max(1, 64 // max(fmt.chroma_width(), 1))
    height_step = max(1, 64 // max(fmt.chroma_height(), 1))
    least = _ENCODER_MIN_SIDE.get(codec, MIN_SIDE)
    return _Encoder(container, codec, encoder.name, settings, width_step, height_step, least)


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
    total)` is called after each frame (total 0 when the container does not say).

    An input that holds fewer frames than its container declares (truncated, corrupt) raises
    VideoError and leaves no output, unless options.allow_partial: then what could be read is
    written and a note says how much that was."""
    av = _av()
    start = time.perf_counter()
    hazard = _input_hazard(src, dst, options)
    if hazard is not None:
        raise VideoError(src, _OVERWRITES_INPUT, hint=hazard)
    encoder = encoder_for(dst, options) if options.frames_dir is None else None  # before any decoding
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
        declared = _declared(source, video)
        total = declared.frames or (round(declared.seconds * result.fps) if declared.seconds else 0)
        width, height = _frame_size(src, result.in_size, upscaler.scale, outscale, encoder)
        check_output_size(width, height, options.max_output_pixels)
        result.out_size = (width, height)
        reading = _Reading(fallback=1 / result.fps if result.fps else 0.04)

        def decoded(streams: list[Any]) -> Iterator[tuple[Any, list[Any]]]:
            """(packet, frames) in file order; the video's packets decoded, the others as they are.
            A demuxing error ends the stream and a packet that does not decode is skipped: both are
            kept in `reading.error`, for the check at the end."""
            packets = source.demux(*streams)
            while True:
                try:
                    packet = next(packets)
                except StopIteration:
                    return
                except av.error.FFmpegError as exc:
                    reading.failed(_reason(exc))
                    return
                frames: list[Any] = []
                if packet.stream is video:
                    try:
                        frames = packet.decode()
                    except av.error.FFmpegError as exc:
                        reading.failed(_reason(exc))
                        continue
                    for frame in frames:
                        reading.saw(frame)
                yield packet, frames

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

        def check() -> None:
            """Raise (nothing is kept) or note (allow_partial) an input that fell short."""
            if reading.frames == 0:
                why = f" ({reading.error})" if reading.error else ""
                raise VideoError(src, f"holds no frames that could be decoded{why}")
            short = _shortfall(declared, reading, video.start_time, video.time_base)
            if short is None:
                return
            if not options.allow_partial:
                raise VideoError(
                    src,
                    f"truncated or corrupt: {short}",
                    hint=f"pass --allow-partial to write the {reading.frames} frames that could be read",
                )
            result.notes.append(f"{src.name} is truncated or corrupt: {short}; wrote those frames")

        if options.frames_dir is not None:
            frames = (_rgb(frame) for _, decoded_frames in decoded([video]) for frame in decoded_frames)
            written = _write_frames(ahead(frames, _DEPTH), upscaled, options, count)
            try:
                check()
            except VideoError:
                for path in written:  # nothing partial is left behind
                    path.unlink(missing_ok=True)
                raise
        else:
            assert encoder is not None
            _write_video(av, source, video, decoded, upscaled, dst, encoder, options, count, check)
    result.seconds = time.perf_counter() - start
    return result


def _frame_size(
    src: Path, size: tuple[int, int], scale: int, outscale: float | None, encoder: _Encoder | None
) -> tuple[int, int]:
    """The output frame size: the model's scale or `outscale`, cut to the encoder's chroma steps
    (even sides for 4:2:0); a frame under MIN_SIDE pixels on a side (or what the encoder needs) is
    refused before any work."""
    factor = scale if outscale is None else outscale
    raw = (round(size[0] * factor), round(size[1] * factor))
    width, height = scaled_size(*size, scale, outscale)
    least = MIN_SIDE
    if encoder is not None:
        width, height = width - width % encoder.width_step, height - height % encoder.height_step
        least = encoder.min_side
    if min(*raw, width, height) < least:
        times = f"x{scale}" if outscale is None else f"--outscale {outscale:g}"
        who = f"{encoder.codec} needs" if encoder is not None and least > MIN_SIDE else "a frame needs"
        hints = [] if outscale is None else ["ask for a larger --outscale"]
        hints += ["--codec h264"] if least > MIN_SIDE else []
        shown = raw if min(raw) < least else (width, height)  # as asked, else as cut for chroma
        raise VideoError(
            src,
            f"{times} would make its {size[0]}x{size[1]} frames {shown[0]}x{shown[1]} pixels; "
            f"{who} at least {least}x{least}",
            hint=", or ".join(hints) or None,
        )
    return width, height


@dataclass
class _Declared:
    """What the container says the video stream holds (None: it does not say)."""

    frames: int | None = None
    seconds: float | None = None


def _declared(source: Any, video: Any) -> _Declared:
    """The frame count (MP4/MOV/AVI index, Matroska statistics tags) and the duration (the stream's,
    Matroska's per-track DURATION tag, or the file's when the video is its only stream)."""
    tags = {key.split("-")[0].upper(): value for key, value in (video.metadata or {}).items()}
    frames = int(video.frames or 0) or _int(tags.get("NUMBER_OF_FRAMES"))
    seconds = None
    if video.duration and video.time_base:
        seconds = float(video.duration * video.time_base)
    elif tags.get("DURATION"):
        seconds = _clock_seconds(tags["DURATION"])
    elif source.duration and len(source.streams) == 1:  # the whole file's: other streams may run longer
        seconds = source.duration / 1_000_000  # AV_TIME_BASE
    return _Declared(frames or None, seconds if seconds and seconds > 0 else None)


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _clock_seconds(text: str) -> float | None:
    """'01:02:03.500000000' -> 3723.5 (Matroska's DURATION tag)."""
    match = re.fullmatch(r"\s*(\d+):(\d+):(\d+(?:\.\d*)?)\s*", text)
    if match is None:
        return None
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


@dataclass
class _Reading:
    """What decoding got through: frames, the end time of the last one, and the first error (with
    the frames read before it)."""

    fallback: float  # seconds: a frame's duration where neither the frame nor the gaps say
    frames: int = 0
    first: float | None = None  # seconds
    last: float | None = None
    end: float | None = None
    error: str | None = None
    error_at: int = 0

    def failed(self, reason: str) -> None:
        if self.error is None:
            self.error, self.error_at = reason, self.frames

    def saw(self, frame: Any) -> None:
        self.frames += 1
        if frame.pts is None or frame.time_base is None:
            return
        at = float(frame.pts * frame.time_base)
        duration = float(frame.duration * frame.time_base) if frame.duration else 0.0
        if not duration:  # as muxers guess a last frame's duration: the gap before it
            duration = at - self.last if self.last is not None and at > self.last else self.fallback
        self.first = at if self.first is None else min(self.first, at)
        self.last = at if self.last is None else max(self.last, at)
        self.end = max(self.end or at + duration, at + duration)


def _shortfall(declared: _Declared, reading: _Reading, start_time: Any, time_base: Any) -> str | None:
    """How the frames read fall short of what the container declares, as a sentence; None when they
    do not (within a frame: containers estimate). Where the container gives both a frame count and a
    duration, both must fall short: an MP4 edit list can hide indexed frames without any loss."""
    count_short = declared.frames is not None and reading.frames < declared.frames - 1
    time_short = None
    covered = None
    if declared.seconds is not None and reading.end is not None:
        start = reading.first or 0.0
        if start_time is not None and time_base:
            start = float(start_time * time_base)
        covered = reading.end - start
        time_short = covered < declared.seconds - 1.5 * reading.fallback
    error = f" ({reading.error})" if reading.error else ""
    if count_short and time_short is not False:
        return f"{reading.frames} of the {declared.frames} frames the container declares could be read{error}"
    if time_short and declared.seconds is not None and covered is not None:
        return (
            f"{reading.frames} frames ({covered:.2f} s) of the {declared.seconds:.2f} s the container "
            f"declares could be read{error}"
        )
    if reading.error:
        return (
            f"decoding failed after frame {reading.error_at} ({reading.error}); "
            f"{reading.frames} frames were read"
        )
    return None


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
) -> list[Path]:
    """Each upscaled frame as a numbered image, encoded and written on a thread behind the model;
    returns the files written."""
    folder = options.frames_dir
    assert folder is not None
    written: list[Path] = []

    def write(item: tuple[int, np.ndarray]) -> None:
        path = folder / f"frame_{item[0]:06d}.{options.frame_format}"
        write_image(path, ImageData(item[1], None), overwrite=count.overwrite)
        written.append(path)

    with Behind(write, _DEPTH, "srgan-frames") as writer:
        for chunk in _in_batches(frames, count.batch):
            for pixels in upscaled(chunk):
                writer.put((count.result.frames + 1, pixels))
                count.tick()
    return written


@dataclass
class _Timing:
    """Output timestamps. Normally the source's own, in its time base, so a variable frame rate
    survives; with `fixed` (AVI, which has no presentation timestamps, or an encoder that cannot
    take the source's time base) ticks of 1/`rate`, each frame on the tick nearest its time. Either
    way strictly increasing, as encoders and muxers require."""

    time_base: Fraction
    rate: Fraction
    fixed: bool
    frames: int = 0
    last: int | None = None

    def pts(self, pts: int | None, time_base: Fraction | None) -> int:
        if pts is None or not time_base:  # no timestamp: the frame's place at the average rate
            seconds = Fraction(self.frames) / self.rate
        else:
            seconds = pts * Fraction(time_base)
        tick = round(seconds * self.rate) if self.fixed else round(seconds / self.time_base)
        if self.last is not None and tick <= self.last:
            tick = self.last + 1
        self.frames += 1
        self.last = tick
        return tick


def _timing(video: Any, encoder: _Encoder) -> _Timing:
    rate = Fraction(video.average_rate or video.guessed_rate or 25)
    source = Fraction(video.time_base) if video.time_base else None
    fixed = (
        encoder.container == "avi"
        or source is None
        or (encoder.codec == "mpeg4" and source.denominator > 65535)  # MPEG-4 Part 2's limit
    )
    if fixed:
        rate = rate.limit_denominator(1001)  # 30000/1001 stays exact; odd averages get near
        return _Timing(1 / rate, rate, True)
    assert source is not None
    return _Timing(source, rate, False)


def _write_video(
    av: Any,
    source: Any,
    video: Any,
    decoded: Callable[[list[Any]], Iterator[tuple[Any, list[Any]]]],
    upscaled: Callable[[list[np.ndarray]], list[np.ndarray]],
    dst: Path,
    encoder: _Encoder,
    options: VideoOptions,
    count: _Counter,
    check: Callable[[], None],
) -> None:
    """Encode the upscaled frames into `dst`, copying the other streams; `check()` runs once all
    frames are in and may raise, in which case `dst` is left as it was (no file, or the old one)."""
    result, overwrite = count.result, count.overwrite
    if dst.exists() and not overwrite:
        raise VideoError(dst, "already exists; pass --overwrite to replace it")
    timing = _timing(video, encoder)
    # AVI has no timestamps to shift: FFmpeg's shift for a copied stream that starts before 0 (AAC
    # priming) would land after the first video frame and leave a hole behind it
    muxing = {"avoid_negative_ts": "disabled"} if encoder.container == "avi" else {}
    try:
        with (
            atomic_open(dst, overwrite=overwrite) as fh,
            av.open(fh, "w", format=encoder.container, options=muxing) as out,
        ):
            # the encoder's time base is the frames' (no rescaling that could merge two of them)
            stream = out.add_stream(encoder.name, rate=timing.rate, time_base=timing.time_base)
            stream.width, stream.height = result.out_size
            stream.pix_fmt = options.pix_fmt
            stream.time_base = timing.time_base
            stream.options = encoder.options
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
                new.pts, new.time_base = timing.pts(pts, time_base), timing.time_base
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
            check()  # inside the atomic write: a refusal leaves nothing behind
            for encoded in stream.encode():
                out.mux(encoded)
    except SrganError:
        raise
    except (av.error.FFmpegError, ValueError) as exc:
        raise VideoError(dst, f"cannot write the video ({_reason(exc)})") from exc
    except OSError as exc:
        raise VideoError(dst, f"cannot write: {exc.strerror or exc}") from exc


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


def video_output(
    src: Path, output: Path | None, suffix: str | None, scale: int, single: bool, *, frames: bool = False
) -> Path:
    """Where a video's result goes: `output` itself for a single input named as a video file,
    else `<stem>_x<scale><ext>` beside the input or, without the suffix, in the `output` folder.
    A single input with `output` named as another kind of file (out.png) is a UsageError, not a
    folder of that name; with `frames` (--frames DIR) `output` is not used."""
    if single and output is not None and not frames and output.suffix and not output.is_dir():
        if output.suffix.lower() in CONTAINERS:
            return output
        kind = "an image name" if output.suffix.lower() in READABLE_SUFFIXES else "not a video name"
        raise UsageError(
            f"-o {output} is {kind}; a video is written as {', '.join(VIDEO_SUFFIXES)} (or use --frames DIR)",
            hint=f"e.g. -o {output.with_suffix(src.suffix if src.suffix.lower() in CONTAINERS else '.mp4')}",
        )
    ext = src.suffix if src.suffix.lower() in CONTAINERS else ".mp4"
    tail = suffix if suffix is not None else ("" if output is not None else f"_x{scale}")
    name = f"{src.stem}{tail}{ext}"
    return output / name if output is not None else src.with_name(name)


_OVERWRITES_INPUT = "the output would overwrite the input"


def _input_hazard(src: Path, dst: Path, options: VideoOptions) -> str | None:
    """A hint when writing the result would replace `src` itself (the output is the input, or a
    link to it; --frames DIR is the input, or a frame file in it would be); None when it is safe."""
    if options.frames_dir is None:
        return "use -o or --suffix" if same_file(src, dst) else None
    folder = options.frames_dir
    if same_file(src, folder):
        return "use another --frames DIR"
    frame_name = re.fullmatch(rf"frame_\d{{6}}\.{re.escape(options.frame_format)}", src.name)
    if frame_name and folder.is_dir() and same_file(src.parent, folder):
        return "use another --frames DIR"
    return None


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
    returned, never raised, so the rest of a batch goes on. The input is never the output."""
    hazard = _input_hazard(src, dst, options)
    if hazard is not None:  # before --skip-existing and --overwrite: neither may touch the input
        return "failed", None, _OVERWRITES_INPUT, hazard
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
