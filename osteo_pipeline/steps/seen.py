"""Which images a model has already seen: the train and val files of its training run, and every
copy of them (identical, or derived: resized, re-encoded, mirrored, rotated, cropped). Evaluation
and the promotion gate leave those out, so no model is scored on what it trained on."""

from __future__ import annotations

from osteo_pipeline.config import Settings
from osteo_pipeline.errors import OsteoError
from osteo_pipeline.io.clinical import key_fingerprint
from osteo_pipeline.io.copies import Content, copy_finder
from osteo_pipeline.io.run_artifacts import TrainingRun


class TrainingManifestError(OsteoError):
    """A model's training manifest cannot be read, so its seen images cannot be left out."""


def training_images(model_uri: str) -> list[Content]:
    """The images the model's training run trained or calibrated on (its split manifest's train
    and val files). Without the manifest nothing could be left out and images the model trained
    on would be scored as new: that stops the caller, it is never skipped quietly."""
    try:
        split = TrainingRun.of_model(model_uri).split
    except Exception as exc:  # noqa: BLE001 - MLflow reports a missing run or artifact in many ways
        raise TrainingManifestError(
            f"cannot read the training split manifest of {model_uri} "
            f"({type(exc).__name__}: {str(exc)[:200]}); evaluation stopped, since images it "
            "trained on could not be left out"
        ) from exc
    seen = split.files[split.files["split"].isin(("train", "val"))]
    return [
        Content(sha256, file, None, name)
        for sha256, file, name in zip(seen["sha256"], split.file_paths(seen), seen["path"])
    ]


def training_patients(model_uri: str, settings: Settings) -> set[str]:
    """The patients (pseudonyms) whose images the model trained or calibrated on; empty for data
    without patients. Pseudonyms match only under the key that made them: another key raises
    :class:`TrainingManifestError` rather than matching no one."""
    split = TrainingRun.of_model(model_uri).split
    if "patient" not in split.files:
        return set()
    made_with = (split.patient_check or {}).get("key")
    if made_with != key_fingerprint(settings.clinical):
        raise TrainingManifestError(
            f"the patients {model_uri} trained on were pseudonymised with another key than "
            f"${settings.clinical.patient_key_env} holds now, so they cannot be left out of "
            "this evaluation: set it to the key of that training run"
        )
    seen = split.files[split.files["split"].isin(("train", "val"))]
    return set(seen["patient"].dropna())


def seen_images(
    candidates: list[Content], seen: list[Content], settings: Settings
) -> dict[str, str]:
    """Why each candidate (by sha256) must be left out: identical to, or (with
    ``validation.derived_copies``) a derived copy of, an image in ``seen``."""
    hashes = {content.sha256 for content in seen}
    reasons = {c.sha256: "identical" for c in candidates if c.sha256 in hashes}
    if settings.validation.derived_copies:
        rest = [c for c in candidates if c.sha256 not in reasons]
        found = copy_finder(settings.validation).derived_from(rest, seen)
        reasons |= {sha: str(link["kind"]) for sha, link in found.items()}
    return reasons
