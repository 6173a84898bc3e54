"""The pyfunc's payload handling: every kind of bad row is named, never a crash."""

import base64
import io
import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from PIL import Image

from osteo_pipeline.core.image_bounds import ImageBounds
from osteo_pipeline.io.manifest import display_path
from osteo_pipeline.serving import decode_rows, encode_image, log_pyfunc
from osteo_pipeline.steps.validate import validate_folder
from tests.corpus import KINDS, dicom_bytes, jpeg_bytes, png_bytes, png_header_only

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
    with pytest.raises(
        MlflowException, match=r"column named 'image'.*got columns \['img'\]"
    ) as info:
        decode_rows(pd.DataFrame({"img": [GOOD]}), 32, 10**6)
    assert info.value.get_http_status_code() == 400
    with pytest.raises(MlflowException, match="empty batch: send at least one row") as info:
        decode_rows(pd.DataFrame({"image": []}), 32, 10**6)
    assert info.value.get_http_status_code() == 400


def test_dicom_is_served_like_any_image():
    ramp = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (64, 1))
    pixels = decode_rows(
        pd.DataFrame(
            {"image": [_b64(dicom_bytes(ramp)), _b64(dicom_bytes(ramp, photometric="MONOCHROME1"))]}
        ),
        16,
        10**6,
    )
    assert pixels[0, :, 0, 0].mean() < 20 and pixels[0, :, -1, 0].mean() > 235
    np.testing.assert_array_equal(pixels[1], 255 - pixels[0])


def test_rgba_and_palette_images_are_served_not_rejected():
    rgba = io.BytesIO()
    Image.new("RGBA", (30, 30), (10, 20, 30, 255)).save(rgba, format="PNG")
    palette = io.BytesIO()
    Image.new("P", (30, 30), 3).save(palette, format="PNG")
    pixels = decode_rows(
        pd.DataFrame({"image": [_b64(rgba.getvalue()), _b64(palette.getvalue())]}), 16, 10**6
    )
    assert pixels.shape == (2, 16, 16, 3)


BOUNDS = ImageBounds(min_width=224, min_height=224, allowed_modes=("L", "RGB"))


@pytest.mark.parametrize("roi", ["image", "knees"])
def test_rows_validation_would_refuse_for_size_or_mode_are_refused_when_bounds_are_given(roi):
    rgba = png_bytes(Image.new("RGBA", (300, 300), (10, 20, 30, 255)))
    frame = pd.DataFrame(
        {
            "image": [
                _b64(png_bytes(Image.new("L", (300, 300)))),
                _b64(png_bytes(Image.new("L", (1, 1)))),
                _b64(rgba),
            ]
        }
    )
    with pytest.raises(MlflowException) as info:
        decode_rows(frame, 32, 10**6, roi, BOUNDS)
    message = str(info.value)
    assert "2 of 3 rows" in message and "row 0" not in message
    assert "row 1: 1x1 px is below the 224x224 minimum (validation.min_width/min_height)" in message
    assert "row 2: mode RGBA is not in validation.allowed_modes [L, RGB]" in message
    assert info.value.get_http_status_code() == 400


def test_a_small_dicom_is_refused_by_its_header():
    small = _b64(dicom_bytes(np.zeros((100, 300), np.uint16)))
    with pytest.raises(
        MlflowException, match=r"row 0: 300x100 px is below the 224x224 minimum"
    ) as info:
        decode_rows(pd.DataFrame({"image": [small]}), 32, 10**6, "image", BOUNDS)
    assert info.value.get_http_status_code() == 400


