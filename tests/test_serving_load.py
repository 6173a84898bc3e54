"""A short load test of the real scoring server (the 30 s version is bench/serving_load.py):
8 concurrent clients mixing valid images with 15 kinds of bad payloads."""

import pytest

from tests.load import BAD_PAYLOADS, run_load, valid_payloads

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_under_concurrent_mixed_load_no_5xx_and_every_bad_payload_is_refused_with_its_reason(
    served_production,
):
    images = [p.read_bytes() for p in sorted((served_production.data / "normal").iterdir())[:6]]
    report = run_load(
        served_production.url, valid_payloads(images), clients=8, seconds=10, max_requests=2000
    )
    summary = report.summary()
    assert report.server_errors == [], report.server_errors[:5]
    assert report.valid_failures == [], report.valid_failures[:5]
    assert report.bad_not_rejected == [], report.bad_not_rejected[:5]
    assert report.bad_kinds_seen == set(BAD_PAYLOADS) and len(BAD_PAYLOADS) >= 10
    assert summary["valid_answered"] > 10, summary
