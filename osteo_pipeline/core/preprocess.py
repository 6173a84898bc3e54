"""The one preprocessing path shared by training, evaluation and serving.

Any image (path, bytes or PIL image; 8/16-bit gray, RGB, palette, EXIF-rotated, DICOM) becomes a
``size`` x ``size`` x 3 uint8 array: grayscale replicated to three channels, so a colour cast or a
file's mode cannot become a shortcut the model learns. ``model_input`` then applies ResNet-50's
own caffe-style preprocessing (BGR, ImageNet mean subtracted), not a 1/255 rescale.
"""

from __future__ import annotations

import functools
import io
import re
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageOps

from osteo_pipeline.core.image_bounds import ImageBounds

Image.MAX_IMAGE_PIXELS = None  # callers enforce their own limit (see ``open_image``)

#: Bump whenever ``load_gray_views`` may return other pixels for the same file (decoding, resizing,
#: gray conversion): on-disk pixel caches are keyed by it, so training never reuses arrays made by
#: older preprocessing while serving decodes with the new one.
PREPROCESS_VERSION = 4


class ImageDecodeError(ValueError):
    """An input that is not a usable image; the message says why."""


DICOM_MAGIC_OFFSET = 128


def is_dicom(source: str | Path | bytes) -> bool:
    """A DICOM Part 10 file: ``DICM`` after the 128-byte preamble (whatever the file is called)."""
    if isinstance(source, bytes):
        head = source[: DICOM_MAGIC_OFFSET + 4]
    else:
        try:
            with open(source, "rb") as handle:
                head = handle.read(DICOM_MAGIC_OFFSET + 4)
        except OSError:
            return False
    return head[DICOM_MAGIC_OFFSET:] == b"DICM"


def read_dicom(source: str | Path | bytes):  # noqa: ANN201 - pydicom.Dataset
    """The dataset with its (still encoded) pixel data; decoding waits for ``dicom_to_gray``."""
    import pydicom

    try:
        return pydicom.dcmread(io.BytesIO(source) if isinstance(source, bytes) else source)
    except Exception as exc:
        raise ImageDecodeError(f"unreadable DICOM ({_unnamed(exc, source)})") from exc


def _unnamed(exc: Exception, source: str | Path | bytes) -> str:
    """The error without the file's path: callers name the image their own way (a clinical
    manifest by row, since its paths carry patient IDs)."""
    text = re.sub(
        r"<_io\.BytesIO object at 0x[0-9a-f]+>", "the file", f"{type(exc).__name__}: {exc}"
    )
    return text if isinstance(source, bytes) else text.replace(str(source), "the file")


def dicom_to_gray(dataset) -> np.ndarray:  # noqa: ANN001 - pydicom.Dataset
    """Display-ready 8-bit gray of a DICOM radiograph, as PS3.3 C.11 defines the pipeline: the
    stored values (any bit depth) through the modality LUT (rescale slope and intercept), then the
    VOI LUT (the first VOI LUT Sequence item, else the first window with its VOI LUT Function,
    else the 0.5-99.5 percentile range), then MONOCHROME1 inverted so bone is bright as in
    MONOCHROME2."""
    from pydicom.pixels import apply_modality_lut

    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageDecodeError(
            f"DICOM PhotometricInterpretation {photometric} is not a grayscale radiograph"
        )
    if int(dataset.get("NumberOfFrames", 1) or 1) > 1:
        raise ImageDecodeError(
            f"multi-frame DICOM ({dataset.NumberOfFrames} frames): send one radiograph per file"
        )
    if "PixelData" not in dataset:
        raise ImageDecodeError(
            f"DICOM without pixel data (SOP class {dataset.get('SOPClassUID', 'unknown')}): "
            "not an image"
        )
    try:
        stored = dataset.pixel_array
    except Exception as exc:
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise ImageDecodeError(
            f"cannot decode DICOM pixel data (transfer syntax {syntax}): {exc}"
        ) from exc
    values = np.asarray(apply_modality_lut(stored, dataset), dtype=np.float64)
    gray = _voi(values, dataset)
    if photometric == "MONOCHROME1":
        gray = 1 - gray
    return np.round(gray * 255).astype(np.uint8)


def _voi(values: np.ndarray, dataset) -> np.ndarray:  # noqa: ANN001 - pydicom.Dataset
    """The VOI transform of modality values to [0, 1] (PS3.3 C.11.2)."""
    sequence = dataset.get("VOILUTSequence")
    if sequence:
        from pydicom.pixels import apply_voi

        lut = np.asarray(sequence[0].LUTData, dtype=np.float64)
        mapped = apply_voi(np.round(values).astype(np.int64), dataset).astype(np.float64)
        low, high = float(lut.min()), float(lut.max())
        return np.clip((mapped - low) / max(high - low, 1e-6), 0, 1)
    center, width = dataset.get("WindowCenter"), dataset.get("WindowWidth")
    if center is not None and width is not None:
        c, w = _first(center), max(_first(width), 1.0)  # several windows: the first is the default
        function = str(dataset.get("VOILUTFunction", "LINEAR")).upper()
        if function == "SIGMOID":
            return 1 / (1 + np.exp(-4 * (values - c) / w))
        if function == "LINEAR_EXACT":
            return np.clip((values - c) / w + 0.5, 0, 1)
        return np.clip((values - (c - 0.5)) / max(w - 1, 1e-6) + 0.5, 0, 1)
    low, high = np.percentile(values, [0.5, 99.5])
    return np.clip((values - low) / max(high - low, 1e-6), 0, 1)