def test_the_door_refuses_exactly_the_files_validation_refuses(synth_dir, tiny_settings):
    """Every kind of file in the corpus: the model's door (with the bounds recorded from the
    settings) and validation (with the same settings) refuse the same ones."""
    root = synth_dir()
    kinds = [
        k for k in KINDS if not k.folder_level and k.name != "pipe.png"
    ]  # a FIFO cannot be sent
    for kind in kinds:
        kind.write(root / "normal" / kind.name)
    summary = validate_folder(root, tiny_settings).summary
    refused = {item["path"] for item in summary["unreadable"]} | {
        row["id"] for failure in summary["failed_expectations"] for row in failure["unexpected"]
    }
    by_validation = {k.name for k in kinds if display_path(f"normal/{k.name}") in refused}
    by_door = set()
    for kind in kinds:
        try:
            decode_rows(
                pd.DataFrame({"image": [_b64((root / "normal" / kind.name).read_bytes())]}),
                32,
                tiny_settings.validation.max_pixels,
                "image",
                tiny_settings.validation.image_bounds,
            )
        except MlflowException as refusal:  # a client's error, naming the row and its reason
            assert refusal.get_http_status_code() == 400, kind.name
            assert refusal.message.startswith("1 of 1 rows are not usable images: row 0: "), (
                kind.name,
                refusal.message,
            )
            by_door.add(kind.name)
    assert {"tiny.png", "alpha.png", "cmyk.jpg", "gray-alpha.png"} <= by_validation
    assert by_door == by_validation


@pytest.fixture
def logged_model(train_settings):
    """A tiny model logged as ``osteo train`` logs it, with the validation bounds of its settings
    (64 px minimum here)."""
    from osteo_pipeline.io import tracking
    from tests.registry_helpers import brightness_model

    settings = train_settings.model_copy(
        update={
            "validation": train_settings.validation.model_copy(
                update={"min_width": 64, "min_height": 64}
            )
        }
    )
    tracking.configure(settings)
    with mlflow.start_run() as run:
        info = log_pyfunc(
            brightness_model(32, 1.0),
            list(settings.data.classes),
            32,
            settings.validation.max_pixels,
            run.info.run_id,
            bounds=settings.validation.image_bounds,
        )
    return info.model_uri


def test_a_logged_model_refuses_what_its_validation_refused_and_older_models_load_without_bounds(
    logged_model, tmp_path
):
    small, fine = _b64(jpeg_bytes(40)), _b64(jpeg_bytes(64))
    model = mlflow.pyfunc.load_model(logged_model)
    assert model.predict(pd.DataFrame({"image": [fine]}))["label"].tolist() != []
    with pytest.raises(MlflowException, match=r"row 0: 40x40 px is below the 64x64 minimum"):
        model.predict(pd.DataFrame({"image": [small]}))
    local = Path(
        mlflow.artifacts.download_artifacts(logged_model, dst_path=str(tmp_path / "older"))
    )
    meta = local / "artifacts" / "meta.json"
    older = {
        k: v for k, v in json.loads(meta.read_text()).items() if k != "image_bounds"
    }  # as logged before bounds were recorded
    meta.write_text(json.dumps(older))
    assert len(mlflow.pyfunc.load_model(str(local)).predict(pd.DataFrame({"image": [small]}))) == 1


def test_predict_refuses_an_image_below_the_minimum_naming_the_file(
    logged_model, train_settings, tmp_path
):
    from typer.testing import CliRunner

    from osteo_pipeline.cli import app

    tiny = tmp_path / "tiny.png"
    tiny.write_bytes(png_bytes(Image.new("L", (1, 1))))
    result = CliRunner().invoke(
        app,
        [
            "predict",
            logged_model,
            str(tiny),
            "--set",
            f"tracking.uri={train_settings.tracking.uri}",
        ],
    )
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{tiny}: 1x1 px is below the 64x64 minimum" in errors[0], (
        result.output
    )


def test_explain_refuses_what_the_server_refuses(logged_model, train_settings, tmp_path):
    from osteo_pipeline.core.preprocess import ImageDecodeError
    from osteo_pipeline.steps.explain import explain_image

    tiny = tmp_path / "tiny.png"
    tiny.write_bytes(png_bytes(Image.new("L", (1, 1))))
    with pytest.raises(ImageDecodeError, match=r"1x1 px is below the 64x64 minimum"):
        explain_image(logged_model, tiny, tmp_path / "out.png", None, train_settings)
