"""``osteo compare``: the seed paper's comparison run on the user's data under one protocol.

Every system sees the same repeated stratified group folds (duplicate groups within one part,
label conflicts excluded). In each fold a system trains on the training part, uses the val part
for early stopping, temperature scaling and the decision threshold, and is scored once on the
test part. Results are the mean over folds with a corrected resampled t interval, logged to
MLflow as one parent run, a nested run per system and, under it, one per fold."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from osteo_pipeline.config import Settings
from osteo_pipeline.core import baselines, plots
from osteo_pipeline.core.calibration import expected_calibration_error, fit_calibration
from osteo_pipeline.core.data import make_dataset
from osteo_pipeline.core.metrics import METRIC_NAMES, classification_metrics, fold_interval
from osteo_pipeline.core.model import (
    ModelSpec,
    WeightsUnavailableError,
    backbone,
    build_model,
    set_unfrozen_blocks,
)
from osteo_pipeline.core.splits import Fold, dataset_hash, group_folds
from osteo_pipeline.io import tracking
from osteo_pipeline.io.reports import write_json
from osteo_pipeline.steps.split import usable_images
from osteo_pipeline.steps.validate import validate_folder
from osteo_pipeline.training.arrays import Arrays, pixel_cache
from osteo_pipeline.training.fit import TrainParams, fit_two_phase, predict_proba
from osteo_pipeline.training.runtime import configure_runtime

log = logging.getLogger(__name__)

#: What each system is, as the table's footnote says it.
SYSTEMS = {
    "resnet50-tl": "the pipeline's model: ImageNet ResNet-50, head then top blocks fine-tuned (config params)",
    "resnet50-scratch": "ResNet-50, random init, all layers trained",
    "vgg16-ft": "ImageNet VGG-16, head then top conv block(s) fine-tuned",
    "vgg16-frozen": "ImageNet VGG-16 frozen, head only",
    "resnet18": "ResNet-18 built here, random init, all layers trained",
    "cnn3": "3-layer CNN, random init",
    "resnet50-probe": "frozen ImageNet ResNet-50 pooled features + logistic regression (C chosen on val)",
    "metadata-probe": "random forest on file metadata only (width, height, aspect, bytes, bytes/pixel, mode, format): a shortcut detector",
}
SIZE_FREE = {"metadata-probe"}
REPORTED = (*METRIC_NAMES, "ece")
HEADERS = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced acc.",
    "precision": "precision",
    "recall": "sensitivity",
    "specificity": "specificity",
    "f1": "F1",
    "roc_auc": "ROC AUC",
    "ece": "ECE",
}


@dataclass
class Data:
    """Everything the folds index into: one row per usable image."""

    root: Path
    frame: pd.DataFrame  # path, label, sha256, group + manifest metadata
    labels: np.ndarray
    excluded: list[dict[str, str]]
    identity: str
    pixels: dict[int, np.ndarray]  # by input size, filled on first use

    def arrays(self, size: int, rows: np.ndarray) -> Arrays:
        return Arrays(self.pixels[size][rows], self.labels[rows], list(self.frame["path"].iloc[rows]))


@dataclass
class CompareResult:
    rows: list[dict[str, Any]]
    folds: list[dict[str, Any]]
    markdown: str
    parent_run_id: str
    files: dict[str, Path]
    seconds: float


# Systems --------------------------------------------------------------------------------------


def _spec(settings: Settings, size: int) -> ModelSpec:
    return ModelSpec(tuple(settings.data.classes), size, settings.model.head_units, settings.model.dropout)


def _pretrained(build: Callable[[], keras.Model], what: str) -> keras.Model:
    """Build a model with pretrained weights; any failure to get them is 'unavailable', never a
    silent random init."""
    try:
        return build()
    except WeightsUnavailableError:
        raise
    except Exception as exc:  # noqa: BLE001 - a failed download surfaces as many exception types
        raise WeightsUnavailableError(f"{what} weights unavailable: {type(exc).__name__}: {str(exc)[:160]}") from exc


def _keep_all_trainable(model: keras.Model, depth: int) -> None:
    """Networks trained from scratch train every layer in every phase."""


def keras_system(name: str, settings: Settings, size: int) -> tuple[keras.Model, TrainParams, tuple[int, int], Callable[[keras.Model, int], object]]:
    """The network of a Keras system, the parameters and (head, finetune) epochs it trains with,
    and how each phase sets what trains."""
    spec, t, c = _spec(settings, size), settings.train, settings.compare
    config = TrainParams.from_settings(settings)
    scratch = (TrainParams(c.scratch_learning_rate, 0, spec.head_units, spec.dropout), (0, c.scratch_epochs), _keep_all_trainable)
    if name == "resnet50-tl":
        model = _pretrained(lambda: build_model(spec, settings.model.weights_source), "ResNet-50 ImageNet")
        return model, config, (t.head_epochs, t.finetune_epochs), set_unfrozen_blocks
    if name == "vgg16-ft":
        model = _pretrained(lambda: baselines.vgg16(spec, c.vgg16_weights), "VGG-16")
        params = TrainParams(t.learning_rate, c.vgg16_finetune_blocks, spec.head_units, spec.dropout)
        return model, params, (t.head_epochs, t.finetune_epochs), baselines.set_trainable_vgg_blocks
    if name == "vgg16-frozen":
        model = _pretrained(lambda: baselines.vgg16(spec, c.vgg16_weights), "VGG-16")
        return model, config, (t.head_epochs + t.finetune_epochs, 0), baselines.set_trainable_vgg_blocks
    builders = {"resnet50-scratch": baselines.resnet50_scratch, "resnet18": baselines.resnet18, "cnn3": baselines.cnn3}
    if name in builders:
        return (builders[name](spec), *scratch)
    raise ValueError(f"{name} is not a Keras system")


def require_weights(name: str, settings: Settings) -> None:
    """Fail fast, before any fold runs, when a pretrained system's weights cannot be had."""
    if name.startswith("vgg16"):
        _pretrained(lambda: baselines.vgg16(_spec(settings, 32), settings.compare.vgg16_weights), "VGG-16")
    elif name.startswith("resnet50-") and name != "resnet50-scratch" and settings.model.weights_source is None:
        raise WeightsUnavailableError(f"model.weights is 'none': {name} needs ImageNet weights")


