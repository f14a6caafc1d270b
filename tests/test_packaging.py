"""The shipped weights travel inside the wheel, so a plain `pip install .` finds them."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from .conftest import make_photo

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_contains_weights_and_entry_point(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("srgan_cli-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        shipped = {p.name for p in (ROOT / "weights").glob("*.safetensors")}
        assert shipped, "weights/ holds no shipped weights"
        for name in shipped:
            assert f"srgan_cli/weights/{name}" in names
        assert "srgan_cli/weights/README.md" in names
        entry = next(n for n in names if n.endswith("entry_points.txt"))
        assert "srgan = srgan_cli.cli.app:main" in zf.read(entry).decode()


def test_readme_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's Python block, as written, on a small generated photo."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "the README has a Python example"
    monkeypatch.chdir(tmp_path)
    Image.fromarray(make_photo(48, 40)).save("photo.jpg", quality=95)
    exec(compile(blocks[0], "README.md", "exec"), {})
    with Image.open("photo_x4.png") as out:
        assert out.size == (160, 192)
