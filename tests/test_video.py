"""Video through `srgan upscale` (runtime/video.py, PyAV) on tiny generated clips: frames, size,
frame rate, timestamps, audio, rotation and colour tags kept; --frames; bad input; the input never
overwritten; truncated inputs refused (or kept with --allow-partial); variable frame rates, AVI,
pixel formats, output names and sizes checked before any work."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from typer.testing import CliRunner

import srgan_cli
from srgan_cli.cli.app import app
from srgan_cli.runtime.video import VideoError, VideoOptions, is_video, upscale_video, video_job

runner = CliRunner()


def make_clip(
    path: Path, *, frames: int = 8, fps: int = 10, size: tuple[int, int] = (24, 16), rotation: int = 0
) -> Path:
    """A small H.264 clip with moving colour bars, BT.709 tags and a mono AAC tone of the same length."""
    width, height = size
    with av.open(str(path), "w", format="mp4") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.codec_context.colorspace = 1  # BT.709
        video.codec_context.color_primaries = 1
        video.codec_context.color_trc = 1
        if rotation:
            video.set_display_rotation(rotation)
        audio = out.add_stream("aac", rate=8000, layout="mono")
        xx = np.arange(width)[None, :, None]
        for i in range(frames):
            rgb = np.broadcast_to(((xx * 10 + i * 20 + np.array([0, 85, 170])) % 256), (height, width, 3))
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb, dtype=np.uint8), format="rgb24")
            frame.pts = i
            for packet in video.encode(frame):
                out.mux(packet)
        tone = (0.2 * np.sin(np.arange(8000 * frames // fps) * 2 * np.pi * 440 / 8000)).astype(np.float32)[
            None
        ]
        sound = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
        sound.sample_rate, sound.pts = 8000, 0
        for packet in [*audio.encode(sound), *audio.encode()]:
            out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
    return path


def _probe(path: Path) -> dict[str, object]:
    with av.open(str(path)) as clip:
        video = clip.streams.video[0]
        frames = list(clip.decode(video))
        return {
            "streams": sorted(s.type for s in clip.streams),
            "size": (video.codec_context.width, video.codec_context.height),
            "fps": video.average_rate,
            "frames": len(frames),
            "pts": [float(f.pts * f.time_base) for f in frames],
            "rotation": frames[0].rotation,
            "colorspace": int(video.codec_context.colorspace),
        }


def test_round_trip_keeps_frames_rate_timestamps_audio_and_tags(weights_dir: Path, tmp_path: Path) -> None:
    src = make_clip(tmp_path / "clip.mp4")
    code = runner.invoke(
        app, ["upscale", str(src), "-m", "tiny_x2", "--device", "cpu", "--video-batch", "3", "--json"]
    )
    assert code.exit_code == 0, code.output
    summary = json.loads(code.stdout)
    assert summary["ok"] == 1 and summary["results"][0]["output_size"] == [48, 32]
    before, after = _probe(src), _probe(tmp_path / "clip_x2_tiny.mp4")
    assert after["size"] == (48, 32) and after["streams"] == ["audio", "video"]
    assert (after["frames"], after["fps"], after["pts"]) == (before["frames"], Fraction(10), before["pts"])
    assert after["colorspace"] == 1  # BT.709, as tagged in the source
    assert not list(tmp_path.glob(".*.tmp"))


def test_rotation_tag_kept_and_webm_gets_vp9(weights_dir: Path, tmp_path: Path) -> None:
    src = make_clip(tmp_path / "turned.mp4", rotation=90)
    out = tmp_path / "out.webm"
    result = runner.invoke(app, ["upscale", str(src), "-m", "tiny_x2", "--device", "cpu", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "audio (aac) not copied" in " ".join(result.output.split())  # WebM holds Opus/Vorbis only
    with av.open(str(out)) as clip:
        assert clip.streams.video[0].codec_context.name == "vp9" and not clip.streams.audio
    assert _probe(out)["rotation"] == _probe(src)["rotation"] != 0


def test_frames_folder_and_content_detection(weights_dir: Path, tmp_path: Path) -> None:
    src = make_clip(tmp_path / "clip.bin", frames=5)  # a video by its bytes, not its name
    assert is_video(src) and not is_video(Path(__file__))
    frames = tmp_path / "frames"
    result = runner.invoke(
        app, ["upscale", str(src), "-m", "tiny_x2", "--device", "cpu", "--frames", str(frames)]
    )
    assert result.exit_code == 0, result.output
    written = sorted(frames.iterdir())
    assert [p.name for p in written] == [f"frame_{i:06d}.png" for i in range(1, 6)]
    from PIL import Image

    with Image.open(written[0]) as first:
        assert first.size == (48, 32)


def test_bad_and_existing_videos_fail_alone(weights_dir: Path, tmp_path: Path) -> None:
    good = make_clip(tmp_path / "good.mp4")
    data = good.read_bytes()
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(data[: len(data) // 3])  # truncated: the index (moov) is missing
    (tmp_path / "good_x2_tiny.mp4").write_bytes(b"earlier")
    args = ["upscale", str(broken), str(good), "-m", "tiny_x2", "--device", "cpu", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    rows = {Path(r["input"]).name: r for r in json.loads(result.stdout)["results"]}
    assert rows["broken.mp4"]["status"] == "failed" and "video" in rows["broken.mp4"]["error"]
    assert rows["good.mp4"]["status"] == "failed" and rows["good.mp4"]["error"] == "output already exists"
    assert (tmp_path / "good_x2_tiny.mp4").read_bytes() == b"earlier" and not (
        tmp_path / "broken_x2_tiny.mp4"
    ).exists()
    again = runner.invoke(app, [*args[:-1], "--overwrite", "--json"])
    assert json.loads(again.stdout)["ok"] == 1 and _probe(tmp_path / "good_x2_tiny.mp4")["frames"] == 8


def test_frames_in_batches_equal_frames_one_by_one(weights_dir: Path, tmp_path: Path) -> None:
    from PIL import Image

    src = make_clip(tmp_path / "clip.mp4")  # 8 frames: batches of 3, 3 and 2
    for batch in ("1", "3"):
        args = ["upscale", str(src), "-m", "tiny_x2", "--device", "cpu", "--video-batch", batch]
        result = runner.invoke(app, [*args, "--frames", str(tmp_path / batch)])
        assert result.exit_code == 0, result.output
    one, three = sorted((tmp_path / "1").iterdir()), sorted((tmp_path / "3").iterdir())
    assert [p.name for p in one] == [p.name for p in three] and len(one) == 8
    for a, b in zip(one, three, strict=True):
        with Image.open(a) as x, Image.open(b) as y:
            assert np.array_equal(np.asarray(x), np.asarray(y)), a.name


def test_auto_sends_videos_to_the_real_world_model(weights_dir: Path, tmp_path: Path) -> None:
    """-m auto: a video goes to srgan_x4_real (docs/degradations.md: lower LPIPS and no more flicker
    than srresnet_x4 on H.264 streams), next to a PNG that goes to srresnet_x4."""
    from PIL import Image

    from srgan_cli import weights

    from .conftest import make_photo, tiny_model

    weights.save(weights_dir / "srresnet_x4.safetensors", tiny_model(4, seed=3), trained_on="x")
    weights.save(weights_dir / "srgan_x4_real.safetensors", tiny_model(4, seed=4), trained_on="x")
    src = tmp_path / "in"
    src.mkdir()
    make_clip(src / "clip.mp4", frames=3)
    Image.fromarray(make_photo(16, 24, seed=1)).save(src / "a.png")
    base = ["upscale", "--device", "cpu", "--format", "png"]
    inputs = [str(src / "clip.mp4"), str(src / "a.png")]
    result = runner.invoke(app, [*base, *inputs, "-o", str(tmp_path / "auto"), "-m", "auto"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "auto: 1 other input -> srresnet_x4" in said and "auto: 1 video -> srgan_x4_real" in said
    result = runner.invoke(app, [*base, *inputs, "-o", str(tmp_path / "json"), "-m", "auto", "--json"])
    summary = json.loads(result.stdout[result.stdout.index("{") :])
    assert summary["models"] == {"srresnet_x4": 1, "srgan_x4_real": 1}
    for model in ("srgan_x4_real", "srresnet_x4"):
        out = tmp_path / model
        result = runner.invoke(app, [*base, str(src / "clip.mp4"), "-m", model, "--frames", str(out)])
        assert result.exit_code == 0, result.output
    by_auto = tmp_path / "frames_auto"
    result = runner.invoke(app, [*base, str(src / "clip.mp4"), "-m", "auto", "--frames", str(by_auto)])
    assert result.exit_code == 0, result.output
    frames = sorted(by_auto.iterdir())
    assert len(frames) == 3
    for frame in frames:
        with Image.open(frame) as a, Image.open(tmp_path / "srgan_x4_real" / frame.name) as b:
            assert np.array_equal(np.asarray(a), np.asarray(b))
        with Image.open(frame) as a, Image.open(tmp_path / "srresnet_x4" / frame.name) as c:
            assert not np.array_equal(np.asarray(a), np.asarray(c))


def make_noise_clip(
    path: Path, pts: Sequence[int], *, fmt: str = "mp4", options: dict[str, str] | None = None
) -> Path:
    """A 32x24 H.264 clip of noise frames (no audio), one frame at each of `pts` in a 1/30 s time
    base: irregular steps make a variable frame rate."""
    with av.open(str(path), "w", format=fmt, options=options or {}) as out:
        video = out.add_stream("libx264", rate=30, time_base=Fraction(1, 30))
        video.width, video.height, video.pix_fmt = 32, 24, "yuv420p"
        rng = np.random.default_rng(0)
        for tick in pts:
            frame = av.VideoFrame.from_ndarray(
                rng.integers(0, 256, (24, 32, 3), dtype=np.uint8), format="rgb24"
            )
            frame.pts, frame.time_base = tick, Fraction(1, 30)
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
    return path


def _rows(result: object) -> list[dict[str, object]]:
    return json.loads(result.stdout)["results"]  # type: ignore[attr-defined]


def _said(result: object) -> str:
    """The command's output with the table's line wrapping undone."""
    return " ".join(result.output.split())  # type: ignore[attr-defined]


UPSCALE = ["upscale", "-m", "tiny_x2", "--device", "cpu"]


def test_the_input_video_is_never_overwritten(weights_dir: Path, tmp_path: Path) -> None:
    src = make_clip(tmp_path / "clip.mp4", frames=3)
    before = src.read_bytes()
    (tmp_path / "link.mp4").symlink_to(src)
    os.link(src, tmp_path / "hard.mp4")
    for extra in (
        ["-o", str(src)],
        ["--suffix", ""],
        ["-o", str(tmp_path / "link.mp4")],  # a symlink to the input
        ["-o", str(tmp_path / "hard.mp4")],  # a hard link: another name for the same file
        ["--frames", str(src)],
    ):
        result = runner.invoke(app, [*UPSCALE, str(src), "--overwrite", "--json", *extra])
        assert result.exit_code == 1, (extra, result.output)
        assert _rows(result)[0]["error"] == "the output would overwrite the input", extra
    result = runner.invoke(app, [*UPSCALE, str(src), "--suffix", "", "--overwrite"])
    assert "the output would overwrite the input" in _said(result) and "(use -o or --suffix)" in _said(result)
    assert src.read_bytes() == before and (tmp_path / "link.mp4").is_symlink()
    assert not list(tmp_path.glob(".*.tmp"))
    # the library refuses it too, before --skip-existing could call it done
    upscaler = srgan_cli.Upscaler("tiny_x2", device="cpu").runtime.upscaler
    status = video_job(
        upscaler,
        src,
        tmp_path / "hard.mp4",
        VideoOptions(),
        outscale=None,
        overwrite=True,
        skip_existing=True,
    )
    assert status == ("failed", None, "the output would overwrite the input", "use -o or --suffix")
    try:
        upscale_video(upscaler, src, src, VideoOptions(), overwrite=True)
        raise AssertionError("upscale_video wrote over its input")
    except VideoError as exc:
        assert exc.reason == "the output would overwrite the input"
    assert src.read_bytes() == before


def test_truncated_video_fails_and_leaves_nothing_unless_allow_partial(
    weights_dir: Path, tmp_path: Path
) -> None:
    whole = make_noise_clip(tmp_path / "whole.mp4", range(20), options={"movflags": "faststart"})
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])  # the index (at the front) still declares 20 frames
    result = runner.invoke(app, [*UPSCALE, str(cut), "--json"])
    assert result.exit_code == 1, result.output
    error = str(_rows(result)[0]["error"])
    assert re.fullmatch(
        r"truncated or corrupt: \d+ of the 20 frames the container declares could be read", error
    )
    assert not (tmp_path / "cut_x2_tiny.mp4").exists() and not list(tmp_path.glob(".*.tmp"))
    # the same for frames: none of them is left
    result = runner.invoke(app, [*UPSCALE, str(cut), "--frames", str(tmp_path / "frames")])
    assert result.exit_code == 1 and not list((tmp_path / "frames").glob("*.png"))
    # --allow-partial: what could be read, with a note saying so
    result = runner.invoke(app, [*UPSCALE, str(cut), "--allow-partial"])
    assert result.exit_code == 0, result.output
    note = re.search(r"note: cut.mp4 is truncated or corrupt: (\d+) of the 20 frames", _said(result))
    assert note is not None, result.output
    assert 0 < _probe(tmp_path / "cut_x2_tiny.mp4")["frames"] == int(note.group(1)) < 20
    # Matroska declares a duration, not a count
    whole = make_noise_clip(tmp_path / "whole.mkv", range(20), fmt="matroska")
    data = whole.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    result = runner.invoke(app, [*UPSCALE, str(cut), "--json"])
    assert result.exit_code == 1
    error = str(_rows(result)[0]["error"])
    assert error.startswith("truncated or corrupt: ") and "of the 0.67 s the container declares" in error
    assert not (tmp_path / "cut_x2_tiny.mkv").exists() and not list(tmp_path.glob(".*.tmp"))
    assert runner.invoke(app, [*UPSCALE, str(whole)]).exit_code == 0  # a whole clip passes the check


def test_damage_mid_stream_fails_too(weights_dir: Path, tmp_path: Path) -> None:
    whole = make_noise_clip(tmp_path / "whole.mp4", range(20), options={"movflags": "faststart"})
    data = bytearray(whole.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 400] = b"\xff" * 400  # all frames there, some of them garbage
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    result = runner.invoke(app, [*UPSCALE, str(damaged), "--json"])
    assert result.exit_code == 1
    assert str(_rows(result)[0]["error"]).startswith("truncated or corrupt: ")
    assert not (tmp_path / "damaged_x2_tiny.mp4").exists() and not list(tmp_path.glob(".*.tmp"))


def test_shortfall_rules() -> None:
    from srgan_cli.runtime.video import _Declared, _Reading, _shortfall

    def read(frames: int, fps: float = 30.0, error: str | None = None) -> _Reading:
        reading = _Reading(fallback=1 / fps, frames=frames, first=0.0, end=frames / fps)
        reading.error = error
        return reading

    assert _shortfall(_Declared(40, 40 / 30), read(40), 0, Fraction(1, 30)) is None
    assert _shortfall(_Declared(40, 40 / 30), read(39), 0, Fraction(1, 30)) is None  # containers estimate
    assert _shortfall(_Declared(40, 40 / 30), read(16), 0, Fraction(1, 30)) == (
        "16 of the 40 frames the container declares could be read"
    )
    # an MP4 edit list hides indexed frames: the count falls short, the duration does not
    assert _shortfall(_Declared(40, 30 / 30), read(30), 0, Fraction(1, 30)) is None
    assert _shortfall(_Declared(None, 40 / 30), read(18), 0, Fraction(1, 30)) == (
        "18 frames (0.60 s) of the 1.33 s the container declares could be read"
    )
    assert _shortfall(_Declared(None, None), read(18), 0, None) is None  # nothing declared


def test_variable_frame_rate_keeps_the_source_timestamps(weights_dir: Path, tmp_path: Path) -> None:
    ticks = [0, 1, 3, 4, 7, 8, 10, 13]  # in 1/30 s
    for name, fmt, out in (
        ("vfr.mp4", "mp4", "out.mp4"),
        ("vfr.mkv", "matroska", "out.mkv"),
        ("vfr2.mkv", "matroska", "out2.mp4"),
    ):
        src = make_noise_clip(tmp_path / name, ticks, fmt=fmt)
        result = runner.invoke(app, [*UPSCALE, str(src), "-o", str(tmp_path / out)])
        assert result.exit_code == 0, result.output
        before, after = _probe(src)["pts"], _probe(tmp_path / out)["pts"]
        assert len(after) == len(ticks), out  # type: ignore[arg-type]
        assert np.allclose(after, before, atol=1 / 30) and np.allclose(
            after, np.array(ticks) / 30, atol=1 / 30
        )
    # AVI has one fixed rate: the average, each frame on the tick nearest its time, none lost
    result = runner.invoke(app, [*UPSCALE, str(tmp_path / "vfr.mp4"), "-o", str(tmp_path / "vfr.avi")])
    assert result.exit_code == 0, result.output
    after = _probe(tmp_path / "vfr.avi")
    tick = 1 / float(after["fps"])  # type: ignore[arg-type]
    assert after["frames"] == len(ticks) and np.all(np.diff(after["pts"]) > 0)  # type: ignore[arg-type]
    assert np.allclose(after["pts"], np.array(ticks) / 30, atol=tick + 1e-6)  # type: ignore[arg-type]


def test_avi_gets_mpeg4_and_refuses_codecs_it_cannot_time(weights_dir: Path, tmp_path: Path) -> None:
    src = make_clip(tmp_path / "clip.mp4", frames=6)
    out = tmp_path / "clip.avi"
    result = runner.invoke(app, [*UPSCALE, str(src), "-o", str(out)])
    assert result.exit_code == 0, result.output
    with av.open(str(out)) as clip:
        assert clip.streams.video[0].codec_context.name == "mpeg4" and clip.streams.audio
    before, after = _probe(src), _probe(out)
    assert after["size"] == (48, 32) and after["pts"] == before["pts"]  # 0.0, 0.1, ... in order
    result = runner.invoke(
        app, [*UPSCALE, str(src), "-o", str(tmp_path / "x.avi"), "--codec", "h264", "--json"]
    )
    assert result.exit_code == 1
    assert (
        _rows(result)[0]["error"]
        == "AVI cannot keep the frame order of h264 (it has no presentation timestamps)"
    )
    assert not (tmp_path / "x.avi").exists()


def test_pixel_format_is_checked_before_decoding(weights_dir: Path, tmp_path: Path) -> None:
    good = make_clip(tmp_path / "good.mp4", frames=3)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(good.read_bytes()[:300])  # cannot even be opened: the check comes first
    for src in (good, broken):
        result = runner.invoke(app, [*UPSCALE, str(src), "--pix-fmt", "rgb24", "--json"])
        assert result.exit_code == 1
        error = str(_rows(result)[0]["error"])
        assert error.startswith("libx264 (h264) cannot encode pixel format rgb24; it takes yuv420p, "), error
    result = runner.invoke(app, [*UPSCALE, str(good), "--pix-fmt", "nonsense", "--json"])
    assert _rows(result)[0]["error"] == "unknown pixel format 'nonsense'"
    assert not list(tmp_path.glob("*_x2*.mp4"))


def test_output_named_as_another_kind_of_file_is_refused(weights_dir: Path, tmp_path: Path) -> None:
    src = make_clip(tmp_path / "clip.mp4", frames=3)
    for name, kind in (("out.png", "an image name"), ("out.txt", "not a video name")):
        result = runner.invoke(app, [*UPSCALE, str(src), "-o", str(tmp_path / name)])
        assert result.exit_code == 2, result.output
        assert f"is {kind}; a video is written as .mp4, .mkv, .webm, .mov, .avi, .m4v" in _said(result)
        assert not (tmp_path / name).exists()  # neither a file nor a folder of that name


def test_frames_too_small_are_refused_before_any_work(weights_dir: Path, tmp_path: Path) -> None:
    src = make_clip(tmp_path / "clip.mp4", frames=3)  # 24x16
    for extra in ([], ["--frames", str(tmp_path / "frames")]):
        result = runner.invoke(app, [*UPSCALE, str(src), "-s", "0.05", "--json", *extra])
        assert result.exit_code == 1
        error = _rows(result)[0]["error"]
        assert error == "--outscale 0.05 would make its 24x16 frames 1x1 pixels; a frame needs at least 2x2"
    result = runner.invoke(app, [*UPSCALE, str(src), "-s", "0.5", "--codec", "h265", "--json"])
    assert _rows(result)[0]["error"] == (
        "--outscale 0.5 would make its 24x16 frames 12x8 pixels; h265 needs at least 16x16"
    )
    assert not (tmp_path / "frames").exists() and not list(tmp_path.glob("*_x2*.mp4"))