def fit_keras(name: str, data: Data, fold: Fold, size: int, settings: Settings, jit: bool) -> tuple[np.ndarray, np.ndarray]:
    """Train a Keras system on the fold's training part (early stopping on val); val and test
    probabilities."""
    keras.backend.clear_session()
    gc.collect()
    keras.utils.set_random_seed(settings.seed + 100 * fold.repeat + fold.fold)
    model, params, epochs, unfreeze = keras_system(name, settings, size)
    train, val = data.arrays(size, fold.train), data.arrays(size, fold.val)
    fit_two_phase(model, train, val, params, settings, epochs=epochs, jit=jit, unfreeze=unfreeze)
    batch = settings.train.batch_size
    return predict_proba(model, val.pixels, batch), predict_proba(model, data.pixels[size][fold.test], batch)


def resnet50_features(pixels: np.ndarray, settings: Settings, size: int) -> np.ndarray:
    """Globally pooled frozen ImageNet ResNet-50 features (N x 2048), computed once per size."""
    base = _pretrained(lambda: backbone(settings.model.weights_source, size), "ResNet-50 ImageNet")
    extractor = keras.Sequential([base, keras.layers.GlobalAveragePooling2D()])
    dataset = make_dataset(pixels, None, 2, settings.train.batch_size)
    return np.asarray(extractor.predict(dataset, verbose=0), dtype=np.float64)


