"""Clinical manifests: the synthetic PACS export reads in, DICOM tags fill blank cells, every
encoding decodes to its source's pixels, and every kind of bad manifest gets one line naming the
row and column, exit 2 (the table) or 1 (a row), and leaves the data as it was."""

import csv
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from osteo_pipeline.cli import app
from osteo_pipeline.core.preprocess import load_gray
from osteo_pipeline.core.synth import render
from osteo_pipeline.io.dicom_files import VARIANTS, write_dicom
from osteo_pipeline.io.sources import locate, scan_data
from osteo_pipeline.steps.synth_clinical import write_clinical_dataset
from tests.small import small_settings

runner = CliRunner()
SMALL = ["--set", "validation.min_width=32", "--set", "validation.min_height=32"]
SMALL += ["--set", "validation.min_images_per_class=2"]


@pytest.fixture(autouse=True)
def _patient_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OSTEO_PATIENT_KEY", "test key " + "0" * 32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clinic") / "export"
    write_clinical_dataset(root, ["normal", "osteoporosis"], 5, 64, 7)
    return root


def _rows(corpus: Path) -> list[dict[str, str]]:
    with open(corpus / "manifest.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _write(path: Path, rows: list[dict[str, str]], delimiter: str = ",") -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_the_corpus_reads_in_by_row_with_tags_filling_blanks(corpus, tmp_path):
    settings = small_settings(tmp_path)
    scan = scan_data(corpus / "manifest.csv", settings)
    rows = _rows(corpus)
    manifest = scan.manifest
    assert len(manifest) == len(rows) and manifest["error"].isna().all()
    assert list(manifest["path"][:2]) == ["row 1", "row 2"]
    assert manifest["patient"].nunique() == 10 and manifest["sex"].notna().all()
    blank = [i for i, r in enumerate(rows) if not r["sex"]]
    assert blank and manifest.loc[blank, "age"].notna().all()  # from PatientAge
    assert set(manifest["format"]) == {"DICOM", "PNG"}
    assert {"L", "I;16"} <= set(manifest["mode"])
    # no column carries a patient ID or a path with one in it
    text = manifest.to_csv() + scan.rows.to_csv()
    assert not any(r["patient_id"] in text for r in rows)
    assert locate(corpus / "manifest.csv", ["row 2"]) == [corpus / rows[1]["path"]]


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_dicom_encoding_decodes_to_its_png_source(tmp_path, variant):
    gray = (render("osteoporosis", 1.0, 96, np.random.default_rng(3)) * 255).round()
    gray = gray.astype(np.uint8)
    png = io.BytesIO()
    Image.fromarray(gray, mode="L").save(png, format="PNG")
    write_dicom(tmp_path / "x.dcm", gray, variant, {"PatientID": "P"}, "seed")
    decoded, source = load_gray(tmp_path / "x.dcm", 96, 10**7), load_gray(png.getvalue(), 96, 10**7)
    assert decoded.shape == source.shape
    assert np.abs(decoded.astype(int) - source.astype(int)).max() <= 1


def _bad(corpus: Path, name: str):
    """The text of manifest ``name`` (written next to the corpus), its expected exit code and
    what the line must name."""
    rows = _rows(corpus)
    png = next(i for i, r in enumerate(rows) if r["path"].endswith(".png"))
    header = ",".join(rows[0])

    def changed(index: int, **cells: str) -> list[dict[str, str]]:
        return [{**r, **cells} if i == index else r for i, r in enumerate(rows)]

    def without(column: str) -> list[dict[str, str]]:
        return [{k: v for k, v in r.items() if k != column} for r in rows]

    (corpus / "notes.txt").write_text("not an image")
    cases = {
        "missing_column": (without("patient_id"), 2, "column 'patient_id'"),
        "no_label_column": (
            [{k: v for k, v in r.items() if k not in ("label", "t_score")} for r in rows],
            2,
            "'label' or a 't_score'",
        ),
        "empty_file": ("", 2, "empty file"),
        "header_only": (header + "\n", 2, "no rows"),
        "wrong_delimiter": ("semicolon", 2, "separate columns with commas"),
        "unquoted_comma": (
            header
            + "\n"
            + "".join(",".join(r.values()) + "\n" for r in rows[:3])
            + ",".join(rows[3].values())
            + ",extra\n",
            2,
            "row 4: 12 fields",
        ),
        "repeated_column": (
            header + ",path\n" + "".join(",".join(r.values()) + ",x\n" for r in rows),
            2,
            "appears twice",
        ),
        "duplicate_path": (changed(2, path=rows[1]["path"]), 1, "row 3, column path"),
        "missing_file": (changed(1, path="nowhere/x.dcm"), 1, "row 2, column path"),
        "escaping_path": (changed(1, path="../outside.dcm"), 1, "row 2, column path"),
        "absolute_path": (changed(1, path="/etc/passwd"), 1, "row 2, column path"),
        "unreadable_file": (changed(1, path="notes.txt"), 1, "row 2, column path"),
        "t_score_text": (changed(3, t_score="abc"), 1, "row 4, column t_score"),
        "t_score_implausible": (changed(3, t_score="12"), 1, "row 4, column t_score"),
        "patient_id_as_t_score": (
            changed(3, t_score=rows[3]["patient_id"], age=rows[3]["patient_id"]),
            1,
            "row 4, column t_score",
        ),
        "unknown_label": (changed(png, label="osteoporsis"), 1, f"row {png + 1}, column label"),
        "label_contradicts_t_score": (
            changed(0, label="osteoporosis", t_score="0.5"),
            1,
            "row 1, column label",
        ),
        "two_labels_one_exam": (
            changed(1, side=rows[0]["side"], study_date=rows[0]["study_date"], t_score="-3.5"),
            1,
            "column label",
        ),
        "unknown_side": (changed(2, side="X"), 1, "row 3, column side"),
        "missing_patient": (changed(png, patient_id=""), 1, f"row {png + 1}, column patient_id"),
        "bad_date": (changed(2, study_date="31/02/2024"), 1, "row 3, column study_date"),
        "implausible_age": (changed(png, age="250"), 1, f"row {png + 1}, column age"),
        "unknown_sex": (changed(png, sex="Q"), 1, f"row {png + 1}, column sex"),
    }
    content, code, named = cases[name]
    path = corpus / f"bad-{name}.csv"
    if content == "semicolon":
        _write(path, rows, delimiter=";")
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        _write(path, content)
    return path, code, named


BAD = [
    "missing_column",
    "no_label_column",
    "empty_file",
    "header_only",
    "wrong_delimiter",
    "repeated_column",
    "unquoted_comma",
    "duplicate_path",
    "missing_file",
    "escaping_path",
    "absolute_path",
    "unreadable_file",
    "t_score_text",
    "t_score_implausible",
    "patient_id_as_t_score",
    "unknown_label",
    "label_contradicts_t_score",
    "two_labels_one_exam",
    "unknown_side",
    "missing_patient",
    "bad_date",
    "implausible_age",
    "unknown_sex",
]


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.mark.parametrize("name", BAD)
def test_a_bad_manifest_gets_one_line_naming_row_and_column(corpus, tmp_path, name):
    path, code, named = _bad(corpus, name)
    before = _tree(corpus)
    result = runner.invoke(
        app, ["validate", str(path), "--report-dir", str(tmp_path / "report"), *SMALL]
    )
    assert result.exit_code == code, result.output
    lines = [
        line
        for line in result.output.splitlines()
        if named in line and line.startswith(("error:", "critical"))
    ]
    assert len(lines) == 1, result.output
    assert _tree(corpus) == before  # nothing written next to the data
    ids = [r["patient_id"] for r in _rows(corpus)]
    assert not [i for i in ids if i in result.output]
    written = [p for p in (tmp_path / "report").rglob("*") if p.is_file()]
    assert not [(p.name, i) for p in written for i in ids if i.encode() in p.read_bytes()]


def test_a_view_outside_the_allowed_ones_fails(corpus, tmp_path):
    rows = _rows(corpus)
    path = _write(corpus / "lateral.csv", [{**rows[0], "view": "LAT"}, *rows[1:]])
    result = runner.invoke(
        app,
        ["validate", str(path), "--report-dir", str(tmp_path / "r"), *SMALL]
        + ["--set", "clinical.allowed_views=[AP, PA]"],
    )
    assert result.exit_code == 1 and "row 1, column view" in result.output


def test_rows_too_far_from_their_density_exam_are_left_out(corpus, tmp_path):
    settings = small_settings(tmp_path).model_copy(deep=True)
    settings.clinical.max_days_xray_to_dxa = 10
    scan = scan_data(corpus / "manifest.csv", settings)
    rows = _rows(corpus)
    far = [
        f"row {i + 1}"
        for i, r in enumerate(rows)
        if (np.datetime64(r["dxa_date"]) - np.datetime64(r["study_date"])).astype(int) > 10
    ]
    assert far and {i["path"] for i in scan.ignored} == set(far)
    assert all("max_days_xray_to_dxa" in i["reason"] for i in scan.ignored)
    assert not set(scan.manifest["path"]) & set(far)


def test_a_manifest_that_disagrees_with_the_tags_is_reported(corpus, tmp_path):
    rows = _rows(corpus)
    first_dicom = next(i for i, r in enumerate(rows) if r["path"].endswith(".dcm") and r["sex"])
    other = "M" if rows[first_dicom]["sex"] == "F" else "F"
    path = _write(
        corpus / "disagree.csv",
        [{**r, "sex": other} if i == first_dicom else r for i, r in enumerate(rows)],
    )
    result = runner.invoke(
        app, ["validate", str(path), "--report-dir", str(tmp_path / "r"), *SMALL]
    )
    assert result.exit_code == 0, result.output  # a warning: the row is used
    assert (
        f"row {first_dicom + 1}, column DICOM tags: the DICOM tags say otherwise (the manifest's "
        "value is used) for: sex"
    ) in result.output


def test_copy_of_the_corpus_elsewhere_still_finds_its_files(corpus, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(corpus, moved)
    assert locate(moved / "manifest.csv", ["row 1"])[0].is_file()


def test_a_parquet_manifest_reads_as_its_csv(corpus, tmp_path):
    import pandas as pd

    settings = small_settings(tmp_path)
    table = pd.read_csv(corpus / "manifest.csv", dtype=str, keep_default_na=False)
    table.to_parquet(corpus / "manifest.parquet")
    from_csv = scan_data(corpus / "manifest.csv", settings).manifest
    from_parquet = scan_data(corpus / "manifest.parquet", settings).manifest
    columns = ["path", "label", "sha256", "patient", "exam", "side", "sex", "age"]
    assert from_parquet[columns].equals(from_csv[columns])


def test_errors_never_show_a_patient_id(corpus, tmp_path, monkeypatch):
    rows = _rows(corpus)
    headerless = corpus / "headerless.csv"
    headerless.write_text("\n".join(",".join(r.values()) for r in rows) + "\n", encoding="utf-8")
    result = runner.invoke(app, ["validate", str(headerless), *SMALL])
    assert result.exit_code == 2 and "row 0 (header)" in result.output
    assert not [r["patient_id"] for r in rows if r["patient_id"] in result.output]
    monkeypatch.delenv("OSTEO_PATIENT_KEY")
    result = runner.invoke(app, ["validate", str(corpus / "manifest.csv"), *SMALL])
    assert result.exit_code == 2 and "$OSTEO_PATIENT_KEY" in result.output


def test_rows_that_now_hold_other_files_are_refused(corpus, tmp_path):
    from osteo_pipeline.io.clinical import ManifestError
    from osteo_pipeline.io.images import sha256_file

    rows = _rows(corpus)
    moved = tmp_path / "export"
    shutil.copytree(corpus, moved)
    recorded = [sha256_file(corpus / r["path"]) for r in rows[:2]]
    assert locate(moved / "manifest.csv", ["row 1", "row 2"], recorded)
    _write(moved / "manifest.csv", [rows[1], rows[0], *rows[2:]])  # re-exported, reordered
    with pytest.raises(ManifestError, match="row 1: not the image the split recorded"):
        locate(moved / "manifest.csv", ["row 1", "row 2"], recorded)
    with pytest.raises(ManifestError, match="pass the manifest file"):
        locate(moved, ["row 1"])


def test_blank_lines_keep_row_numbers(corpus, tmp_path):
    text = (corpus / "manifest.csv").read_text(encoding="utf-8").splitlines()
    path = corpus / "blank-line.csv"
    path.write_text("\n".join([*text[:2], "", *text[2:]]) + "\n\n", encoding="utf-8")
    result = runner.invoke(
        app, ["validate", str(path), "--report-dir", str(tmp_path / "r"), *SMALL]
    )
    assert result.exit_code == 1 and "row 2, column path: empty path" in result.output


def test_a_patient_id_in_the_label_column_is_never_shown(corpus, tmp_path):
    rows = _rows(corpus)
    leaked = rows[4]["patient_id"]
    path = _write(corpus / "id-as-label.csv", [{**rows[4], "label": leaked}, *rows[:4], *rows[5:]])
    for extra in ([], ["--set", "data.ignore_unlisted_classes=true"]):
        report = tmp_path / f"r{len(extra)}"
        result = runner.invoke(
            app, ["validate", str(path), "--report-dir", str(report), *SMALL, *extra]
        )
        assert result.exit_code == (0 if extra else 1), result.output
        assert leaked not in result.output
        for written in (p for p in report.rglob("*") if p.is_file()):
            assert leaked.encode() not in written.read_bytes(), written
    settings = small_settings(tmp_path).model_copy(deep=True)
    settings.data.ignore_unlisted_classes = True
    ignored = scan_data(path, settings).ignored
    assert ignored == [
        {"path": "row 1", "reason": "label not in data.classes (data.ignore_unlisted_classes)"}
    ]


def test_one_bad_row_leaves_the_others_in(corpus, tmp_path):
    rows = _rows(corpus)
    path = _write(corpus / "one-bad.csv", [{**rows[0], "t_score": "abc"}, *rows[1:]])
    manifest = scan_data(path, small_settings(tmp_path)).manifest
    assert len(manifest) == len(rows) - 1 and "row 1" not in set(manifest["path"])


def test_labels_match_classes_in_any_case(corpus, tmp_path):
    rows = [{**r, "t_score": "", "label": "Normal"} for r in _rows(corpus)]
    manifest = scan_data(_write(corpus / "cased.csv", rows), small_settings(tmp_path)).manifest
    assert set(manifest["label"]) == {"normal"}


def test_a_short_key_is_refused(corpus, monkeypatch):
    monkeypatch.setenv("OSTEO_PATIENT_KEY", "change-me")
    result = runner.invoke(app, ["validate", str(corpus / "manifest.csv"), *SMALL])
    assert result.exit_code == 2 and "at least 32 characters" in result.output


def test_parquet_numbers_and_dates_read_as_their_text(corpus, tmp_path):
    import pandas as pd

    table = pd.read_csv(corpus / "manifest.csv", dtype=str, keep_default_na=False).head(4)
    typed = table.assign(
        patient_id=[12.0, 12.0, None, 7.0],  # an integer ID column with a gap
        study_date=pd.to_datetime(table["study_date"]),
    )
    typed.to_parquet(corpus / "typed.parquet")
    from osteo_pipeline.io.manifest_table import read_table

    read = read_table(corpus / "typed.parquet")
    assert list(read["patient_id"]) == ["12", "12", "", "7"]
    assert list(read["study_date"]) == list(table["study_date"])
