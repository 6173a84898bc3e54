import io

import numpy as np
import pytest
from keras.applications.resnet50 import preprocess_input
from PIL import Image

from osteo_pipeline.core.preprocess import (
    ImageDecodeError,
    gray_model_input,
    load_pixels,
    model_input,
)
from tests.corpus import dicom_bytes, png_header_only


def _png(image: Image.Image, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **kw)
    return buffer.getvalue()


def test_model_input_is_the_backbones_own_preprocessing():
    pixels = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3)).astype(np.uint8)
    expected = preprocess_input(pixels.astype("float32"))
    assert np.allclose(model_input(pixels), expected)
    assert not np.allclose(model_input(pixels), pixels / 255.0)


def test_gray_and_rgb_give_three_equal_channels_of_the_requested_size():
    gray = Image.fromarray(np.tile(np.arange(100, dtype=np.uint8), (80, 1)), "L")
    for image in (gray, gray.convert("RGB")):
        pixels = load_pixels(_png(image), 32, 10**6)
        assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
        assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()


def test_sixteen_bit_gray_uses_its_full_range():
    ramp = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (64, 1))  # 12-bit detector data
    pixels = load_pixels(_png(Image.fromarray(ramp)), 64, 10**6)
    assert pixels[..., 0].min() <= 5 and pixels[..., 0].max() >= 250


def test_rgba_is_composited_on_black():
    rgba = Image.new("RGBA", (40, 40), (255, 255, 255, 0))
    assert load_pixels(_png(rgba), 16, 10**6).max() == 0


def test_exif_rotation_is_applied():
    tall = Image.fromarray(
        np.vstack([np.full((30, 10), 255, np.uint8), np.zeros((10, 10), np.uint8)]), "L"
    )
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buffer = io.BytesIO()
    tall.save(buffer, format="JPEG", exif=exif, quality=95)
    pixels = load_pixels(buffer.getvalue(), 40, 10**6)[..., 0].astype(int)
    # Displayed upright, the dark bottom band of the stored image is now on the left.
    assert pixels[:, :8].mean() < 60 and pixels[:, 14:].mean() > 200


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "not an image"),
        (b"plain text", "not an image"),
        (png_header_only(50_000, 50_000), "limit"),
    ],
)
def test_bad_inputs_raise_a_named_reason(payload, reason):
    with pytest.raises(ImageDecodeError, match=reason):
        load_pixels(payload, 32, 40_000_000)


RAMP = np.tile(
    np.linspace(0, 1000, 101).astype(np.uint16), (20, 1)
)  # stored values 0..1000 by column


def _gray(raw: bytes) -> np.ndarray:
    return load_pixels(raw, 101, 10**6)[..., 0].astype(int)


def test_dicom_monochrome1_is_inverted():
    plain, inverted = _gray(dicom_bytes(RAMP)), _gray(dicom_bytes(RAMP, photometric="MONOCHROME1"))
    assert plain[:, 0].mean() < 5 and plain[:, -1].mean() > 250
    assert np.abs(inverted - (255 - plain)).max() <= 1


def test_dicom_rescale_then_window():
    # values = 2 * stored - 1000 (-1000..1000); window 0 +- 500: -500 and below black, 500 and
    # above white
    gray = _gray(dicom_bytes(RAMP, slope=2.0, intercept=-1000.0, window=(0.0, 1000.0)))
    assert gray[:, :25].max() <= 1 and gray[:, 76:].min() >= 254
    assert abs(gray[:, 50].mean() - 127.5) < 4  # value 0 sits mid-window


def test_dicom_bomb_guard_reads_only_the_header():
    with pytest.raises(ImageDecodeError, match="over the 100 px limit"):
        load_pixels(dicom_bytes(RAMP), 32, 100)


def test_dicom_colour_and_multi_frame_are_refused_with_reasons():
    import pydicom

    for field, value, reason in (
        ("PhotometricInterpretation", "RGB", "not a grayscale"),
        ("NumberOfFrames", 2, "multi-frame"),
    ):
        ds = pydicom.dcmread(io.BytesIO(dicom_bytes(RAMP)))
        setattr(ds, field, value)
        buffer = io.BytesIO()
        ds.save_as(buffer)
        with pytest.raises(ImageDecodeError, match=reason):
            load_pixels(buffer.getvalue(), 32, 10**6)


def test_gray_model_input_equals_the_backbone_preprocessing_of_the_replicated_image():
    gray = np.random.default_rng(0).integers(0, 256, (2, 5, 5, 1)).astype(np.float32)
    np.testing.assert_array_equal(gray_model_input(gray), model_input(np.repeat(gray, 3, axis=3)))