def _first(value) -> float:  # noqa: ANN001 - a DICOM DS or multi-valued DS
    from pydicom.multival import MultiValue

    return float(value[0] if isinstance(value, MultiValue) else value)


def dicom_mode(dataset) -> str:  # noqa: ANN001 - pydicom.Dataset
    """The Pillow mode a DICOM radiograph counts as: 8-bit or 16-bit gray by its BitsAllocated."""
    return "L" if int(dataset.get("BitsAllocated", 8)) <= 8 else "I;16"


def dicom_image(dataset, max_pixels: int) -> Image.Image:  # noqa: ANN001 - pydicom.Dataset
    """The radiograph as an 8-bit gray image, after checking Rows x Columns against the limit
    (pixel data is only decoded after that check)."""
    rows, columns = int(dataset.get("Rows", 0)), int(dataset.get("Columns", 0))
    if rows * columns > max_pixels:
        raise ImageDecodeError(
            f"image is {columns}x{rows} = {rows * columns:,} px, over the {max_pixels:,} px limit"
        )
    return Image.fromarray(dicom_to_gray(dataset), mode="L")


def dicom_pixel_spacing(dataset) -> str | None:  # noqa: ANN001
    """Row x column spacing in mm (PixelSpacing, else ImagerPixelSpacing), or None."""
    for name in ("PixelSpacing", "ImagerPixelSpacing"):
        value = dataset.get(name)
        if value is not None and len(value) == 2:
            return f"{float(value[0]):g}x{float(value[1]):g}"
    return None


def multi_frame_refusal(image: Image.Image) -> str | None:
    """Why validation refuses an animation or a stack of several images, or None for one image."""
    frames = getattr(image, "n_frames", 1)
    return f"multi-frame image ({frames} frames): one radiograph per file" if frames > 1 else None


def _check_bounds(
    bounds: ImageBounds | None, width: int, height: int, mode: str, image: Image.Image | None = None
) -> None:
    """With ``bounds`` (the model's door), refuse what validation would refuse from the header."""
    if bounds is None:
        return
    refusal = bounds.refusal(width, height, mode) or (multi_frame_refusal(image) if image else None)
    if refusal:
        raise ImageDecodeError(refusal)


def open_image(
    source: str | Path | bytes, max_pixels: int, bounds: ImageBounds | None = None
) -> Image.Image:
    """Open ``source`` and check its pixel count (and its size and mode against ``bounds``, when
    given) from the header before any decoding. DICOM is converted to an 8-bit gray image here
    (after the same checks on Rows x Columns)."""
    if is_dicom(source):
        dataset = read_dicom(source)  # read once: pixels decode only after the checks
        width, height = int(dataset.get("Columns", 0)), int(dataset.get("Rows", 0))
        _check_bounds(bounds, width, height, dicom_mode(dataset))
        return dicom_image(dataset, max_pixels)
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except Exception as exc:
        raise ImageDecodeError(f"not an image ({_unnamed(exc, source)})") from exc
    width, height = image.size
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"image is {width}x{height} = {width * height:,} px, over the {max_pixels:,} px limit"
        )
    _check_bounds(bounds, width, height, image.mode, image)
    return image


def decode_gray(image: Image.Image, draft_side: int) -> Image.Image:
    """Decode, orient and convert to 8-bit gray at its own aspect; JPEGs decode at the smallest
    DCT scale that keeps both sides >= ``draft_side``."""
    try:
        if image.format == "JPEG":
            image.draft("L", (draft_side, draft_side))
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            pixels = np.asarray(image, dtype=np.float32)
            low, high = np.percentile(pixels, [0.5, 99.5])
            scaled = np.clip((pixels - low) / max(high - low, 1e-6), 0, 1) * 255
            image = Image.fromarray(scaled.astype(np.uint8), mode="L")
        elif image.mode != "L":
            if image.mode in ("RGBA", "LA", "PA") or (
                image.mode == "P" and "transparency" in image.info
            ):
                image = image.convert("RGBA")
                background = Image.new("RGBA", image.size, (0, 0, 0, 255))
                image = Image.alpha_composite(background, image)
            image = image.convert("L")
        image.load()
        return image
    except ImageDecodeError:
        raise
    except Exception as exc:
        raise ImageDecodeError(f"cannot decode image ({type(exc).__name__}: {exc})") from exc


