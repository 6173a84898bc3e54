"""Every expectation with a passing and a failing case, on generated folders."""

import re
import shutil
from pathlib import Path

import pytest

from osteo_pipeline.core.preprocess import load_pixels
from osteo_pipeline.io.manifest import display_path
from osteo_pipeline.steps.validate import validate_folder
from tests.corpus import KINDS, _gradient


def _checks(result, severity="critical"):
    key = "failed_expectations" if severity == "critical" else "warnings"
    return {f["check"] for f in result.summary[key]}


def test_clean_synthetic_folder_passes(synth_dir, tiny_settings):
    result = validate_folder(synth_dir(), tiny_settings)
    assert result.passed, result.summary["failed_expectations"]
    assert result.summary["counts"] == {"normal": 6, "osteoporosis": 6}
    assert result.summary["unreadable"] == [] and result.summary["label_conflicts"] == []


def _reasons(result, path):
    """Every reason validation gives for ``path``: unreadable, or a failed per-file check."""
    shown = display_path(path)
    reasons = [u["reason"] for u in result.summary["unreadable"] if u["path"] == shown]
    for failure in result.summary["failed_expectations"]:
        reasons += [
            f"{failure['check']}: {u['value']}"
            for u in failure.get("unexpected", [])
            if u["id"] == shown
        ]
    return reasons


@pytest.mark.parametrize(
    "kind",
    KINDS,
    ids=[k.name.encode("utf-8", "surrogateescape").decode("ascii", "replace") for k in KINDS],
)
def test_corpus_each_kind_is_rejected_with_its_reason_or_accepted_and_decoded(
    synth_dir, tiny_settings, kind
):
    root = synth_dir()
    path = root / "normal" / kind.name
    kind.write(path)
    result = validate_folder(root, tiny_settings)
    reasons = _reasons(result, f"normal/{kind.name}")
    if kind.reason is not None:
        assert not result.passed and any(re.search(kind.reason, r) for r in reasons), reasons
        assert (kind.check or "readable") in _checks(result)
        assert f"normal/{kind.name}" in set(
            result.scan.manifest["path"]
        )  # listed by name, not dropped
        return
    assert result.passed and reasons == [], result.summary["failed_expectations"]
    gray = load_pixels(path, 32, tiny_settings.validation.max_pixels)[:, :, 0].astype(float)
    if kind.name == "rotated.jpg":  # EXIF orientation 6: the white left part is shown on top
        assert gray[:16].mean() > 200 and gray[-4:].mean() < 60
    else:  # every other one is a left-to-right ramp, whatever its bit depth, mode or container
        assert gray[:, :4].mean() < 60 and gray[:, -4:].mean() > 190


def test_corpus_has_at_least_twenty_kinds():
    assert len(KINDS) >= 20 and len({k.name for k in KINDS}) == len(KINDS)


def test_min_width_and_height(synth_dir, tiny_settings):
    root = synth_dir()
    _gradient(16).save(root / "normal" / "small.png")
    result = validate_folder(root, tiny_settings)
    assert {"min_width", "min_height"} <= _checks(result)
    failure = next(f for f in result.summary["failed_expectations"] if f["check"] == "min_width")
    assert failure["unexpected"] == [{"id": "normal/small.png", "value": 16}]
    assert failure["bound"] == {"min_value": 32}


def test_image_mode(synth_dir, tiny_settings):
    root = synth_dir()
    _gradient(64, "RGBA").save(root / "osteoporosis" / "alpha.png")
    result = validate_folder(root, tiny_settings)
    assert _checks(result) == {"image_mode"}
    allowed = tiny_settings.model_copy(deep=True)
    allowed.validation.allowed_modes = [*allowed.validation.allowed_modes, "RGBA"]
    assert validate_folder(root, allowed).passed