def metadata_features(frame: pd.DataFrame) -> np.ndarray:
    """What a file says about its scanner and export path, nothing about the bone."""
    numeric = pd.DataFrame(
        {
            "width": frame["width"].astype(float),
            "height": frame["height"].astype(float),
            "aspect": frame["width"].astype(float) / frame["height"].astype(float),
            "log_bytes": np.log1p(frame["bytes"].astype(float)),
            "bytes_per_pixel": frame["bytes"].astype(float) / (frame["width"].astype(float) * frame["height"].astype(float)),
        }
    )
    categorical = pd.get_dummies(frame[["mode", "format"]].astype(str), dtype=float)
    return pd.concat([numeric, categorical], axis=1).to_numpy(dtype=np.float64)


def fit_logistic(features: np.ndarray, labels: np.ndarray, fold: Fold, c_values: list[float], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Standardised, class-balanced logistic regression; C chosen on val log loss."""
    best, best_loss = None, np.inf
    n_classes = len(np.unique(labels))
    for c in c_values:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000, random_state=seed))
        model.fit(features[fold.train], labels[fold.train])
        loss = log_loss(labels[fold.val], model.predict_proba(features[fold.val]), labels=list(range(n_classes)))
        if loss < best_loss:
            best, best_loss = model, loss
    return best.predict_proba(features[fold.val]), best.predict_proba(features[fold.test])


def fit_forest(features: np.ndarray, labels: np.ndarray, fold: Fold, seed: int) -> tuple[np.ndarray, np.ndarray]:
    model = RandomForestClassifier(n_estimators=300, min_samples_leaf=2, class_weight="balanced", random_state=seed, n_jobs=-1)
    model.fit(features[fold.train], labels[fold.train])
    return model.predict_proba(features[fold.val]), model.predict_proba(features[fold.test])


# The run --------------------------------------------------------------------------------------


def load_data(data_dir: Path, settings: Settings) -> Data:
    """Validate the folder and collect its usable images (conflicts excluded) with metadata."""
    validation = validate_folder(data_dir, settings)
    frame, excluded = usable_images(validation, settings)
    manifest = validation.scan.manifest.drop_duplicates("path").set_index("path")
    frame = frame.join(manifest[["width", "height", "mode", "format", "bytes"]], on="path").sort_values("path").reset_index(drop=True)
    index = {c: i for i, c in enumerate(settings.data.classes)}
    labels = frame["label"].map(index).to_numpy(dtype=np.int64)
    identity = dataset_hash(frame.assign(split="all"))
    return Data(validation.scan.root, frame, labels, excluded, identity, {})


def _ensure_pixels(data: Data, size: int, settings: Settings) -> None:
    if size not in data.pixels:
        data.pixels[size] = pixel_cache(settings, size).load([data.root / p for p in data.frame["path"]], list(data.frame["sha256"]))


def score_fold(val_proba: np.ndarray, test_proba: np.ndarray, data: Data, fold: Fold, positive: int) -> dict[str, float]:
    """Test metrics after temperature and threshold fitted on the fold's val part."""
    calibration = fit_calibration(val_proba, data.labels[fold.val], positive)
    calibrated = calibration.probabilities(test_proba)
    y_test = data.labels[fold.test]
    scores = classification_metrics(y_test, calibrated, positive, calibration.labels(calibrated))
    scores["ece"] = expected_calibration_error(calibrated, y_test)
    return scores | {"temperature": calibration.temperature, "threshold": calibration.threshold if calibration.threshold is not None else float("nan")}


def run_system(name: str, size: int | None, data: Data, folds: list[Fold], settings: Settings, jit: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """All folds of one system at one size, each a nested MLflow run; the summary row."""
    label = name if size is None else f"{name}@{size}"
    positive = settings.data.classes.index(settings.data.positive)
    row: dict[str, Any] = {"system": label, "name": name, "size": size, "available": True, "note": SYSTEMS[name]}
    fold_rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    with mlflow.start_run(run_name=label, nested=True, tags={"osteo.kind": "compare-system", "system": name}):
        mlflow.log_params({"system": name, "input_size": size or "none", "description": SYSTEMS[name]})
        features: np.ndarray | None = None
        try:
            require_weights(name, settings)
            if name == "metadata-probe":
                features = metadata_features(data.frame)
            elif name == "resnet50-probe":
                assert size is not None
                features = resnet50_features(data.pixels[size], settings, size)
            for fold in folds:
                fold_started = time.perf_counter()
                with mlflow.start_run(run_name=f"{label} {fold.name}", nested=True, tags={"osteo.kind": "compare-fold", "system": name, "fold": fold.name}):
                    if name == "metadata-probe":
                        val_proba, test_proba = fit_forest(features, data.labels, fold, settings.seed + fold.repeat)
                    elif name == "resnet50-probe":
                        val_proba, test_proba = fit_logistic(features, data.labels, fold, settings.compare.probe_c, settings.seed)
                    else:
                        assert size is not None
                        val_proba, test_proba = fit_keras(name, data, fold, size, settings, jit)
                    scores = score_fold(val_proba, test_proba, data, fold, positive)
                    seconds = time.perf_counter() - fold_started
                    mlflow.log_params({"fold": fold.name, "n_train": len(fold.train), "n_val": len(fold.val), "n_test": len(fold.test)})
                    mlflow.log_metrics({k: v for k, v in scores.items() if np.isfinite(v)} | {"seconds": seconds})
                fold_rows.append({"system": label, "fold": fold.name, **scores, "seconds": seconds})
                log.info("%s %s: balanced accuracy %.3f (%.0f s)", label, fold.name, scores["balanced_accuracy"], seconds)
        except WeightsUnavailableError as exc:
            row.update(available=False, note=f"unavailable: {exc}", reason="unavailable: no pretrained weights (see note)")
            mlflow.set_tag("unavailable", str(exc)[:5000])
            return row, []
        n_train = int(np.mean([len(f.train) + len(f.val) for f in folds]))
        n_test = int(np.mean([len(f.test) for f in folds]))
        for metric in REPORTED:
            row[metric] = fold_interval(np.array([r[metric] for r in fold_rows]), n_train, n_test, bounds=(0.0, 1.0))
            mlflow.log_metrics({f"{metric}_{k}": v for k, v in row[metric].items() if k != "folds" and np.isfinite(v)})
        row["seconds_per_fold"] = (time.perf_counter() - started) / len(folds)
        mlflow.log_metric("seconds_per_fold", row["seconds_per_fold"])
    return row, fold_rows


def _cell(summary: dict[str, float]) -> str:
    if not np.isfinite(summary["mean"]):
        return "-"
    if not np.isfinite(summary["low"]):
        return f"{summary['mean']:.2f}"
    return f"{summary['mean']:.2f} [{summary['low']:.2f}, {summary['high']:.2f}]"


def table_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    """Cells for the terminal and markdown tables: system, each metric as mean [CI], s/fold."""
    cells = []
    for row in rows:
        if not row["available"]:
            cells.append([row["system"], row["reason"], *[""] * len(REPORTED)])
        else:
            cells.append([row["system"], *(_cell(row[m]) for m in REPORTED), f"{row['seconds_per_fold']:.0f}"])
    return cells


def markdown_report(rows: list[dict[str, Any]], data: Data, folds: list[Fold], settings: Settings, command: str, seconds: float) -> str:
    c = settings.compare
    header = ["system", *(HEADERS[m] for m in REPORTED), "s / fold"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row, cells in zip(rows, table_rows(rows)):
        if row["available"]:
            lines.append("| " + " | ".join(cells) + " |")
        else:
            lines.append(f"| {row['system']} | {row['reason']} |" + " |" * (len(header) - 2))
    counts = ", ".join(f"{label} {n}" for label, n in data.frame["label"].value_counts().reindex(settings.data.classes).fillna(0).astype(int).items())
    averaging = "of the positive class" if len(settings.data.classes) == 2 else "macro-averaged over classes (specificity one-vs-rest)"
    trained = [name for name in c.systems if name not in ("resnet50-probe", "metadata-probe")]
    epochs = (
        f"Epochs: transfer {settings.train.head_epochs}+{settings.train.finetune_epochs}, scratch {c.scratch_epochs} "
        f"(early stopping on val, patience {settings.train.early_stopping_patience})."
        if trained
        else "Probes only: no network is trained."
    )
    notes = "\n".join(f"- `{name}`: {text}" for name, text in SYSTEMS.items() if name in c.systems)
    notes += "".join(f"\n- `{row['system']}` {row['note']}" for row in rows if not row["available"])
    return f"""## osteo compare: {', '.join(settings.data.classes)}

`{command}` on {datetime.now(UTC):%Y-%m-%d}, {seconds / 60:.1f} min on this machine.
{len(data.frame)} images ({counts}); {len(data.excluded)} label-conflicting copies excluded; dataset `{data.identity[:16]}`.
{c.folds}-fold stratified group CV x {c.repeats} repeat(s) = {len(folds)} folds, duplicate groups kept within one part;
each fold's training part gives {c.val_fraction:.0%} to val (early stopping, temperature, threshold). Positive class `{settings.data.positive}`;
sensitivity, specificity and F1 {averaging}. Cells: mean over folds [95% corrected resampled t interval].
{epochs}

{chr(10).join(lines)}

{notes}
"""


def compare(data_dir: Path, settings: Settings, command: str = "osteo compare", out_dir: Path | None = None) -> CompareResult:
    """Run every configured system at every configured size on identical folds."""
    started = time.perf_counter()
    runtime = configure_runtime(settings)
    tracking.configure(settings)
    data = load_data(data_dir, settings)
    c = settings.compare
    folds = group_folds(data.labels, data.frame["group"].to_numpy(), c.folds, c.repeats, c.val_fraction, settings.seed)
    rows, fold_rows = [], []
    with mlflow.start_run(run_name=f"compare-{data.identity[:8]}", tags={"osteo.kind": "compare"}) as parent:
        tracking.log_settings(settings)
        tracking.log_environment()
        mlflow.log_params({"dataset_hash": data.identity, "n_images": len(data.frame), "cv": f"{c.folds}x{c.repeats}"})
        tracking.log_json({"files": data.frame[["path", "label", "sha256", "group"]].to_dict(orient="records"), "excluded": data.excluded, "folds": {f.name: {"train": f.train.tolist(), "val": f.val.tolist(), "test": f.test.tolist()} for f in folds}}, "compare_folds.json")
        for name in c.systems:
            for size in [None] if name in SIZE_FREE else c.sizes:
                if size is not None:
                    _ensure_pixels(data, size, settings)
                row, per_fold = run_system(name, size, data, folds, settings, runtime["xla"])
                rows.append(row)
                fold_rows.extend(per_fold)
        seconds = time.perf_counter() - started
        markdown = markdown_report(rows, data, folds, settings, command, seconds)
        target = out_dir or settings.output_dir / "compare"
        target.mkdir(parents=True, exist_ok=True)
        files = {"markdown": target / "comparison.md", "json": target / "comparison.json", "plot": target / "comparison.png"}
        files["markdown"].write_text(markdown)
        write_json(files["json"], {"rows": rows, "folds": fold_rows, "dataset_hash": data.identity, "command": command, "seconds": seconds})
        figure = plots.comparison_chart(rows, ["balanced_accuracy", "recall", "specificity", "roc_auc"])
        figure.savefig(files["plot"], dpi=120)
        plt.close(figure)
        for path in files.values():
            mlflow.log_artifact(str(path))
        return CompareResult(rows, fold_rows, markdown, parent.info.run_id, files, seconds)
