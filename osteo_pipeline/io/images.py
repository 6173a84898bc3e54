"""Reading image files: header facts, content hashes and a cheap full-decode check.

Every function here turns a bad file into a reason string instead of an exception, so one broken
X-ray never stops a scan of thousands.
"""

from __future__ import annotations

import hashlib
import stat
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageFile, UnidentifiedImageError

from osteo_pipeline.core.preprocess import (
    ImageDecodeError,
    dicom_image,
    dicom_mode,
    dicom_pixel_spacing,
    is_dicom,
    multi_frame_refusal,
    read_dicom,
)

# We enforce our own pixel limit before decoding; Pillow's own guard would raise first otherwise.
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False

_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class ImageFacts:
    """What the manifest records about one file; ``error`` is set when it cannot be used."""

    format: str | None = None
    width: int | None = None
    height: int | None = None
    mode: str | None = None
    channels: int | None = None
    bytes: int | None = None
    sha256: str | None = None
    pixel_spacing_mm: str | None = None  # DICOM only: row x column spacing
    error: str | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _decode_small(image: Image.Image) -> Image.Image:
    """Decode all the data (so truncation shows) at the smallest scale the codec allows."""
    if image.format == "JPEG":
        image.draft("L", (64, 64))  # DCT scaling: decodes a 2,600 px JPEG at 1/8 size
    image.load()
    return image


def _inspect_dicom(path: Path, base: dict[str, object], max_pixels: int) -> ImageFacts:
    facts: dict[str, object] = {"format": "DICOM"}
    try:
        dataset = read_dicom(path)  # one read: header facts and pixels from the same dataset
        facts |= {
            "width": int(dataset.get("Columns", 0)),
            "height": int(dataset.get("Rows", 0)),
            "mode": dicom_mode(dataset),
            "channels": int(dataset.get("SamplesPerPixel", 1)),
            "pixel_spacing_mm": dicom_pixel_spacing(dataset),
        }
        if facts["width"] * facts["height"] > max_pixels:
            raise ImageDecodeError(
                f"decompression-bomb guard: image is {facts['width']}x{facts['height']} px, "
                f"over validation.max_pixels={max_pixels:,}; not decoded"
            )
        dicom_image(dataset, max_pixels)  # decodes the pixels as training and serving will
        return ImageFacts(**base, **facts)
    except ImageDecodeError as exc:
        return ImageFacts(**base, **facts, error=str(exc))


def inspect_image(path: Path, max_pixels: int) -> ImageFacts:
    """Header facts and sha256 of ``path`` (after a full decode that proves its data is
    complete), or the reason it is unusable."""
    try:
        status = path.stat()
    except OSError as exc:
        return ImageFacts(error=f"cannot stat file: {exc.strerror or exc}")
    if not stat.S_ISREG(status.st_mode):
        return ImageFacts(error="not a regular file (a FIFO, socket or device): not opened")
    size = status.st_size
    if size == 0:
        return ImageFacts(bytes=0, error="empty file (0 bytes)")
    try:
        digest = sha256_file(path)
    except OSError as exc:
        return ImageFacts(bytes=size, error=f"cannot read file: {exc.strerror or exc}")
    base = {"bytes": size, "sha256": digest}
    if is_dicom(path):
        return _inspect_dicom(path, base, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                width, height = image.size
                header = {
                    "format": image.format,
                    "width": width,
                    "height": height,
                    "mode": image.mode,
                    "channels": len(image.getbands()),
                }
                if width * height > max_pixels:
                    return ImageFacts(
                        **base,
                        **header,
                        error=(
                            f"decompression-bomb guard: {width}x{height} = {width * height:,} px "
                            f"exceeds validation.max_pixels={max_pixels:,}; not decoded"
                        ),
                    )
                if multi_frame := multi_frame_refusal(image):
                    header["format"] = f"{image.format} ({image.n_frames} frames)"
                    return ImageFacts(**base, **header, error=multi_frame)
                _decode_small(image)
    except UnidentifiedImageError:
        return ImageFacts(**base, error="not an image: no decoder recognises its content")
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        return ImageFacts(**base, error=f"corrupt or truncated image data: {exc}")
    return ImageFacts(**base, **header)
