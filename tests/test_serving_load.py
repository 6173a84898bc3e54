"""A short load test of the real scoring server (the 30 s version is bench/serving_load.py):
8 concurrent clients mixing valid images with 15 kinds of bad payloads."""

import pytest

from osteo_pipeline.steps.registry import promote, register_run
from osteo_pipeline.steps.split import split_dataset
from osteo_pipeline.steps.validate import validate_folder
from tests.load import BAD_PAYLOADS, run_load, valid_payloads
from tests.registry_helpers import log_candidate
from tests.servers import free_port, model_server

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_under_concurrent_mixed_load_no_5xx_and_every_bad_payload_is_a_4xx_with_a_reason(
    synth_dir, train_settings, tmp_path
):
    root = synth_dir(per_class=12)
    split = split_dataset(validate_folder(root, train_settings), train_settings)
    register_run(log_candidate(split, train_settings, 1.0), train_settings)
    assert promote(train_settings).passed
    images = [p.read_bytes() for p in sorted((root / "normal").iterdir())[:6]]
    port = free_port()
    with model_server(
        f"models:/{train_settings.registry.model_name}@production",
        port,
        train_settings.tracking.uri,
        log=tmp_path / "serve.log",
        workers=2,
    ):
        report = run_load(
            f"http://127.0.0.1:{port}/invocations",
            valid_payloads(images),
            clients=8,
            seconds=10,
            max_requests=2000,
        )
    summary = report.summary()
    assert report.server_errors == [], report.server_errors[:5]
    assert report.valid_failures == [], report.valid_failures[:5]
    assert report.bad_not_rejected == [], report.bad_not_rejected[:5]
    assert report.bad_kinds_seen == set(BAD_PAYLOADS) and len(BAD_PAYLOADS) >= 10
    assert summary["valid_answered"] > 10, summary