def to_gray_array(image: Image.Image, size: int) -> np.ndarray:
    """Decode, orient, convert to 8-bit gray and resize to ``size`` x ``size`` (uint8, 2-D)."""
    gray = decode_gray(image, size)
    try:
        resized = gray.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    except Exception as exc:
        raise ImageDecodeError(f"cannot decode image ({type(exc).__name__}: {exc})") from exc
    return np.asarray(resized, dtype=np.uint8)


def load_gray(
    source: str | Path | bytes, longest: int, max_pixels: int, bounds: ImageBounds | None = None
) -> np.ndarray:
    """8-bit gray pixels of ``source`` at its own aspect, the longer side at most ``longest``."""
    gray = decode_gray(open_image(source, max_pixels, bounds), longest)
    scale = longest / max(gray.size)
    if scale < 1:
        gray = gray.resize(
            (max(1, round(gray.width * scale)), max(1, round(gray.height * scale))),
            Image.Resampling.BILINEAR,
            reducing_gap=3.0,
        )
    return np.asarray(gray, dtype=np.uint8)


def load_pixels(source: str | Path | bytes, size: int, max_pixels: int) -> np.ndarray:
    """``size`` x ``size`` x 3 uint8 pixels of ``source``: the model's view of one image."""
    gray = to_gray_array(open_image(source, max_pixels), size)
    return np.repeat(gray[:, :, None], 3, axis=2)


#: How an image becomes model inputs: ``image``, the whole film resized; ``knees``, each knee
#: cropped around its joint line (``core.roi``).
ROI_MODES = ("image", "knees")


def views_per_image(roi: str) -> int:
    """Model inputs per image: 1 for the whole film, ``core.roi.VIEWS`` for knee crops."""
    from osteo_pipeline.core.roi import VIEWS

    if roi not in ROI_MODES:
        raise ValueError(f"unknown roi {roi!r}; one of {ROI_MODES}")
    return 1 if roi == "image" else VIEWS


def per_image(row_proba: np.ndarray, views: int) -> np.ndarray:
    """Mean of each consecutive run of ``views`` rows: an image's probability from its views."""
    return (
        row_proba.reshape(-1, views, row_proba.shape[-1]).mean(axis=1) if views > 1 else row_proba
    )


def load_gray_views(
    source: str | Path | bytes,
    size: int,
    max_pixels: int,
    roi: str = "image",
    bounds: ImageBounds | None = None,
) -> np.ndarray:
    """``views_per_image(roi)`` x ``size`` x ``size`` uint8 gray: the one function that turns a file
    into what the model sees, in training, serving and Grad-CAM alike. Knee crops are cut from a
    decode at three times ``size`` (a knee spans about a third of a film). With ``bounds`` (the
    serving door), an image validation would refuse for its size or mode is refused."""
    from osteo_pipeline.core.roi import knee_crops

    if views_per_image(roi) == 1:
        return to_gray_array(open_image(source, max_pixels, bounds), size)[None]
    return knee_crops(load_gray(source, 3 * size, max_pixels, bounds), size)


def load_views(*args: Any, **kwargs: Any) -> np.ndarray:
    """:func:`load_gray_views` (same arguments), replicated to 3 channels: V x size x size x 3."""
    return np.repeat(load_gray_views(*args, **kwargs)[..., None], 3, axis=3)


def model_input(pixels):
    """ResNet-50's own caffe-style preprocessing of uint8-range RGB pixels (RGB->BGR, ImageNet
    mean subtracted), as float32: the backbone's ``preprocess_input``, not a 1/255 rescale."""
    from keras.applications.resnet50 import preprocess_input

    return preprocess_input(pixels.astype("float32") if hasattr(pixels, "astype") else pixels)


@functools.cache
def _channel_offsets() -> np.ndarray:
    """What ``model_input`` adds to each output channel of an all-zero image (minus the ImageNet
    mean, in the backbone's channel order): taken from the backbone's own function, not copied."""
    return np.asarray(model_input(np.zeros((1, 1, 1, 3), np.float32)), np.float32).reshape(3)


def gray_model_input(gray: np.ndarray) -> np.ndarray:
    """``model_input`` of gray images replicated to three channels (N x H x W x 3 float32),
    computed from their one channel (N x H x W, or N x H x W x 1, floats in the uint8 range). On
    gray the channel swap changes nothing, so each output channel is the gray image plus that
    channel's offset: the same numbers as replicating first. OpenCV interleaves the three channels
    (``cv2.merge``), much faster than a broadcast add writing them, on the training pipeline's
    hot path (docs/performance.md)."""
    gray = np.asarray(gray, np.float32)
    gray = gray.reshape(gray.shape[:3])
    out = np.empty((*gray.shape, 3), np.float32)
    for image, target in zip(gray, out):
        cv2.merge([image + offset for offset in _channel_offsets()], target)  # writes into ``out``
    return out
