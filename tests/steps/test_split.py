import shutil

import pytest

from osteo_pipeline.steps.split import NotValidatedError, SplitManifest, split_dataset
from osteo_pipeline.steps.validate import validate_folder


def test_split_keeps_duplicates_together_and_excludes_conflicts(synth_dir, tiny_settings, tmp_path):
    root = synth_dir(per_class=20)
    for i in range(0, 20, 3):
        shutil.copy(root / "normal" / f"normal_{i:03d}{'.png' if i % 2 else '.jpg'}", root / "normal" / f"dup{i}.img.png")
    shutil.copy(root / "osteoporosis" / "osteoporosis_004.jpg", root / "normal" / "conflict.jpg")
    settings = tiny_settings.model_copy(deep=True)
    settings.validation.fail_on_label_conflicts = False
    manifest = split_dataset(validate_folder(root, settings), settings)
    files = manifest.files
    assert (files.groupby("sha256")["split"].nunique() == 1).all()
    assert (files.groupby("group")["split"].nunique() == 1).all()
    assert {e["path"] for e in manifest.excluded} == {"normal/conflict.jpg", "osteoporosis/osteoporosis_004.jpg"}
    assert not files["path"].isin(["normal/conflict.jpg"]).any()
    assert set(files["split"]) == {"train", "val", "test"}
    saved = SplitManifest.from_dict(__import__("json").loads(manifest.save(tmp_path / "s.json").read_text()))
    assert saved.dataset_hash == manifest.dataset_hash
    assert saved.files.to_dict("records") == files.to_dict("records")


def test_same_data_same_split_and_hash(synth_dir, tiny_settings):
    root = synth_dir(per_class=12)
    a = split_dataset(validate_folder(root, tiny_settings), tiny_settings)
    b = split_dataset(validate_folder(root, tiny_settings), tiny_settings)
    assert a.dataset_hash == b.dataset_hash and a.files.equals(b.files)


def test_refuses_failed_validation(synth_dir, tiny_settings):
    root = synth_dir()
    (root / "normal" / "empty.png").write_bytes(b"")
    with pytest.raises(NotValidatedError, match="failed validation"):
        split_dataset(validate_folder(root, tiny_settings), tiny_settings)


def test_a_dicom_batch_validates_splits_and_loads_for_training(tmp_path, train_settings):
    """DICOM radiographs are first-class: the same path as PNG/JPEG from validation to pixels."""
    import numpy as np

    from osteo_pipeline.core.synth import generate
    from osteo_pipeline.steps.train import load_arrays, pixel_cache
    from tests.corpus import dicom_bytes

    for item in generate(["normal", "osteoporosis"], 8, 64, seed=3):
        folder = tmp_path / "dicom" / item.label
        folder.mkdir(parents=True, exist_ok=True)
        stored = np.asarray(item.image.convert("L"), dtype=np.uint16) * 16  # 12-bit detector values
        (folder / f"{len(list(folder.iterdir())):03d}.dcm").write_bytes(dicom_bytes(stored, photometric="MONOCHROME1" if len(list(folder.iterdir())) % 2 else "MONOCHROME2"))
    result = validate_folder(tmp_path / "dicom", train_settings)
    assert result.passed, result.summary["failed_expectations"]
    assert result.summary["formats"] == {"DICOM": 16}
    split = split_dataset(result, train_settings)
    arrays = load_arrays(split, train_settings, pixel_cache(train_settings))
    assert sum(len(a.labels) for a in arrays.values()) == 16
    assert arrays["train"].pixels.shape[1:] == (32, 32, 3) and arrays["train"].pixels.std() > 10
