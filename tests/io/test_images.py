import re

import pytest

from osteo_pipeline.io.images import inspect_image, sha256_file
from tests.corpus import BAD_FILES, _gradient, jpeg_bytes


def test_good_image_facts(tmp_path):
    path = tmp_path / "a.png"
    _gradient(64, "RGB").save(path)
    facts = inspect_image(path, max_pixels=10_000)
    assert facts.error is None
    assert (facts.format, facts.width, facts.height, facts.mode, facts.channels) == (
        "PNG",
        64,
        64,
        "RGB",
        3,
    )
    assert facts.bytes == path.stat().st_size
    assert facts.sha256 == sha256_file(path)


def test_jpeg_is_checked_at_reduced_scale_but_reports_native_size(tmp_path):
    path = tmp_path / "a.jpg"
    path.write_bytes(jpeg_bytes(512))
    facts = inspect_image(path, max_pixels=10**7)
    assert facts.error is None and (facts.width, facts.height) == (512, 512)


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_unreadable_files_get_a_reason_not_an_exception(tmp_path, kind):
    path = tmp_path / kind
    BAD_FILES[kind].write(path)
    facts = inspect_image(path, max_pixels=40_000_000)
    assert facts.error is not None and re.search(BAD_FILES[kind].reason, facts.error), facts.error


def test_pixel_limit_comes_from_the_caller(tmp_path):
    path = tmp_path / "a.png"
    _gradient(64).save(path)
    assert "max_pixels=1,000" in inspect_image(path, max_pixels=1000).error
