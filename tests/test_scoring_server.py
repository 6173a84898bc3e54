"""The real `mlflow models serve` scoring server on 127.0.0.1 with the production alias."""

import base64
import re

import pytest
import requests
from PIL import Image

from tests.corpus import jpeg_bytes, png_bytes, png_header_only

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _rows(*values: object) -> dict:
    return {"dataframe_split": {"columns": ["image"], "data": [[v] for v in values]}}


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


#: kind -> (payload, what the refusal's message must say); every one is refused with HTTP 400
BAD = {
    "not base64": (_rows("%%%"), r"1 of 1 rows are not usable images: row 0: not valid base64"),
    "not an image": (_rows(_b64(b"hello")), r"row 0: not an image"),
    "truncated": (
        _rows(_b64(jpeg_bytes(256)[:2000])),
        r"row 0: cannot decode image \(OSError: image file is truncated",
    ),
    "empty string": (_rows(""), r"row 0: empty or missing image string"),
    "wrong column": (
        {"dataframe_split": {"columns": ["img"], "data": [["x"]]}},
        r"Model is missing inputs \['image'\]",
    ),
    "50 megapixels": (
        _rows(_b64(png_header_only(10_000, 5_000))),
        r"row 0: image is 10000x5000 = 50,000,000 px, over the 40,000,000 px limit",
    ),
    "empty batch": (_rows(), r"empty batch: send at least one row"),
}


def test_served_production_model_answers_images_and_rejects_garbage(served_production):
    url, root = served_production.url, served_production.data
    image = _b64((root / "normal" / "normal_000.jpg").read_bytes())
    ok = requests.post(url, json=_rows(image, image), timeout=30)
    assert ok.status_code == 200, ok.text
    rows = ok.json()["predictions"]
    assert (
        len(rows) == 2
        and rows[0]["label"] == "normal"
        and set(rows[0]) == {"label", "p_normal", "p_osteoporosis", "model_version"}
    )
    records = requests.post(url, json={"dataframe_records": [{"image": image}]}, timeout=30)
    assert records.status_code == 200 and records.json()["predictions"][0]["label"] == "normal"

    for kind, (payload, reason) in BAD.items():
        response = requests.post(url, json=payload, timeout=30)
        assert response.status_code == 400, (kind, response.status_code, response.text[:300])
        assert re.search(reason, response.json()["message"]), (kind, response.text[:500])
    second_row = requests.post(url, json=_rows(image, "%%%"), timeout=30)
    assert second_row.status_code == 400
    assert (
        "1 of 2 rows are not usable images: row 1: not valid base64"
        in (second_row.json()["message"])
    )
    tiny = _b64(png_bytes(Image.new("L", (1, 1))))
    refused = requests.post(url, json=_rows(tiny), timeout=30)  # validation's minimum: 32 px here
    assert refused.status_code == 400
    assert "row 0: 1x1 px is below the 32x32 minimum" in refused.json()["message"]
    garbage = requests.post(
        url, data="garbage", headers={"Content-Type": "application/json"}, timeout=30
    )
    assert garbage.status_code == 400
    assert "Ensure that input is a valid JSON formatted string" in garbage.json()["message"]
    again = requests.post(url, json=_rows(image), timeout=30)
    assert again.status_code == 200  # still serving after every bad request
    assert served_production.version == "1"
