"""The copy finder's cache only saves time: a torn file, an unusable folder or another threshold
never changes or breaks what is found."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from osteo_pipeline.core import copies
from osteo_pipeline.core.synth_copies import derived_copy
from osteo_pipeline.io.copies import Content, CopyFinder
from osteo_pipeline.io.images import sha256_file
from osteo_pipeline.steps.synth import write_synthetic_dataset


@pytest.fixture(scope="module")
def contents(tmp_path_factory: pytest.TempPathFactory) -> list[Content]:
    """Six distinct radiographs and a mirrored copy of the first."""
    root = tmp_path_factory.mktemp("finder")
    write_synthetic_dataset(root, ["normal"], 6, 300, seed=4)
    files = sorted((root / "normal").iterdir())
    derived = derived_copy(
        np.asarray(Image.open(files[0]).convert("L")), "mirrored", np.random.default_rng(0)
    )
    derived.image.save(root / "normal" / "mirror.jpg", quality=80)
    files.append(root / "normal" / "mirror.jpg")
    return [Content(sha256_file(f), f, Image.open(f).size) for f in files]


def _pairs(found) -> set[frozenset[str]]:
    return {frozenset((link["source"], link["copy"])) for link in found.links}


def test_a_torn_features_file_is_computed_again(contents, tmp_path):
    expected = _pairs(CopyFinder(10**8, 0.5, tmp_path).find(contents))
    stored = next((tmp_path / copies.VERSION).rglob("*.npz"))
    stored.write_bytes(b"")  # torn: numpy raises EOFError on it
    (tmp_path / copies.VERSION / "matched-0.5.json").write_text('{"not": "a list"}')
    again = CopyFinder(10**8, 0.5, tmp_path).find(contents)
    assert _pairs(again) == expected == {frozenset((contents[0].sha256, contents[-1].sha256))}
    assert again.matched == len(contents)


class _Caught(logging.Handler):
    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def warnings_of(name: str) -> Iterator[list[logging.LogRecord]]:
    """The WARNING records of logger ``name``, caught on the logger itself: whatever an earlier
    test did to logging (levels, propagation, handlers), they are all there, each once."""
    handler = _Caught(logging.WARNING)
    logger = logging.getLogger(name)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_an_unusable_cache_folder_means_memory_only_with_one_warning(contents, tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    with warnings_of("osteo_pipeline.io.copies") as records:
        found = CopyFinder(10**8, 0.5, blocked).find(contents)
    assert _pairs(found) == {frozenset((contents[0].sha256, contents[-1].sha256))}
    assert sum("working in memory" in r.getMessage() for r in records) == 1


def test_matches_are_reused_only_for_the_same_threshold_and_a_set_that_only_grew(
    contents, tmp_path
):
    finder = lambda threshold=0.5: CopyFinder(10**8, threshold, tmp_path)  # noqa: E731
    assert finder().find(contents[:-2]).matched == len(contents) - 2
    assert finder().find(contents).matched == 2  # only the new files
    assert finder(0.6).find(contents).matched == len(contents)  # another threshold: matched again
    assert (
        finder().find(contents[1:]).matched == len(contents) - 1
    )  # files left: never a stale reuse


def test_checking_against_training_images_needs_their_files(contents, tmp_path):
    from osteo_pipeline.io.copies import CopyCheckError

    finder = CopyFinder(10**8, 0.5, tmp_path)
    found = finder.derived_from([contents[-1]], contents[:-1])
    assert found[contents[-1].sha256]["original"] == contents[0].sha256
    assert "mirrored" in found[contents[-1].sha256]["kind"].split("+")
    gone = Content("f" * 64, Path(tmp_path / "gone.png"), None)
    with pytest.raises(CopyCheckError, match="cannot be read"):
        CopyFinder(10**8, 0.5, tmp_path).derived_from([contents[-1]], [*contents[:-1], gone])
