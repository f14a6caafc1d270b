"""Property-based fuzzing of the Python API and of `srgan upscale`'s options (Hypothesis).

The invariant: a correct image of the right size, dtype and layout, or a typed error (an
ArgumentError, which is a ValueError; an ArgumentTypeError, a TypeError; or another SrganError
with a sentence) raised before any work. Never a deep traceback, never silent garbage.

The "ci" profile (the default) keeps the run to a few seconds per test; for a longer hunt:
    HYPOTHESIS_PROFILE=long python -m pytest tests/test_fuzz.py
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

import srgan_cli
from srgan_cli import weights
from srgan_cli.cli.app import app
from srgan_cli.errors import ArgumentError, ArgumentTypeError, SrganError

from .conftest import make_photo, tiny_model

settings.register_profile(
    "ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.register_profile(
    "long", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

MAX_OUTPUT_MP = 0.05  # small results only: the limit itself is part of what is fuzzed


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fuzz") / "tiny_x2.safetensors"
    weights.save(path, tiny_model(2), trained_on="nothing")
    return path


_upscalers: dict[tuple[object, ...], srgan_cli.Upscaler] = {}


def upscaler(model_file: Path, **kwargs: object) -> srgan_cli.Upscaler:
    """One Upscaler per argument set (building one per example would dominate the run)."""
    key = (str(model_file), *sorted((k, repr(v)) for k, v in kwargs.items()))
    if key not in _upscalers:
        _upscalers[key] = srgan_cli.Upscaler(
            str(model_file), device="cpu", max_output_megapixels=MAX_OUTPUT_MP, **kwargs
        )  # type: ignore[arg-type]
    return _upscalers[key]


def expected_size(height: int, width: int, outscale: float | None) -> tuple[int, int]:
    factor = 2 if outscale is None else outscale
    return max(1, round(height * factor)), max(1, round(width * factor))


DTYPES = [np.uint8, np.uint16, np.float16, np.float32, np.float64, np.int8, np.int32, np.bool_, np.complex64]
RANGES = ["unit", "overshoot", "bytes", "nan", "inf", "negative"]


def _values(shape: tuple[int, ...], dtype: type, kind: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == np.uint8:
        return rng.integers(0, 256, shape, dtype=np.uint8)
    if dtype == np.uint16:
        return rng.integers(0, 65536, shape, dtype=np.uint16)
    if np.issubdtype(dtype, np.integer) or dtype == np.bool_:
        return rng.integers(0, 2, shape).astype(dtype)
    base = rng.uniform(0, 1, shape)
    values = {
        "unit": base,
        "overshoot": base * 1.08 - 0.04,
        "bytes": base * 250 + 5,
        "nan": np.where(base == base.flat[0], np.nan, base) if base.size else base,
        "inf": np.where(base == base.flat[0], np.inf, base) if base.size else base,
        "negative": base - 2,
    }[kind]
    return values.astype(dtype)


@given(
    height=st.integers(0, 12),
    width=st.integers(0, 12),
    layout=st.sampled_from([(), (1,), (2,), (3,), (4,), (5,), (0,)]),
    extra_dim=st.booleans(),
    dtype=st.sampled_from(DTYPES),
    kind=st.sampled_from(RANGES),
    outscale=st.one_of(
        st.none(), st.floats(allow_nan=True, allow_infinity=True, width=32), st.sampled_from([0.25, 1.5, 3.0])
    ),
    seed=st.integers(0, 3),
)
# the cases the issue found, always tried: 0..255 in float64, NaN, a 0x0 array, outscale 0/nan/inf
@example(
    height=8, width=8, layout=(3,), extra_dim=False, dtype=np.float64, kind="bytes", outscale=None, seed=0
)
@example(height=8, width=8, layout=(3,), extra_dim=False, dtype=np.float32, kind="nan", outscale=None, seed=0)
@example(height=0, width=0, layout=(3,), extra_dim=False, dtype=np.uint8, kind="unit", outscale=None, seed=0)
@example(height=8, width=8, layout=(3,), extra_dim=False, dtype=np.uint8, kind="unit", outscale=0.0, seed=0)
@example(
    height=8, width=8, layout=(), extra_dim=False, dtype=np.uint8, kind="unit", outscale=math.nan, seed=0
)
@example(
    height=8, width=8, layout=(4,), extra_dim=False, dtype=np.uint16, kind="unit", outscale=math.inf, seed=0
)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_arrays_give_an_image_or_a_typed_error(
    model_file: Path,
    height: int,
    width: int,
    layout: tuple[int, ...],
    extra_dim: bool,
    dtype: type,
    kind: str,
    outscale: float | None,
    seed: int,
) -> None:
    shape = (height, width, *layout) + ((1,) if extra_dim else ())
    array = _values(shape, dtype, kind, seed)
    try:
        up = upscaler(model_file, outscale=outscale)
    except ArgumentError:
        assert outscale is not None and not (math.isfinite(outscale) and outscale > 0)
        return
    try:
        out = up(array)
    except (ArgumentError, ArgumentTypeError) as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    except SrganError as exc:  # e.g. above the output limit: a sentence, before any work
        assert "limit" in str(exc)
        return
    # what came back: the input's dtype and layout, at the expected size, with no NaN
    assert out.dtype == array.dtype
    assert out.shape[:2] == expected_size(height, width, outscale) and out.shape[2:] == array.shape[2:]
    floats_in_range = np.issubdtype(dtype, np.floating) and kind in ("unit", "overshoot")
    assert dtype in (np.uint8, np.uint16) or floats_in_range  # everything else must have been refused
    if np.issubdtype(out.dtype, np.floating):
        assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


@given(
    batch=st.sampled_from([None, 1, 2]),
    channels=st.sampled_from([1, 3, 4]),
    height=st.integers(0, 10),
    width=st.integers(0, 10),
    dtype=st.sampled_from(
        [torch.uint8, torch.float32, torch.float16, torch.bfloat16, torch.int32, torch.bool]
    ),
    kind=st.sampled_from(["unit", "bytes", "nan"]),
)
@example(batch=None, channels=3, height=6, width=6, dtype=torch.uint8, kind="unit")  # a uint8 tensor: 0..255
@example(batch=2, channels=3, height=6, width=6, dtype=torch.float32, kind="bytes")
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_tensors_give_an_image_or_a_typed_error(
    model_file: Path, batch: int | None, channels: int, height: int, width: int, dtype: torch.dtype, kind: str
) -> None:
    shape = (channels, height, width) if batch is None else (batch, channels, height, width)
    base = torch.rand(shape, generator=torch.Generator().manual_seed(height * 31 + width))
    if dtype == torch.uint8:
        x = (base * 255).to(torch.uint8)
    elif dtype in (torch.int32, torch.bool):
        x = (base > 0.5).to(dtype)
    else:
        nan = base.clone()
        nan[..., :1, :1] = float("nan")
        scaled = {"unit": base, "bytes": base * 250 + 5, "nan": nan}[kind]
        x = scaled.to(dtype)
    up = upscaler(model_file)
    try:
        y = up(x)
    except (ArgumentError, ArgumentTypeError) as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert y.dtype == x.dtype and y.shape == (*x.shape[:-2], 2 * height, 2 * width)
    assert channels == 3 and height > 0 and width > 0
    assert dtype == torch.uint8 or kind == "unit"  # 0..255 in floats, NaN, ints: refused above
    if y.is_floating_point():
        assert torch.isfinite(y.float()).all() and float(y.min()) >= 0 and float(y.max()) <= 1


@given(
    mode=st.sampled_from(["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F", "YCbCr"]),
    height=st.integers(0, 9),
    width=st.integers(0, 9),
)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_pil_images_of_every_mode(model_file: Path, mode: str, height: int, width: int) -> None:
    image = Image.new(mode, (width, height))
    up = upscaler(model_file)
    try:
        out = up(image)
    except ArgumentError as exc:
        assert height == 0 or width == 0, exc
        return
    assert out.size == (2 * width, 2 * height)


@given(
    tile=st.one_of(st.sampled_from(["auto", 0, -1, 8, 16, 24]), st.floats(0, 40), st.text(max_size=3)),
    tile_pad=st.one_of(st.integers(-3, 40), st.just(1.5)),
    height=st.integers(1, 40),
    width=st.integers(1, 40),
)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_tiles_of_any_size_give_the_whole_image_result(
    model_file: Path, tile: object, tile_pad: object, height: int, width: int
) -> None:
    try:
        up = upscaler(model_file, tile=tile, tile_pad=tile_pad)
    except (ArgumentError, ArgumentTypeError):
        return
    pixels = make_photo(height, width, seed=height + width)
    whole = upscaler(model_file, tile=0)(pixels)
    assert up(pixels).shape == whole.shape
    if isinstance(tile_pad, int) and tile_pad >= 12:  # the tiny model's receptive radius is 11 LR px
        assert np.abs(up(pixels).astype(int) - whole.astype(int)).max() <= 1


# --- the option parser -----------------------------------------------------------------------------

runner = CliRunner()


@pytest.fixture(scope="module")
def one_photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fuzz-in") / "photo.png"
    Image.fromarray(make_photo(10, 14)).save(path)
    return path


OPTION_VALUES = {
    "--outscale": st.sampled_from(["0", "-1", "nan", "inf", "1e9", "0.5", "3", "abc", ""]),
    "--tile": st.sampled_from(["auto", "0", "-4", "3", "16", "x", "1e3"]),
    "--tile-pad": st.sampled_from(["-1", "0", "8", "nan"]),
    "--quality": st.sampled_from(["0", "1", "101", "95", "q"]),
    "--suffix": st.text(alphabet="ab_/.\\ -", max_size=6),
    "--format": st.sampled_from(["png", "jpg", "webp", "tiff", "gif", "auto"]),
    "--max-megapixels": st.sampled_from(["0", "1e-9", "nan", "inf", "50"]),
    "--max-output-megapixels": st.sampled_from(["0.0001", "nan", "-3", "50"]),
    "--self-ensemble": st.sampled_from(["1", "2", "3", "8"]),
    "--png-compression": st.sampled_from(["-1", "0", "9", "10"]),
}


@given(
    chosen=st.dictionaries(st.sampled_from(sorted(OPTION_VALUES)), st.just(None), max_size=3), data=st.data()
)
@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_upscale_options_end_in_a_result_or_one_line(
    model_file: Path,
    one_photo: Path,
    tmp_path_factory: pytest.TempPathFactory,
    chosen: dict[str, None],
    data: st.DataObject,
) -> None:
    out_dir = tmp_path_factory.mktemp("fuzz-out")
    args = ["upscale", str(one_photo), "-o", str(out_dir), "-m", str(model_file), "--device", "cpu", "--json"]
    for option in chosen:
        args += [option, data.draw(OPTION_VALUES[option], label=option)]
    result = runner.invoke(app, args)
    assert result.exit_code in (0, 1, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    if result.exit_code == 0:
        written = [p for p in out_dir.rglob("*") if p.is_file() and p.name != ".srgan-manifest.jsonl"]
        assert len(written) == 1 and not written[0].name.startswith(".")  # no temporaries, no claims
