import shutil

import pytest

from osteo_pipeline.steps.split import NotValidatedError, SplitManifest, split_dataset
from osteo_pipeline.steps.validate import validate_folder


def test_split_keeps_duplicates_together_and_excludes_conflicts(synth_dir, tiny_settings, tmp_path):
    root = synth_dir(per_class=20)
    for i in range(0, 20, 3):
        shutil.copy(
            root / "normal" / f"normal_{i:03d}{'.png' if i % 2 else '.jpg'}",
            root / "normal" / f"dup{i}.img.png",
        )
    shutil.copy(root / "osteoporosis" / "osteoporosis_004.jpg", root / "normal" / "conflict.jpg")
    settings = tiny_settings.model_copy(deep=True)
    settings.validation.fail_on_label_conflicts = False
    manifest = split_dataset(validate_folder(root, settings), settings)
    files = manifest.files
    assert (files.groupby("sha256")["split"].nunique() == 1).all()
    assert (files.groupby("group")["split"].nunique() == 1).all()
    assert {e["path"] for e in manifest.excluded} == {
        "normal/conflict.jpg",
        "osteoporosis/osteoporosis_004.jpg",
    }
    assert not files["path"].isin(["normal/conflict.jpg"]).any()
    assert set(files["split"]) == {"train", "val", "test"}
    saved = SplitManifest.from_dict(
        __import__("json").loads(manifest.save(tmp_path / "s.json").read_text())
    )
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
    from osteo_pipeline.training.arrays import load_arrays, pixel_cache
    from tests.corpus import dicom_bytes

    for item in generate(["normal", "osteoporosis"], 8, 64, seed=3):
        folder = tmp_path / "dicom" / item.label
        folder.mkdir(parents=True, exist_ok=True)
        stored = np.asarray(item.image.convert("L"), dtype=np.uint16) * 16  # 12-bit detector values
        (folder / f"{len(list(folder.iterdir())):03d}.dcm").write_bytes(
            dicom_bytes(
                stored,
                photometric="MONOCHROME1" if len(list(folder.iterdir())) % 2 else "MONOCHROME2",
            )
        )
    result = validate_folder(tmp_path / "dicom", train_settings)
    assert result.passed, result.summary["failed_expectations"]
    assert result.summary["formats"] == {"DICOM": 16}
    split = split_dataset(result, train_settings)
    arrays = load_arrays(split, train_settings, pixel_cache(train_settings))
    assert sum(len(a.labels) for a in arrays.values()) == 16
    assert arrays["train"].pixels.shape[1:] == (32, 32, 3) and arrays["train"].pixels.std() > 10


def test_derived_copies_share_a_split_and_a_fold_and_a_misfiled_one_is_excluded_by_kind(
    tmp_path, tiny_settings
):
    """Derived copies of every kind land in the split and CV part of their source; a copy filed
    under another class takes its whole group out, the reason naming its kind."""
    import numpy as np
    from PIL import Image

    from osteo_pipeline.core.splits import group_folds
    from osteo_pipeline.core.synth_copies import COPY_KINDS, derived_copy
    from osteo_pipeline.steps.split import usable_images
    from osteo_pipeline.steps.synth import save_image, write_synthetic_dataset

    root = tmp_path / "data"
    write_synthetic_dataset(root, ["normal", "osteoporosis"], 14, 300, seed=5)
    rng = np.random.default_rng(0)
    planted = []
    for source in ("normal/normal_001.png", "osteoporosis/osteoporosis_002.jpg"):
        pixels = np.asarray(Image.open(root / source).convert("L"))
        for kind in COPY_KINDS:
            derived = derived_copy(pixels, kind, rng)
            copy = (
                f"{source.split('/')[0]}/copy_{kind}_{source.split('/')[1]}."
                f"{'jpg' if derived.format.startswith('JPEG') else 'png'}"
            )
            save_image(derived.image, root / copy, derived.format)
            planted.append((source, copy))
    misfiled = derived_copy(
        np.asarray(Image.open(root / "normal/normal_004.jpg").convert("L")),
        "mirrored-knee-crop-224",
        rng,
    )
    save_image(misfiled.image, root / "osteoporosis/misfiled.jpg", misfiled.format)
    settings = tiny_settings.model_copy(deep=True)
    settings.validation.fail_on_label_conflicts = False
    validation = validate_folder(root, settings)
    manifest = split_dataset(validation, settings)
    split_of = dict(zip(manifest.files["path"], manifest.files["split"]))
    assert all(split_of[source] == split_of[copy] for source, copy in planted)
    excluded = {e["path"]: e["reason"] for e in manifest.excluded}
    assert set(excluded) == {"normal/normal_004.jpg", "osteoporosis/misfiled.jpg"}
    assert "crop+mirrored" in excluded["osteoporosis/misfiled.jpg"]
    frame, _ = usable_images(validation, settings)
    group_of = dict(zip(frame["path"], frame["group"]))
    assert all(group_of[source] == group_of[copy] for source, copy in planted)
    paths = frame["path"].to_numpy()
    for fold in group_folds(frame["label"].to_numpy(), frame["group"].to_numpy(), 3, 1, 0.2, 0):
        part = {
            path: name for name in ("train", "val", "test") for path in paths[getattr(fold, name)]
        }
        assert all(part[source] == part[copy] for source, copy in planted)