def test_unknown_class_folder_fails_label_checks(synth_dir, tiny_settings):
    root = synth_dir()
    shutil.copytree(root / "normal", root / "osteopenia")
    result = validate_folder(root, tiny_settings)
    assert {"known_label", "label_set"} <= _checks(result)
    ignoring = tiny_settings.model_copy(deep=True)
    ignoring.data.ignore_unlisted_classes = True
    ignoring.validation.fail_on_label_conflicts = False  # the copies conflict by construction
    result = validate_folder(root, ignoring)
    assert result.passed and "osteopenia/" in {i["path"] for i in result.summary["ignored"]}


def test_empty_or_missing_class_fails_class_count(synth_dir, tiny_settings):
    root = synth_dir()
    for f in (root / "osteoporosis").iterdir():
        f.unlink()
    assert "class_count" in _checks(validate_folder(root, tiny_settings))
    (root / "osteoporosis").rmdir()
    assert "class_count" in _checks(validate_folder(root, tiny_settings))


def test_class_balance(synth_dir, tiny_settings):
    root = synth_dir(per_class=10)
    for f in sorted((root / "osteoporosis").iterdir())[:7]:
        f.unlink()
    result = validate_folder(root, tiny_settings)
    assert result.passed  # 3 of 13 (23%) and 10 of 13 (77%): inside the default 10%..80%
    strict = tiny_settings.model_copy(deep=True)
    strict.validation.min_class_share = 0.3
    result = validate_folder(root, strict)
    failure = next(
        f for f in result.summary["failed_expectations"] if f["check"] == "class_balance"
    )
    assert failure["unexpected"][0]["id"] == "osteoporosis"


def test_label_conflicts_fail_or_are_excluded(synth_dir, tiny_settings):
    root = synth_dir()
    shutil.copy(root / "normal" / "normal_000.jpg", root / "osteoporosis" / "copy.jpg")
    result = validate_folder(root, tiny_settings)
    assert "label_conflicts" in _checks(result)
    assert result.summary["label_conflicts"][0]["paths"] == [
        "normal/normal_000.jpg",
        "osteoporosis/copy.jpg",
    ]
    lenient = tiny_settings.model_copy(deep=True)
    lenient.validation.fail_on_label_conflicts = False
    result = validate_folder(root, lenient)
    assert result.passed and "label_conflicts" in _checks(result, "warning")


def test_duplicates_warn_by_default_and_can_fail(synth_dir, tiny_settings):
    root = synth_dir()
    shutil.copy(root / "normal" / "normal_000.jpg", root / "normal" / "again.jpg")
    result = validate_folder(root, tiny_settings)
    assert result.passed and "duplicates" in _checks(result, "warning")
    assert result.summary["duplicate_groups"] == [["normal/again.jpg", "normal/normal_000.jpg"]]
    strict = tiny_settings.model_copy(deep=True)
    strict.validation.fail_on_duplicates = True
    assert "duplicates" in _checks(validate_folder(root, strict))


def _with_derived_copies(tmp_path):
    """Synthetic radiographs at a realistic size, plus a resized JPEG copy (same label) and a
    mirrored copy filed under the other label."""
    import numpy as np
    from PIL import Image

    from osteo_pipeline.core.synth_copies import derived_copy
    from osteo_pipeline.steps.synth import write_synthetic_dataset

    root = tmp_path / "data"
    write_synthetic_dataset(root, ["normal", "osteoporosis"], 4, 320, seed=1)
    with Image.open(root / "normal" / "normal_001.png") as image:
        pixels = np.asarray(image.convert("L"))
    rng = np.random.default_rng(0)
    for kind, target in (("resized", "normal/small.jpg"), ("mirrored", "osteoporosis/mirror.png")):
        derived_copy(pixels, kind, rng).image.save(root / target, quality=60)
    return root


