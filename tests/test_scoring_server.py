"""The real `mlflow models serve` scoring server on 127.0.0.1 with the production alias."""

import base64

import pytest
import requests
from PIL import Image

from osteo_pipeline.steps.registry import promote, register_run
from osteo_pipeline.steps.split import split_dataset
from osteo_pipeline.steps.validate import validate_folder
from tests.corpus import jpeg_bytes, png_bytes, png_header_only
from tests.registry_helpers import log_candidate
from tests.servers import free_port, model_server

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_served_production_model_answers_images_and_rejects_garbage(
    synth_dir, train_settings, tmp_path
):
    root = synth_dir(per_class=12)
    split = split_dataset(validate_folder(root, train_settings), train_settings)
    version = register_run(log_candidate(split, train_settings, 1.0), train_settings)
    assert promote(train_settings).passed
    port = free_port()
    url = f"http://127.0.0.1:{port}/invocations"
    image = base64.b64encode((root / "normal" / "normal_000.jpg").read_bytes()).decode()
    with model_server(
        f"models:/{train_settings.registry.model_name}@production",
        port,
        train_settings.tracking.uri,
        log=tmp_path / "serve.log",
    ):
        ok = requests.post(
            url,
            json={"dataframe_split": {"columns": ["image"], "data": [[image], [image]]}},
            timeout=30,
        )
        assert ok.status_code == 200, ok.text
        rows = ok.json()["predictions"]
        assert (
            len(rows) == 2
            and rows[0]["label"] == "normal"
            and set(rows[0]) == {"label", "p_normal", "p_osteoporosis", "model_version"}
        )
        records = requests.post(url, json={"dataframe_records": [{"image": image}]}, timeout=30)
        assert records.status_code == 200 and records.json()["predictions"][0]["label"] == "normal"

        bad = {
            "not base64": {"dataframe_split": {"columns": ["image"], "data": [["%%%"]]}},
            "not an image": {
                "dataframe_split": {
                    "columns": ["image"],
                    "data": [[base64.b64encode(b"hello").decode()]],
                }
            },
            "truncated": {
                "dataframe_split": {
                    "columns": ["image"],
                    "data": [[base64.b64encode(jpeg_bytes(256)[:2000]).decode()]],
                }
            },
            "empty string": {"dataframe_split": {"columns": ["image"], "data": [[""]]}},
            "wrong column": {"dataframe_split": {"columns": ["img"], "data": [[image]]}},
            "50 megapixels": {
                "dataframe_split": {
                    "columns": ["image"],
                    "data": [[base64.b64encode(png_header_only(10_000, 5_000)).decode()]],
                }
            },
            "empty batch": {"dataframe_split": {"columns": ["image"], "data": []}},
        }
        for kind, payload in bad.items():
            response = requests.post(url, json=payload, timeout=30)
            assert 400 <= response.status_code < 500, (
                kind,
                response.status_code,
                response.text[:300],
            )
            assert response.json()["message"], kind
        second_row = requests.post(
            url,
            json={"dataframe_split": {"columns": ["image"], "data": [[image], ["%%%"]]}},
            timeout=30,
        )
        assert second_row.status_code == 400 and "row 1" in second_row.json()["message"]
        tiny = base64.b64encode(png_bytes(Image.new("L", (1, 1)))).decode()
        payload = {"dataframe_split": {"columns": ["image"], "data": [[tiny]]}}
        refused = requests.post(url, json=payload, timeout=30)  # validation's minimum is 32 px here
        assert refused.status_code == 400
        assert "row 0: 1x1 px is below the 32x32 minimum" in refused.json()["message"]
        assert (
            requests.post(
                url, data="garbage", headers={"Content-Type": "application/json"}, timeout=30
            ).status_code
            == 400
        )
        again = requests.post(
            url, json={"dataframe_split": {"columns": ["image"], "data": [[image]]}}, timeout=30
        )
        assert again.status_code == 200  # still serving after every bad request
    assert version == "1"
