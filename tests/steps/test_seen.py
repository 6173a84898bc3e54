"""Evaluation and the gate leave out copies of the images a model trained on: identical files and
derived copies (mirrored, cropped, resized...), and say how many and why."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from osteo_pipeline.core.synth_copies import derived_copy
from osteo_pipeline.io.copies import Content, CopyCheckError
from osteo_pipeline.io.images import sha256_file
from osteo_pipeline.steps import gate_data
from osteo_pipeline.steps.seen import seen_images
from osteo_pipeline.steps.synth import write_synthetic_dataset


def _contents(root: Path) -> list[Content]:
    return [
        Content(sha256_file(p), p, None)
        for p in sorted(root.rglob("*.*"))
        if not p.name.startswith(".")
    ]


@pytest.fixture
def trained_and_new(tmp_path: Path) -> tuple[list[Content], list[Content], dict[str, str]]:
    """Training images, and new images of which three are copies of training images."""
    train = tmp_path / "train"
    write_synthetic_dataset(train, ["normal", "osteoporosis"], 3, 320, seed=1)
    new = tmp_path / "new"
    write_synthetic_dataset(new, ["normal", "osteoporosis"], 2, 320, seed=2)
    source = np.asarray(Image.open(train / "normal" / "normal_001.png").convert("L"))
    rng = np.random.default_rng(0)
    for kind in ("mirrored", "knee-crop-224"):
        derived_copy(source, kind, rng).image.save(new / "normal" / f"{kind}.jpg", quality=70)
    shutil.copy(train / "osteoporosis" / "osteoporosis_000.jpg", new / "osteoporosis" / "same.jpg")
    expected = {"mirrored.jpg": "mirrored", "knee-crop-224.jpg": "crop", "same.jpg": "identical"}
    return _contents(train), _contents(new), expected


def test_identical_and_derived_copies_of_training_images_are_left_out_with_their_kind(
    trained_and_new, tiny_settings
):
    seen, new, expected = trained_and_new
    reasons = seen_images(new, seen, tiny_settings)
    named = {c.path.name: reasons[c.sha256] for c in new if c.sha256 in reasons}
    assert set(named) == set(expected)
    assert all(expected[name] in why for name, why in named.items()), named


def test_without_derived_copies_only_identical_files_are_left_out(trained_and_new, tiny_settings):
    seen, new, _ = trained_and_new
    tiny_settings.validation.derived_copies = False
    assert set(seen_images(new, seen, tiny_settings).values()) == {"identical"}


def test_a_training_image_that_cannot_be_read_stops_the_check(trained_and_new, tiny_settings):
    seen, new, _ = trained_and_new
    gone = Content(
        "0" * 64, seen[0].path.with_name("deleted.png"), None
    )  # neither cached nor on disk
    with pytest.raises(CopyCheckError, match="cannot be read"):
        seen_images(new, [*seen, gone], tiny_settings)


def test_the_gate_leaves_out_copies_of_what_either_model_trained_on(
    trained_and_new, tiny_settings, monkeypatch
):
    seen, new, expected = trained_and_new
    monkeypatch.setattr(
        gate_data, "training_images", lambda uri: seen if uri == "models:/production" else []
    )
    data = gate_data.EvaluationSet(
        np.arange(len(new)) % 2,
        [c.path.name for c in new],
        ["normal", "osteoporosis"],
        1,
        "hash",
        new,
        [f"{c.path.parent.name}/{c.path.name}" for c in new],
    )
    kept = gate_data.without_seen(data, ["models:/candidate", "models:/production"], tiny_settings)
    assert sorted(Path(p).name for p in kept.left_out) == sorted(expected)
    assert len(kept.y_true) == len(kept.images) == len(kept.contents) == len(new) - len(expected)
    assert not {c.path.name for c in kept.contents} & set(expected)
