import os

import pandas as pd
import pytest

from osteo_pipeline.io.manifest import MANIFEST_COLUMNS, DataDirError, scan_folder
from tests.corpus import _gradient

EXT = [".jpg", ".png"]


def _img(path, size=64):
    path.parent.mkdir(parents=True, exist_ok=True)
    _gradient(size).save(path)


def test_manifest_rows_and_columns(synth_dir):
    root = synth_dir(per_class=3)
    scan = scan_folder(root, EXT, 10**7)
    assert list(scan.manifest.columns) == MANIFEST_COLUMNS
    assert len(scan.manifest) == 6 and scan.manifest["error"].isna().all()
    assert sorted(scan.class_dirs) == ["normal", "osteoporosis"]
    assert set(scan.manifest["label"]) == {"normal", "osteoporosis"}
    assert all(p.count("/") == 1 for p in scan.manifest["path"])


def test_missing_folder_and_file_instead_of_folder(tmp_path):
    with pytest.raises(DataDirError, match="not found"):
        scan_folder(tmp_path / "nope", EXT, 10**7)
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataDirError, match="not a folder"):
        scan_folder(tmp_path / "f", EXT, 10**7)


def test_root_files_subfolders_and_other_suffixes_are_ignored_with_reasons(tmp_path):
    _img(tmp_path / "normal" / "a.png")
    _img(tmp_path / "stray.png")
    _img(tmp_path / "normal" / "nested" / "b.png")
    (tmp_path / "normal" / "readme.txt").write_text("x")
    (tmp_path / "normal" / ".DS_Store").write_text("x")
    scan = scan_folder(tmp_path, EXT, 10**7)
    reasons = {i["path"]: i["reason"] for i in scan.ignored}
    assert "not inside a class folder" in reasons["stray.png"]
    assert "sub-folder" in reasons["normal/nested"]
    assert "'.txt'" in reasons["normal/readme.txt"]
    assert list(scan.manifest["path"]) == ["normal/a.png"]


def test_symlink_leaving_the_folder_and_symlink_loop_are_rejected(tmp_path):
    root = tmp_path / "data"
    _img(root / "normal" / "a.png")
    _img(tmp_path / "outside.png")
    os.symlink(tmp_path / "outside.png", root / "normal" / "escape.png")
    os.symlink(root / "normal" / "loop.png", root / "normal" / "loop.png")
    os.symlink(root / "normal" / "a.png", root / "normal" / "inside.png")
    scan = scan_folder(root, EXT, 10**7)
    errors = dict(zip(scan.manifest["path"], scan.manifest["error"]))
    assert "outside the data folder" in errors["normal/escape.png"]
    assert "loop" in errors["normal/loop.png"]
    assert pd.isna(errors["normal/inside.png"])  # a link within the folder is a normal file


def test_empty_class_folder_is_seen(tmp_path):
    _img(tmp_path / "normal" / "a.png")
    (tmp_path / "osteoporosis").mkdir()
    scan = scan_folder(tmp_path, EXT, 10**7)
    assert "osteoporosis" in scan.class_dirs and len(scan.manifest) == 1


def test_non_utf8_file_name_is_scanned(tmp_path):
    _img(tmp_path / "normal" / "a.png")
    raw = os.path.join(os.fsencode(tmp_path / "normal"), b"caf\xe9.png")
    with open(raw, "wb") as handle:
        handle.write((tmp_path / "normal" / "a.png").read_bytes())
    scan = scan_folder(tmp_path, EXT, 10**7)
    assert len(scan.manifest) == 2 and scan.manifest["error"].isna().all()


def test_unreadable_permissions(tmp_path, monkeypatch):
    _img(tmp_path / "normal" / "a.png")
    os.chmod(tmp_path / "normal" / "a.png", 0)
    if (
        os.geteuid() == 0
    ):  # root reads whatever the mode says: fail the read the way the kernel would
        from osteo_pipeline.io import images

        def denied(path):
            raise PermissionError(13, "Permission denied", str(path))

        monkeypatch.setattr(images, "sha256_file", denied)
    scan = scan_folder(tmp_path, EXT, 10**7)
    assert "cannot read" in scan.manifest["error"].iloc[0]


def test_dicom_rows_record_format_depth_and_pixel_spacing(tmp_path):
    import numpy as np

    from tests.corpus import dicom_bytes

    (tmp_path / "normal").mkdir()
    (tmp_path / "normal" / "knee.dcm").write_bytes(
        dicom_bytes(np.full((300, 240), 900, np.uint16), spacing=(0.139, 0.14))
    )
    row = scan_folder(tmp_path, [".dcm"], 10**7).manifest.iloc[0]
    assert pd.isna(row["error"]) and (row["format"], row["mode"], row["width"], row["height"]) == (
        "DICOM",
        "I;16",
        240,
        300,
    )
    assert row["pixel_spacing_mm"] == "0.139x0.14"
