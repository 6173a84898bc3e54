"""A generated corpus of bad or unusual inputs (nothing binary is checked in). Each kind writes
one file and says what validation must make of it: a regular expression its reason must match,
or ``None`` when it is a usable image that must be accepted and decoded correctly."""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


def _gradient(size: int = 64, mode: str = "L") -> Image.Image:
    ramp = np.tile(np.linspace(0, 255, size, dtype=np.uint8), (size, 1))
    return Image.fromarray(ramp, mode="L").convert(mode)


def _noise(size: int) -> Image.Image:
    return Image.fromarray(
        np.random.default_rng(0).integers(0, 256, (size, size), dtype=np.uint8), mode="L"
    )


def jpeg_bytes(size: int = 64, **options) -> bytes:
    buffer = io.BytesIO()
    _gradient(size).save(buffer, format="JPEG", quality=90, **options)
    return buffer.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height``: a decompression bomb without the bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def dicom_bytes(
    stored: np.ndarray,
    photometric: str = "MONOCHROME2",
    slope: float = 1.0,
    intercept: float = 0.0,
    window: tuple[float, float] | None = None,
    spacing: tuple[float, float] | None = (0.15, 0.15),
    claimed_shape: tuple[int, int] | None = None,
) -> bytes:
    """An uncompressed DICOM radiograph (Part 10, explicit VR little endian) of ``stored``
    values."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
        "DX",
    )
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    bits = 16 if stored.dtype.itemsize == 2 else 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if spacing:
        ds.PixelSpacing = list(spacing)
    ds.PixelData = stored.astype(f"<u{bits // 8}").tobytes()
    if claimed_shape:  # a header that lies about the size: a bomb without the bomb
        ds.Rows, ds.Columns = claimed_shape
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@dataclass(frozen=True)
class Kind:
    name: str  # the file name it is written under, inside a class folder
    write: Callable[[Path], None]
    reason: str | None  # regex the validation reason must match; None: usable, must be accepted
    check: str | None = None  # which manifest check names it (None: the 'readable' check)
    folder_level: bool = False  # a property of the folder entry (links, pipes), found by the scan


def _save(image: Image.Image, **options) -> Callable[[Path], None]:
    return lambda path: image.save(path, **options)


def _bytes(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


def _exif_rotated(path: Path) -> None:
    """A wide image stored with EXIF orientation 6: viewers (and we) show it rotated to tall."""
    image = Image.fromarray(
        np.hstack([np.full((64, 96), 255, np.uint8), np.zeros((64, 32), np.uint8)]), mode="L"
    )
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(path, format="JPEG", quality=95, exif=exif)


def _animated_gif(path: Path) -> None:
    frames = [_gradient(64).point(lambda v, k=k: (v + 40 * k) % 256) for k in range(3)]
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:], duration=100)


def _corrupt_header(path: Path) -> None:
    data = bytearray(png_bytes(_gradient(64)))
    data[16:24] = b"\xff" * 8  # IHDR width/height garbage; CRC no longer matches
    path.write_bytes(bytes(data))


def _symlink_loop(path: Path) -> None:
    os.symlink(path.name, path)  # points at itself


def _palette(path: Path) -> None:
    _gradient(64).convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(path, format="PNG")


def _sixteen_bit(path: Path) -> None:
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    Image.fromarray(ramp).save(path, format="PNG")


def _float_tiff(path: Path) -> None:
    Image.fromarray(np.tile(np.linspace(-1, 1, 64, dtype=np.float32), (64, 1)), mode="F").save(
        path, format="TIFF"
    )


KINDS: list[Kind] = [
    Kind("empty.jpg", _bytes(b""), r"empty file"),
    Kind(
        "cut.jpg",
        lambda p: p.write_bytes(jpeg_bytes(128)[: len(jpeg_bytes(128)) // 2]),
        r"truncated",
    ),
    Kind(
        "cut.png",
        lambda p: p.write_bytes(png_bytes(_noise(128))[:2000]),
        r"image file is truncated",
    ),
    Kind("notes.png", lambda p: p.write_text("this is not an image\n"), r"not an image"),
    Kind("header.png", _corrupt_header, r"not an image: no decoder recognises"),
    Kind("huge.png", _bytes(png_header_only(50_000, 50_000)), r"decompression-bomb guard"),
    Kind(
        "fifty-mp.png",
        _bytes(png_header_only(10_000, 5_000)),
        r"decompression-bomb guard: 10000x5000",
    ),
    Kind("animated.png", _animated_gif, r"multi-frame image \(3 frames\)"),
    Kind("loop.png", _symlink_loop, r"symlink loop", folder_level=True),
    Kind(
        "dangling.png", lambda p: os.symlink("nowhere.png", p), r"broken symlink", folder_level=True
    ),
    Kind("tiny.png", _save(_gradient(1)), r"1", check="min_width"),
    Kind("alpha.png", _save(_gradient(64, "RGBA")), r"RGBA", check="image_mode"),
    Kind("cmyk.jpg", _save(_gradient(64, "CMYK"), format="JPEG"), r"CMYK", check="image_mode"),
    Kind("gray-alpha.png", _save(_gradient(64, "LA")), r"LA", check="image_mode"),
    Kind("pipe.png", lambda p: os.mkfifo(p), r"not a regular file"),
    Kind(
        "huge.dcm",
        lambda p: p.write_bytes(
            dicom_bytes(np.zeros((8, 8), np.uint16), claimed_shape=(9000, 6000))
        ),
        r"decompression-bomb guard: image is 6000x9000",
    ),
    Kind(
        "bad.dcm",
        lambda p: p.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage"),
        r"DICOM",
    ),
    # valid but unusual: accepted and decoded correctly
    Kind("sixteen-bit.png", _sixteen_bit, None),
    Kind("rotated.jpg", _exif_rotated, None),
    Kind("palette.png", _palette, None),
    Kind("progressive.jpg", lambda p: p.write_bytes(jpeg_bytes(64, progressive=True)), None),
    Kind("scan.tif", _save(_gradient(64), format="TIFF", compression="tiff_lzw"), None),
    Kind("float.tif", _float_tiff, None),
    Kind("really-a-png.jpg", lambda p: p.write_bytes(png_bytes(_gradient(64))), None),
    Kind("bitmap.bmp", _save(_gradient(64), format="BMP"), None),
    Kind(
        "trailing-bytes.jpg",
        lambda p: p.write_bytes(jpeg_bytes(64) + b"\0junk after the end marker"),
        None,
    ),
    Kind("rgb.png", _save(_gradient(64, "RGB")), None),
    Kind(
        "xray.dcm",
        lambda p: p.write_bytes(
            dicom_bytes(np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (64, 1)))
        ),
        None,
    ),
    Kind(
        "name-\udcff\udcfe.png", _save(_gradient(64), format="PNG"), None
    ),  # not valid UTF-8 on disk
]
#: the unreadable files ``inspect_image`` itself must explain
BAD_FILES = {
    k.name: k for k in KINDS if k.reason is not None and k.check is None and not k.folder_level
}
