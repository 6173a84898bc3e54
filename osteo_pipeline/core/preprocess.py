"""The one preprocessing path shared by training, evaluation and serving.

Any image (path, bytes or PIL image; 8/16-bit gray, RGB, palette, EXIF-rotated) becomes a
``size`` x ``size`` x 3 uint8 array: grayscale replicated to three channels, so a colour cast or a
file's mode cannot become a shortcut the model learns. ``model_input`` then applies ResNet-50's
own caffe-style preprocessing (BGR, ImageNet mean subtracted), not a 1/255 rescale.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

Image.MAX_IMAGE_PIXELS = None  # callers enforce their own limit (see ``open_image``)


class ImageDecodeError(ValueError):
    """An input that is not a usable image; the message says why."""


def open_image(source: str | Path | bytes, max_pixels: int) -> Image.Image:
    """Open ``source`` and check its pixel count from the header before any decoding."""
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except Exception as exc:
        raise ImageDecodeError(f"not an image ({type(exc).__name__}: {exc})") from exc
    width, height = image.size
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"image is {width}x{height} = {width * height:,} px, over the {max_pixels:,} px limit"
        )
    return image


def to_gray_array(image: Image.Image, size: int) -> np.ndarray:
    """Decode, orient, convert to 8-bit gray and resize to ``size`` x ``size`` (uint8, 2-D)."""
    try:
        if image.format == "JPEG":
            image.draft("L", (size, size))  # decode at the smallest DCT scale still >= size
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            pixels = np.asarray(image, dtype=np.float32)
            low, high = np.percentile(pixels, [0.5, 99.5])
            scaled = np.clip((pixels - low) / max(high - low, 1e-6), 0, 1) * 255
            image = Image.fromarray(scaled.astype(np.uint8), mode="L")
        elif image.mode != "L":
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                image = image.convert("RGBA")
                background = Image.new("RGBA", image.size, (0, 0, 0, 255))
                image = Image.alpha_composite(background, image)
            image = image.convert("L")
        resized = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
        return np.asarray(resized, dtype=np.uint8)
    except ImageDecodeError:
        raise
    except Exception as exc:
        raise ImageDecodeError(f"cannot decode image ({type(exc).__name__}: {exc})") from exc


def load_pixels(source: str | Path | bytes, size: int, max_pixels: int) -> np.ndarray:
    """``size`` x ``size`` x 3 uint8 pixels of ``source``: the model's view of one image."""
    gray = to_gray_array(open_image(source, max_pixels), size)
    return np.repeat(gray[:, :, None], 3, axis=2)


def model_input(pixels):
    """ResNet-50's own caffe-style preprocessing of uint8-range RGB pixels (RGB->BGR, ImageNet
    mean subtracted), as float32: the backbone's ``preprocess_input``, not a 1/255 rescale."""
    from keras.applications.resnet50 import preprocess_input

    return preprocess_input(pixels.astype("float32") if hasattr(pixels, "astype") else pixels)
