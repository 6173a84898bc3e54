"""The pyfunc's payload handling: every kind of bad row is named, never a crash."""

import base64
import io

import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from PIL import Image

from osteo_pipeline.serving import decode_rows, encode_image
from tests.corpus import dicom_bytes, jpeg_bytes, png_header_only

GOOD = encode_image(np.zeros((40, 40, 3), np.uint8))


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def test_good_rows_decode_to_model_pixels():
    pixels = decode_rows(pd.DataFrame({"image": [GOOD, _b64(jpeg_bytes(50))]}), 32, 10**6)
    assert pixels.shape == (2, 32, 32, 3) and pixels.dtype == np.uint8


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("not base64 at all!!", "not valid base64"),
        (_b64(b"hello, not an image"), "not an image"),
        (_b64(jpeg_bytes(256)[:2000]), "truncated"),
        ("", "empty"),
        (None, "empty"),
        (_b64(png_header_only(8000, 6250)), "limit"),
        (12345, "expected a base64 string, got int"),
        ([1, 2], "expected a base64 string, got list"),
        ({"a": 1}, "expected a base64 string, got dict"),
    ],
)
def test_bad_rows_are_named(value, reason):
    frame = pd.DataFrame({"image": [GOOD, value]})
    with pytest.raises(MlflowException, match=reason) as info:
        decode_rows(frame, 32, 40_000_000)
    assert "row 1" in str(info.value) and "row 0" not in str(info.value)
    assert info.value.get_http_status_code() == 400


def test_wrong_column_and_empty_batch():
    with pytest.raises(MlflowException, match="column named 'image'"):
        decode_rows(pd.DataFrame({"img": [GOOD]}), 32, 10**6)
    with pytest.raises(MlflowException, match="empty batch"):
        decode_rows(pd.DataFrame({"image": []}), 32, 10**6)


def test_dicom_is_served_like_any_image():
    ramp = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (64, 1))
    pixels = decode_rows(pd.DataFrame({"image": [_b64(dicom_bytes(ramp)), _b64(dicom_bytes(ramp, photometric="MONOCHROME1"))]}), 16, 10**6)
    assert pixels[0, :, 0, 0].mean() < 20 and pixels[0, :, -1, 0].mean() > 235
    np.testing.assert_array_equal(pixels[1], 255 - pixels[0])


def test_rgba_and_palette_images_are_served_not_rejected():
    rgba = io.BytesIO()
    Image.new("RGBA", (30, 30), (10, 20, 30, 255)).save(rgba, format="PNG")
    palette = io.BytesIO()
    Image.new("P", (30, 30), 3).save(palette, format="PNG")
    pixels = decode_rows(pd.DataFrame({"image": [_b64(rgba.getvalue()), _b64(palette.getvalue())]}), 16, 10**6)
    assert pixels.shape == (2, 16, 16, 3)