def test_derived_copies_are_grouped_and_a_mirrored_copy_under_another_label_conflicts(
    tmp_path, tiny_settings
):
    root = _with_derived_copies(tmp_path)
    result = validate_folder(root, tiny_settings)
    group = next(g for g in result.summary["copy_groups"] if "normal/normal_001.png" in g["paths"])
    assert group["paths"] == [
        "normal/normal_001.png",
        "normal/small.jpg",
        "osteoporosis/mirror.png",
    ]
    # one link per copy joins the group (the third pair is joined already), each named by how
    # its copy was made, whichever way it reads
    kinds = sorted(link["kind"] for link in group["links"])
    assert len(kinds) == 2 and kinds[0] == "re-encoded+mirrored", kinds
    assert kinds[1] in {"resized", "resized+mirrored"}, kinds
    assert len(result.summary["copy_groups"]) == 1  # no other pair of distinct radiographs linked
    assert not result.passed and "label_conflicts" in _checks(result)
    conflict = result.summary["label_conflicts"][0]
    assert conflict["paths"] == group["paths"]
    assert conflict["kinds"] == kinds


def test_revalidation_matches_only_new_files(tmp_path, tiny_settings):
    import shutil as sh

    root = _with_derived_copies(tmp_path)
    first = validate_folder(root, tiny_settings).summary["derived_copies"]
    again = validate_folder(root, tiny_settings).summary["derived_copies"]
    sh.copy(
        root / "normal" / "small.jpg", root / "osteoporosis" / "extra.jpg"
    )  # a new file, known content
    (root / "normal" / "normal_003.png").rename(root / "normal" / "renamed.png")
    moved = validate_folder(root, tiny_settings).summary["derived_copies"]
    assert first["matched_now"] == 10 and again["matched_now"] == 0 and moved["matched_now"] == 0
    assert first["links"] == again["links"] == moved["links"] >= 2
    tiny_settings.validation.copies_cache_dir = "none"  # memory only: everything is matched again
    assert validate_folder(root, tiny_settings).summary["derived_copies"]["matched_now"] == 10


def test_suites_run_as_gx_checkpoints_that_build_data_docs_and_a_second_run_reuses_them(
    synth_dir, tiny_settings, tmp_path
):
    import great_expectations as gx

    root, docs = synth_dir(), tmp_path / "report"
    for _ in range(2):  # the second validation into the same folder reuses GX's file context
        result = validate_folder(root, tiny_settings, docs_dir=docs)
    assert result.passed and Path(result.summary["data_docs"]).is_file()
    assert (
        len(list((docs / "gx" / "data_docs" / "validations").rglob("*.html"))) == 3
    )  # one per suite: this run's
    context = gx.get_context(mode="file", project_root_dir=str(docs))
    assert {c.name for c in context.checkpoints.all()} == {
        "osteo-files",
        "osteo-classes",
        "osteo-contents",
    }
    assert (
        validate_folder(root, tiny_settings).summary["data_docs"] is None
    )  # no report folder: in memory only


def test_a_failed_validation_names_the_settings_and_packaged_configs_that_fit(
    synth_dir, tiny_settings
):
    """The real three-class set's failure on the default classes: an unlisted class folder and
    copies filed under two labels. The message names the settings (and the example configs that
    fit these folders), and those settings make the same data pass."""
    root = synth_dir(classes=("normal", "osteopenia", "osteoporosis"))
    shutil.copy(root / "normal" / "normal_000.jpg", root / "osteopenia" / "copy.jpg")
    result = validate_folder(root, tiny_settings)
    message = result.failure()
    assert (
        "to fit: class folder 'osteopenia' is not in data.classes [normal, osteoporosis]: add it "
        "(--set 'data.classes=[normal, osteopenia, osteoporosis]', or --config knee-3class) or set "
        "data.ignore_unlisted_classes=true (--config knee-binary)"
    ) in message
    assert (
        "to fit: copies of one radiograph are filed under different classes: correct their "
        "labels, or set validation.fail_on_label_conflicts=false to leave them out of the split "
        "and report them "
        "(--config knee-3class or --config knee-binary, which fit these class folders)"
    ) in message
    fitted = tiny_settings.model_copy(deep=True)
    fitted.data.classes = ["normal", "osteopenia", "osteoporosis"]
    fitted.validation.fail_on_label_conflicts = False
    assert validate_folder(root, fitted).passed


def test_a_passing_validation_suggests_nothing(synth_dir, tiny_settings):
    assert validate_folder(synth_dir(), tiny_settings).summary["suggestions"] == []
