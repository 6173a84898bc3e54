"""Generators for bad or unusual image files. Each writes one file and says what validation
should make of it: ``None`` for a usable image, else a substring of the reason."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image


def _gradient(size: int = 64, mode: str = "L") -> Image.Image:
    ramp = np.tile(np.linspace(0, 255, size, dtype=np.uint8), (size, 1))
    return Image.fromarray(ramp, mode="L").convert(mode)


def jpeg_bytes(size: int = 64) -> bytes:
    buffer = io.BytesIO()
    _gradient(size).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height``: a decompression bomb without the bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def zero_byte(path: Path) -> str:
    path.write_bytes(b"")
    return "empty file"


def truncated_jpeg(path: Path) -> str:
    data = jpeg_bytes(128)
    path.write_bytes(data[: len(data) // 2])
    return "truncated"


def text_as_png(path: Path) -> str:
    path.write_text("this is not an image\n")
    return "not an image"


def decompression_bomb(path: Path) -> str:
    path.write_bytes(png_header_only(50_000, 50_000))
    return "decompression-bomb guard"


def rgba_png(path: Path) -> str:
    _gradient(mode="RGBA").save(path, format="PNG")
    return None  # readable; the mode expectation rejects it


#: name -> (file name, writer); the writer returns the expected reason substring (or None)
BAD_FILES: dict[str, tuple[str, Callable[[Path], str | None]]] = {
    "zero-byte": ("empty.jpg", zero_byte),
    "truncated-jpeg": ("cut.jpg", truncated_jpeg),
    "text-as-png": ("notes.png", text_as_png),
    "decompression-bomb": ("huge.png", decompression_bomb),
}