def test_no_patient_crosses_the_split_or_a_fold_of_a_clinical_manifest(
    tmp_path, tiny_settings, monkeypatch
):
    from osteo_pipeline.core.splits import group_folds
    from osteo_pipeline.steps.synth_clinical import write_clinical_dataset

    monkeypatch.setenv("OSTEO_PATIENT_KEY", "test key " + "0" * 32)
    write_clinical_dataset(tmp_path / "clinic", ["normal", "osteoporosis"], 12, 64, 3)
    manifest = tmp_path / "clinic" / "manifest.csv"
    split = split_dataset(validate_folder(manifest, tiny_settings), tiny_settings)
    files = split.files
    assert files.groupby("patient").size().max() > 1  # patients with several images
    assert (files.groupby("patient")["split"].nunique() == 1).all()
    assert {k: v for k, v in split.patient_check.items() if k != "key"} == {
        "what": "the split by patient",
        "parts": 3,
        "patients": 24,
        "shared": 0,
    }
    for name in ("train", "val", "test"):  # stratified by patient: every class in every split
        assert set(split.subset(name)["label"]) == {"normal", "osteoporosis"}
    patients = files["patient"].to_numpy()
    for fold in group_folds(files["label"], files["group"], 3, 2, 0.2, 0):
        parts = [set(patients[fold.train]), set(patients[fold.val]), set(patients[fold.test])]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert split.to_dict()["patient_check"]["shared"] == 0  # saved with the manifest


def test_a_leaky_split_is_stopped_before_training(tmp_path, tiny_settings, monkeypatch):
    import osteo_pipeline.steps.split as split_step
    from osteo_pipeline.core.clinical import PatientOverlapError
    from osteo_pipeline.steps.synth_clinical import write_clinical_dataset

    monkeypatch.setenv("OSTEO_PATIENT_KEY", "test key " + "0" * 32)
    write_clinical_dataset(tmp_path / "clinic", ["normal", "osteoporosis"], 6, 64, 4)
    validation = validate_folder(tmp_path / "clinic" / "manifest.csv", tiny_settings)

    def by_image(frame, fractions, seed):  # splits images, not patients
        return frame.index.map(lambda i: ("train", "val", "test")[i % 3]).to_series(
            index=frame.index
        )

    monkeypatch.setattr(split_step, "assign_splits", by_image)
    with pytest.raises(PatientOverlapError, match="patients cross the parts of the split"):
        split_dataset(validation, tiny_settings)


def test_patients_seen_in_training_are_only_matched_under_their_key(
    tmp_path, tiny_settings, monkeypatch
):
    from osteo_pipeline.steps import seen
    from osteo_pipeline.steps.seen import TrainingManifestError, training_patients
    from osteo_pipeline.steps.synth_clinical import write_clinical_dataset

    monkeypatch.setenv("OSTEO_PATIENT_KEY", "the training key " + "1" * 32)
    write_clinical_dataset(tmp_path / "clinic", ["normal", "osteoporosis"], 6, 64, 4)
    split = split_dataset(
        validate_folder(tmp_path / "clinic" / "manifest.csv", tiny_settings), tiny_settings
    )
    run = type("Run", (), {"split": split})
    monkeypatch.setattr(seen.TrainingRun, "of_model", staticmethod(lambda uri: run))
    trained = set(split.files.loc[split.files["split"] != "test", "patient"])
    assert training_patients("models:/m/1", tiny_settings) == trained
    monkeypatch.setenv("OSTEO_PATIENT_KEY", "another key " + "2" * 32)
    with pytest.raises(TrainingManifestError, match="another key"):
        training_patients("models:/m/1", tiny_settings)
