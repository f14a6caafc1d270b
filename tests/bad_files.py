"""Damaged and hostile model files for the refusal tests: weights holding NaN/Inf, and a torch
zip bomb (a few MB that unpack to gigabytes)."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

import torch


def poisoned(state: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    """`state` with one NaN, then one +Inf, -Inf, ... put into each tensor named."""
    out = {k: v.clone() for k, v in state.items()}
    for i, name in enumerate(names):
        out[name].view(-1)[0] = (float("nan"), float("inf"), float("-inf"))[i % 3]
    return out


def zip_bomb(path: Path, gib: int = 2) -> Path:
    """A torch-style .pth (what torch.save writes: a zip of stored members) whose tensor data
    member is deflated zeros declaring `gib` GiB: about 1 MB per GiB on disk. Its CRC is left 0,
    so only a reader that trusts the declared sizes gets far (torch's allocates them first)."""
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(3)}, buf)
    src = zipfile.ZipFile(buf)
    # full flushes make each MiB of zeros a self-contained run of deflate blocks, so one can be
    # repeated instead of compressing gigabytes here
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    mib = deflate.compress(bytes(2**20)) + deflate.flush(zlib.Z_FULL_FLUSH)
    bomb = mib * (gib * 1024) + deflate.flush(zlib.Z_FINISH)
    body, directory = bytearray(), bytearray()
    for info in src.infolist():
        name = info.filename.encode()
        if info.filename.endswith("/data/0"):
            data, crc, method, size = bomb, 0, zipfile.ZIP_DEFLATED, gib * 2**30
        else:
            data = src.read(info)
            crc, method, size = zlib.crc32(data), zipfile.ZIP_STORED, len(data)
        fields = (method, 0, 0, crc, len(data), size, len(name), 0)
        directory += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, *fields, 0, 0, 0, 0, len(body))
        directory += name
        body += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, *fields) + name + data
    n = len(src.infolist())
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, len(directory), len(body), 0)
    path.write_bytes(bytes(body + directory + end))
    return path
