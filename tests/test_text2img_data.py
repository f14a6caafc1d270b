"""Captioned-image data sets: the three folder layouts, bad input skipped with reasons, loading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from srgan_cli.errors import TrainingError
from srgan_cli.text2img.data import (
    CaptionSet,
    detect_format,
    index_captions,
    load_caption_set,
)
from tests.conftest import make_photo


def _png(path: Path, h: int = 16, w: int = 16, seed: int = 0) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = make_photo(h, w, seed=seed)
    Image.fromarray(pixels).save(path)
    return pixels


def _text(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")


def _reasons(skipped: list[tuple[Path, str]], root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): reason for p, reason in skipped}


# --- the three layouts ---------------------------------------------------------------------------


def test_jsonl_format(tmp_path: Path) -> None:
    _png(tmp_path / "imgs" / "a.png", seed=1)
    _png(tmp_path / "imgs" / "b.png", seed=2)
    _png(tmp_path / "c.png", seed=3)
    lines = [
        json.dumps(
            {"image": "imgs/b.png", "captions": ["  a red bird ", "", "small bird"], "attributes": {"x": 1}}
        ),
        "",
        json.dumps({"image": "imgs/a.png", "caption": "a yellow flower"}),
        "{not json",
        json.dumps({"captions": ["no image key"]}),
        json.dumps({"image": "../outside.png", "caption": "escapes"}),
        json.dumps({"image": "/etc/passwd.png", "caption": "absolute"}),
        json.dumps({"image": "missing.png", "caption": "gone"}),
        json.dumps({"image": "c.png", "captions": ["", "   "]}),
    ]
    _text(tmp_path / "captions.jsonl", "\n".join(lines) + "\n")

    assert detect_format(tmp_path) == "jsonl"
    index = index_captions(tmp_path)
    assert index.format == "jsonl"
    assert [it.image for it in index.items] == [tmp_path / "imgs" / "a.png", tmp_path / "imgs" / "b.png"]
    a, b = index.items
    assert a.captions == ["a yellow flower"] and a.extra == {} and a.label is None
    assert b.captions == ["a red bird", "small bird"]
    assert b.extra == {"attributes": {"x": 1}}
    reasons = [reason for _, reason in index.skipped]
    assert "captions.jsonl line 4: not valid JSON" in reasons
    assert 'captions.jsonl line 5: no "image" path' in reasons
    assert any(r.startswith("captions.jsonl line 6:") and "outside the folder" in r for r in reasons)
    assert any(r.startswith("captions.jsonl line 7:") and "outside the folder" in r for r in reasons)
    assert "captions.jsonl line 8: image not found" in reasons
    assert "captions.jsonl line 9: no captions" in reasons
    # c.png is on disk but its only record had no captions: reported as an image without captions
    assert _reasons(index.skipped, tmp_path)["c.png"].startswith("no caption file")
    assert len(index.skipped) == 7


def test_jsonl_merges_lines_of_one_image(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    lines = [
        json.dumps({"image": "a.png", "caption": "first", "split": "train"}),
        json.dumps({"image": "a.png", "caption": "second", "split": "test", "id": 7}),
    ]
    _text(tmp_path / "captions.jsonl", "\n".join(lines))
    (item,) = index_captions(tmp_path).items
    assert item.captions == ["first", "second"]
    assert item.extra == {"split": "train", "id": 7}


def test_cub_format(tmp_path: Path) -> None:
    # CUB: images/<class>/<stem>.jpg; Oxford-102: jpg/<stem>.jpg with class_XXXXX text folders
    _png(tmp_path / "images" / "001.Albatross" / "Albatross_0001.png", seed=1)
    _png(tmp_path / "jpg" / "image_06734.png", seed=2)
    _text(
        tmp_path / "text_c10" / "001.Albatross" / "Albatross_0001.txt",
        "a big white bird\n\nwith long wings\n",
    )
    _text(tmp_path / "text_c10" / "class_00077" / "image_06734.txt", "a purple flower\n")
    _text(tmp_path / "text_c10" / "char-CNN-RNN-embeddings.t7", "binary")  # ignored
    _png(tmp_path / "text_c10" / "001.Albatross" / "stray.png")  # images inside text_c10 are never used

    assert detect_format(tmp_path) == "cub"
    index = index_captions(tmp_path)
    assert index.format == "cub"
    got = {(it.image.relative_to(tmp_path).as_posix(), it.label, tuple(it.captions)) for it in index.items}
    assert got == {
        ("images/001.Albatross/Albatross_0001.png", "001.Albatross", ("a big white bird", "with long wings")),
        ("jpg/image_06734.png", "class_00077", ("a purple flower",)),
    }
    assert index.skipped == []


def test_cub_duplicate_stems(tmp_path: Path) -> None:
    # the same stem twice: the one in a folder named like the class wins; without one it is ambiguous
    _png(tmp_path / "images" / "002.Gull" / "Gull_1.png", seed=1)
    _png(tmp_path / "other" / "Gull_1.png", seed=2)
    _png(tmp_path / "a" / "Tern_1.png", seed=3)
    _png(tmp_path / "b" / "Tern_1.png", seed=4)
    _text(tmp_path / "text_c10" / "002.Gull" / "Gull_1.txt", "a gull\n")
    _text(tmp_path / "text_c10" / "003.Tern" / "Tern_1.txt", "a tern\n")
    index = index_captions(tmp_path)
    assert [it.image for it in index.items] == [tmp_path / "images" / "002.Gull" / "Gull_1.png"]
    reasons = _reasons(index.skipped, tmp_path)
    assert reasons["text_c10/003.Tern/Tern_1.txt"].startswith("ambiguous: 2 images")


def test_cub_prefers_release_image_folder(tmp_path: Path) -> None:
    # CUB_200_2011 keeps segmentation masks as segmentations/<class>/<stem>.png next to images/
    _png(tmp_path / "images" / "001.A" / "A_1.png", seed=1)
    _png(tmp_path / "segmentations" / "001.A" / "A_1.png", seed=2)
    _text(tmp_path / "text_c10" / "001.A" / "A_1.txt", "a bird\n")
    (item,) = index_captions(tmp_path).items
    assert item.image == tmp_path / "images" / "001.A" / "A_1.png"


def test_cub_bad_input(tmp_path: Path) -> None:
    _png(tmp_path / "images" / "c" / "good.png")
    _png(tmp_path / "images" / "c" / "lonely.png")
    _png(tmp_path / "images" / "c" / "empty.png")
    _png(tmp_path / "images" / "c" / "latin1.png")
    _text(tmp_path / "text_c10" / "c" / "good.txt", "fine\n")
    _text(tmp_path / "text_c10" / "c" / "empty.txt", "\n  \n")
    _text(tmp_path / "text_c10" / "c" / "latin1.txt", "caf\xe9".encode("latin-1"))
    _text(tmp_path / "text_c10" / "c" / "orphan.txt", "no image\n")
    index = index_captions(tmp_path)
    assert [it.image.name for it in index.items] == ["good.png"]
    reasons = _reasons(index.skipped, tmp_path)
    assert reasons["images/c/lonely.png"].startswith("no caption file")
    assert reasons["text_c10/c/empty.txt"] == "no captions (empty file)"
    assert "not UTF-8" in reasons["text_c10/c/latin1.txt"]
    assert reasons["text_c10/c/orphan.txt"].startswith("caption file without image")
    assert len(reasons) == 4


def test_sidecar_format_and_bad_input(tmp_path: Path) -> None:
    _png(tmp_path / "b.png", seed=1)
    _text(tmp_path / "b.txt", "\ufeff  a cat on a mat \n\n" + "long " * 200 + "\n")
    _png(tmp_path / "sub" / "a.png", seed=2)
    _text(tmp_path / "sub" / "a.txt", "a dog turns left\r\na dog\n")
    _png(tmp_path / "nocap.png")
    _text(tmp_path / "orphan.txt", "nothing\n")
    _png(tmp_path / "empty.png")
    _text(tmp_path / "empty.txt", "")
    _png(tmp_path / "bad.png")
    _text(tmp_path / "bad.txt", b"\xff\xfe\x00bad")

    assert detect_format(tmp_path) == "sidecar"
    index = index_captions(tmp_path)
    assert index.format == "sidecar"
    assert [it.image for it in index.items] == [tmp_path / "b.png", tmp_path / "sub" / "a.png"]
    assert index.items[0].captions == ["a cat on a mat", ("long " * 200).strip()]
    assert index.items[1].captions == ["a dog turns left", "a dog"]
    assert all(it.label is None and it.extra == {} for it in index.items)
    assert _reasons(index.skipped, tmp_path) == {
        "nocap.png": "no caption file",
        "orphan.txt": "caption file without image",
        "empty.txt": "no captions (empty file)",
        "bad.txt": "caption file is not UTF-8 text",
    }
    assert index_captions(tmp_path, limit=1).items == index.items[:1]


def test_detection_order(tmp_path: Path) -> None:
    _png(tmp_path / "images" / "c" / "x.png")
    _text(tmp_path / "images" / "c" / "x.txt", "side by side\n")
    assert detect_format(tmp_path) == "sidecar"
    _text(tmp_path / "text_c10" / "c" / "x.txt", "from text_c10\n")
    assert detect_format(tmp_path) == "cub"
    assert index_captions(tmp_path).items[0].captions == ["from text_c10"]
    _text(tmp_path / "captions.jsonl", json.dumps({"image": "images/c/x.png", "caption": "from jsonl"}))
    assert detect_format(tmp_path) == "jsonl"
    assert index_captions(tmp_path).items[0].captions == ["from jsonl"]


# --- nothing usable ------------------------------------------------------------------------------


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="no such file or folder"):
        detect_format(tmp_path / "nope")
    with pytest.raises(TrainingError, match="no such file or folder"):
        load_caption_set(tmp_path / "nope", 8)


def test_nothing_usable_names_format_and_reasons(tmp_path: Path) -> None:
    _png(tmp_path / "images" / "c" / "x.png")
    _text(tmp_path / "text_c10" / "c" / "y.txt", "a bird\n")
    with pytest.raises(TrainingError) as info:
        index_captions(tmp_path)
    message = str(info.value)
    assert "cub" in message and "2 skipped" in message
    assert "no caption file" in message and "caption file without image" in message
    assert "captions.jsonl" in info.value.hint and "text_c10" in info.value.hint

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TrainingError, match=r"sidecar; 0 skipped"):
        load_caption_set(empty, 8)


def test_nothing_usable_after_decoding(tmp_path: Path) -> None:
    _text(tmp_path / "broken.png", b"\x89PNG\r\n\x1a\n not really a png")
    _text(tmp_path / "broken.txt", "a broken picture\n")
    with pytest.raises(TrainingError, match="sidecar; 1 skipped"):
        load_caption_set(tmp_path, 8)


# --- loading -------------------------------------------------------------------------------------


def test_load_resizes_and_keeps_exact_pixels(tmp_path: Path) -> None:
    exact = _png(tmp_path / "a_exact.png", 16, 16, seed=5)
    _text(tmp_path / "a_exact.txt", "exact\n")
    big = _png(tmp_path / "b_big.png", 40, 40, seed=6)
    _text(tmp_path / "b_big.txt", "big one\nsecond\n")
    _text(tmp_path / "c_corrupt.png", b"\x89PNG\r\n\x1a\n garbage")
    _text(tmp_path / "c_corrupt.txt", "corrupt\n")

    cs = load_caption_set(tmp_path, 16)
    assert isinstance(cs, CaptionSet)
    assert cs.format == "sidecar" and cs.size == 16
    assert cs.images.dtype == torch.uint8 and cs.images.shape == (2, 3, 16, 16)
    assert cs.images.device.type == "cpu"
    assert torch.equal(cs.images[0], torch.from_numpy(exact).permute(2, 0, 1))
    want = np.array(Image.fromarray(big).resize((16, 16), Image.Resampling.BICUBIC))
    assert torch.equal(cs.images[1], torch.from_numpy(want).permute(2, 0, 1))
    assert cs.captions == [["exact"], ["big one", "second"]]
    assert [it.image.name for it in cs.items] == ["a_exact.png", "b_big.png"]
    assert [p.name for p, _ in cs.skipped] == ["c_corrupt.png"]

    limited = load_caption_set(tmp_path, 16, limit=1)
    assert limited.images.shape[0] == 1 and limited.captions == [["exact"]]


def test_load_centre_crops_non_square(tmp_path: Path) -> None:
    # 12 x 36: left and right thirds blue, the centre 12 x 12 red; the square must be all red
    wide = np.zeros((12, 36, 3), np.uint8)
    wide[:, :, 2] = 255
    wide[:, 12:24] = (255, 0, 0)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    tall = np.zeros((30, 10, 3), np.uint8)
    tall[:, :, 1] = 255
    tall[10:20] = (0, 0, 255)
    Image.fromarray(tall).save(tmp_path / "tall.png")
    _text(tmp_path / "wide.txt", "a red square\n")
    _text(tmp_path / "tall.txt", "a blue square\n")

    cs = load_caption_set(tmp_path, 8)
    assert cs.images.shape == (2, 3, 8, 8)
    tall_img, wide_img = cs.images  # sorted: tall.png, wide.png
    assert torch.equal(wide_img[0], torch.full((8, 8), 255, dtype=torch.uint8))
    assert int(wide_img[1:].max()) == 0
    assert torch.equal(tall_img[2], torch.full((8, 8), 255, dtype=torch.uint8))
    assert int(tall_img[:2].max()) == 0

    exact = load_caption_set(tmp_path, 12)  # the wide image's centre square is already 12 x 12
    assert torch.equal(exact.images[1], torch.from_numpy(wide[:, 12:24]).permute(2, 0, 1))


def test_load_min_size(tmp_path: Path) -> None:
    _png(tmp_path / "small.png", 8, 20)
    _text(tmp_path / "small.txt", "small\n")
    _png(tmp_path / "ok.png", 24, 24)
    _text(tmp_path / "ok.txt", "ok\n")
    cs = load_caption_set(tmp_path, 8, min_size=16)
    assert [it.image.name for it in cs.items] == ["ok.png"]
    assert cs.skipped == [(tmp_path / "small.png", "smaller than the 16px minimum (20x8)")]
