"""Derived-copy detection on a generated corpus: distinct synthetic radiographs (two-knee films of
about 1,500 px and single knees) with planted copies of every kind, some filed under another
class. Planted links must be found (recall >= 0.99), no two distinct radiographs linked
(precision 1.0), and every cross-label group reported as a label conflict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from osteo_pipeline.core import copies
from osteo_pipeline.core.preprocess import load_gray
from osteo_pipeline.core.synth import COPY_KINDS
from osteo_pipeline.steps.synth import PLANTED, write_synthetic_dataset
from osteo_pipeline.steps.validate import validate_folder


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    base = tmp_path_factory.mktemp("copies")
    films = base / "films"  # 8 two-knee films, each knee 700 px wide: about 1,500 px
    write_synthetic_dataset(
        films, ["normal", "osteoporosis"], 4, 700, seed=7, bilateral=True, copies=0.5
    )
    knees = base / "knees"  # 40 single knees
    write_synthetic_dataset(knees, ["normal", "osteoporosis"], 20, 300, seed=8, copies=0.2)
    return [films, knees]


def _check(root: Path, settings) -> tuple[int, int]:
    planted = json.loads((root / PLANTED).read_text())
    result = validate_folder(root, settings)
    group_of = {path: i for i, g in enumerate(result.copy_groups) for path in g["paths"]}
    found = sum(group_of.get(p["source"], -1) == group_of.get(p["copy"], -2) for p in planted)
    # precision: each group holds one source radiograph and its planted copies, nothing else
    source_of = {p["copy"]: p["source"] for p in planted} | {
        p["source"]: p["source"] for p in planted
    }
    for group in result.copy_groups:
        assert len({source_of.get(path, path) for path in group["paths"]}) == 1, group["links"]
    # every group whose files carry two labels is a reported label conflict, with its link kinds
    mixed = [g["paths"] for g in result.copy_groups if len(g["labels"]) > 1]
    assert mixed and sorted(c["paths"] for c in result.summary["label_conflicts"]) == sorted(mixed)
    assert not result.passed and "label_conflicts" in {
        f["check"] for f in result.summary["failed_expectations"]
    }
    return found, len(planted)


def test_planted_copies_are_found_and_distinct_radiographs_never_linked(corpora, tiny_settings):
    found, planted = map(sum, zip(*(_check(root, tiny_settings) for root in corpora)))
    assert planted >= 9 * len(COPY_KINDS)
    assert found / planted >= 0.99, f"{found} of {planted} planted copies found"


def test_the_approximate_index_finds_what_the_exact_one_finds(corpora, tiny_settings, monkeypatch):
    monkeypatch.setattr(copies, "EXACT_UP_TO", 1000)  # force faiss' inverted-file index
    tiny_settings.validation.copies_cache_dir = "none"
    found, planted = _check(corpora[1], tiny_settings)
    assert found / planted >= 0.99


def test_each_link_says_how_the_copy_was_made(corpora):
    """Matched as a pair, each planted copy is linked to its source with the planted orientation,
    and a crop is named a crop of its source (the link reads from source to copy)."""
    root = corpora[0]
    for planted in json.loads((root / PLANTED).read_text()):
        grays = [
            load_gray(root / planted[end], 2 * copies.WORK_SIDE, 10**8)
            for end in ("source", "copy")
        ]
        pictures = [copies.working_picture(g) for g in grays]
        links = copies.find_links(
            [copies.features(g) for g in grays],
            pictures.__getitem__,
            [g.shape[::-1] for g in grays],
        )
        assert len(links) == 1, planted
        link, kind = links[0], planted["kind"]
        orientation = COPY_KINDS[kind]
        if kind.startswith("rotated"):  # the planted turn, or its inverse when read copy->source
            angle = int(kind.split("-")[1])
            turn = angle if (link.source, link.copy) == (0, 1) else (360 - angle) % 360
            assert link.kind.split("+")[0] == f"rotated-{turn}", (planted, link)
        else:
            assert (
                (link.kind.split("+")[0] == orientation)
                if orientation
                else not link.kind.startswith(("mirrored", "rotated"))
            ), (planted, link)
        if "crop" in kind:
            assert (link.source, link.copy, link.kind.split("+")[-1]) == (0, 1, "crop"), (
                planted,
                link,
            )
        elif kind == "padded":
            assert link.kind.endswith("padded"), (planted, link)


def test_padding_is_trimmed_and_anatomy_is_not():
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 255, (50, 40)).astype(np.uint8)
    padded = np.pad(picture, ((7, 3), (5, 9)), constant_values=0)
    assert np.array_equal(copies.trim_borders(padded), picture)
    # every row the same ramp: its dark first columns are anatomy, not a border to trim
    smooth = np.tile(np.linspace(0, 255, 40), (50, 1)).astype(np.uint8)
    assert np.array_equal(copies.trim_borders(smooth), smooth)


def test_small_pictures_are_only_matched_when_identical():
    tiny = copies.features(np.random.default_rng(0).integers(0, 255, (150, 150)).astype(np.uint8))
    assert len(tiny.descriptors) == 0 and len(tiny.mirrored_descriptors) == 0


def test_groups_are_connected_components():
    groups = copies.connected_groups(6, [(0, 1), (1, 2), (4, 5)])
    assert groups[0] == groups[1] == groups[2] and groups[4] == groups[5]
    assert len({groups[0], groups[3], groups[4]}) == 3
