"""The shipped weights travel inside the wheel, so a plain `pip install .` finds them."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

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
