"""Video through `srgan upscale` (runtime/video.py, PyAV) on tiny generated clips: frames, size,
frame rate, timestamps, audio, rotation and colour tags kept; --frames; bad input."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from typer.testing import CliRunner

from srgan_cli.cli.app import app
from srgan_cli.runtime.video import is_video

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
    before, after = _probe(src), _probe(tmp_path / "clip_x2.mp4")
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
    (tmp_path / "good_x2.mp4").write_bytes(b"earlier")
    args = ["upscale", str(broken), str(good), "-m", "tiny_x2", "--device", "cpu", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    rows = {Path(r["input"]).name: r for r in json.loads(result.stdout)["results"]}
    assert rows["broken.mp4"]["status"] == "failed" and "video" in rows["broken.mp4"]["error"]
    assert rows["good.mp4"]["status"] == "failed" and rows["good.mp4"]["error"] == "output already exists"
    assert (tmp_path / "good_x2.mp4").read_bytes() == b"earlier" and not (tmp_path / "broken_x2.mp4").exists()
    again = runner.invoke(app, [*args[:-1], "--overwrite", "--json"])
    assert json.loads(again.stdout)["ok"] == 1 and _probe(tmp_path / "good_x2.mp4")["frames"] == 8


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
