"""A model card (markdown) per registered version: data, metrics with CIs, intended use, limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from osteo_pipeline.core.summaries import MetricsTable

Intervals = dict[str, dict[str, float | None]]  # metric -> value, low, high (null when missing)


@dataclass(frozen=True)
class CvEstimate:
    """The out-of-fold estimate of a cross-validated search: metrics with their intervals."""

    metrics: Intervals
    folds: int
    n: int


@dataclass(frozen=True)
class CardIdentity:
    """Which model the card describes: the registered name and version, and its training run."""

    name: str
    version: str
    run_id: str


@dataclass(frozen=True)
class CardData:
    """The data it was trained and tested on: per split and class counts, and what was left out."""

    classes: list[str]
    dataset_hash: str
    counts: dict[str, dict[str, int]]
    excluded: int


@dataclass(frozen=True)
class CardModel:
    """How it was built: backbone weights, input, and the chosen training parameters."""

    weights: str
    input_size: int
    roi: str = "image"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CardResults:
    """What it scored: test metrics, its calibration, and the CV estimate when it had one."""

    positive: str
    metrics: Intervals
    calibration: dict[str, Any] | None = None
    cv: CvEstimate | None = None
    image_grids: str = "not logged"
    clinical: dict[str, Any] | None = None
    """Per patient exam and per sex and age band (data from a clinical manifest), or None."""


def _clinical_section(clinical: dict[str, Any] | None) -> str:
    """What the results are per: images only (class folders), or exams and subgroups too."""
    if not clinical:
        return (
            "\n## Per patient\nThe data named no patients (class folders): results are per image, "
            "and images of one person may have been counted as independent cases.\n"
        )
    exam = clinical["per_exam"]
    lines = [
        "",
        f"## Per patient exam (n = {exam['n_exams']} exams of {exam['n_patients']} patients)",
        "An exam's probability is the mean of its images'; CIs resample patients.",
        MetricsTable.from_dict(exam["metrics"]).to_markdown(),
        "",
        "## By sex and age band",
    ]
    groups = clinical.get("subgroups") or {}
    if not groups:
        lines.append("Sex and age were not known for the test images.")
    for name, entry in sorted(groups.items()):
        if "metrics" in entry:
            lines += [
                f"### {name} (n = {entry['n']} images of {entry['n_patients']} patients)",
                MetricsTable.from_dict(entry["metrics"]).to_markdown(),
            ]
        else:
            lines.append(f"- {name}: {entry['n']}, not scored")
    return "\n".join(lines) + "\n"


def _cv_section(cv: CvEstimate, n_test: int) -> str:
    """The headline: the out-of-fold estimate with its interval, the test split's numbers
    beside it."""
    table = MetricsTable.from_dict(cv.metrics).to_markdown("CV estimate", "95% interval")
    return f"""
## Headline: cross-validated estimate ({cv.folds}-fold, n = {cv.n} images)
Out-of-fold predictions of the chosen parameters, each fold's labels from a calibration fitted on
the other folds; mean over folds with the 95% corrected resampled t interval. It leans
optimistic: the same folds chose the parameters (best of the search's trials) and the epoch
count. The test split below (n = {n_test}) is the one untouched check.

{table}
"""


def render_model_card(
    *, identity: CardIdentity, data: CardData, model: CardModel, results: CardResults
) -> str:
    classes, counts, cv = data.classes, data.counts, results.cv
    rows = "\n".join(
        f"| {split} | "
        + " | ".join(str(counts.get(split, {}).get(c, 0)) for c in classes)
        + f" | {sum(counts.get(split, {}).values())} |"
        for split in ("train", "val", "test")
    )
    metrics_table = MetricsTable.from_dict(results.metrics).to_markdown()
    n_test = sum(counts.get("test", {}).values())
    headline = _cv_section(cv, n_test) if cv else ""
    calibrated_on = "out-of-fold predictions of the cross-validated search" if cv else "validation"
    view = (
        "each knee cropped square around its joint line "
        "(two crops per film; the image's probability is their mean)"
        if model.roi == "knees"
        else "the whole film"
    )
    param_rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(model.params.items()))
    calibration = results.calibration or {}
    threshold = calibration.get("threshold")
    decision = (
        f"`{classes[calibration.get('positive', -1)]}` when its probability is at least "
        f"{threshold:.3f} (chosen on {calibrated_on} for balanced accuracy)"
        if threshold is not None
        else "the most probable class"
    )
    protocol = (
        "The search scored each parameter set by cross-validation on `train` + `val`; the model "
        "trained on both for the epochs CV chose, and the temperature and threshold were fitted "
        "on the out-of-fold predictions."
        if cv
        else "The model trained on `train`; `val` chose the search's parameters and epochs, then "
        "the temperature and the threshold."
    )
    return f"""# Model card: {identity.name} version {identity.version}

Knee radiograph classifier ({", ".join(classes)}), ResNet-50 transfer learning.
Training run `{identity.run_id}`.
{headline}
## Intended use
Research and engineering of an MLOps pipeline; decision support experiments on labeled knee
X-rays. **Not a diagnosis and not a medical device.** Osteoporosis is diagnosed by bone mineral
density (DXA T-score), not by a plain radiograph; outputs must not guide individual care.

## Data
Dataset hash `{data.dataset_hash}` (sha256 of content hashes, labels and splits). Copies of one
radiograph (identical files and derived copies: resized, re-encoded, mirrored, rotated, cropped,
padded) are kept within one split; {data.excluded} label-conflicting copies were excluded.

| split | {" | ".join(classes)} | total |
|---|{"---|" * len(classes)}---|
{rows}

{protocol}
`test` was scored once, at the end.

## Model
Backbone weights: `{model.weights}`; input: {view}, {model.input_size} x {model.input_size} px,
grayscale replicated to 3 channels, ResNet-50 caffe preprocessing; augmentation on training data
only.

| parameter | value |
|---|---|
{param_rows}

## Output contract
Input: one image (PNG, JPEG, TIFF, BMP or DICOM; any size, mode and bit depth the validation
allows). Output: `label` and `p_<class>` per class. Probabilities are temperature-scaled
(T = {calibration.get("temperature", 1.0):.3f}, fitted on {calibrated_on}); the label is {decision}.

## Privacy
The model's input example (in its MLmodel files) is a synthetic radiograph drawn by the
pipeline's own generator (`osteo synth`); no training, validation or test image is stored with the
model. Figures that show evaluated images (prediction and Grad-CAM grids) on the training run:
{results.image_grids}.

## Test metrics (n = {n_test}; positive class `{results.positive}`; 95% bootstrap CIs)
{metrics_table}
{_clinical_section(results.clinical)}
## Limits
- Small data: with n = {n_test} test images the CIs above are wide; differences inside them are
  noise.
- Labels come from the source collection (for the public knee set: quantitative-ultrasound
  T-scores), not from DXA; some images in public copies carry conflicting labels.
- Public knee X-ray sets are resized, mirrored and relabeled copies of each other: never evaluate
  on one after training on another.
- Scanner, resolution and file-format differences can be learned as shortcuts; check the
  metadata-only baseline before trusting a number.
"""
