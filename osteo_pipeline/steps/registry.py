"""Register a trained run, gate and promote it, roll back, and list versions.

Alias moves are ordered so that ``production`` is never changed by a failed gate and never left
dangling by a crash: tags first, then ``previous``, then ``production`` (each one atomic write).
They happen under a registry lock, after checking that ``production`` is still the version the gate
compared against (compare-and-set), so two promotions racing cannot both pass against one old
production. Every step is safe to retry: registering a run again returns its version, and a
promotion retried after it succeeded reports the recorded decision."""

from __future__ import annotations

import base64
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from osteo_pipeline.config import Settings
from osteo_pipeline.core.gate import GateDecision, decide
from osteo_pipeline.core.model_card import render_model_card
from osteo_pipeline.core.redact import redact_url
from osteo_pipeline.io import tracking
from osteo_pipeline.io.copies import Content
from osteo_pipeline.io.registry import (
    PREVIOUS,
    PRODUCTION,
    REPLACED_TAG,
    STAGING,
    Registry,
    RegistryError,
    model_names,
)
from osteo_pipeline.serving import IMAGE_COLUMN, probability_column
from osteo_pipeline.steps.seen import seen_images, training_images

KEY_METRICS = ("accuracy", "balanced_accuracy", "recall", "specificity", "f1", "roc_auc")


def open_registry(settings: Settings) -> Registry:
    tracking.configure(settings)
    return Registry(settings.registry.model_name, MlflowClient())


def register_run(run_id: str, settings: Settings) -> str:
    """Register the run's ``model`` as a new version tagged with its metrics and data, alias
    ``staging``; log its model card. Returns the version. Idempotent: a run registered before
    (a retried task, a second ``osteo register``) gets its existing version back, with the card,
    tags and alias completed."""
    registry = open_registry(settings)
    client = registry.client
    try:
        run = client.get_run(run_id)
        evaluation = mlflow.artifacts.load_dict(f"runs:/{run_id}/test_evaluation.json")
    except (MlflowException, OSError) as exc:
        raise RegistryError(
            redact_url(
                f"run {run_id!r} is not an `osteo train` run in {tracking.tracking_uri(settings)}: {str(exc)[:200]}"
            )
        ) from exc
    split = mlflow.artifacts.load_dict(f"runs:/{run_id}/split_manifest.json")
    metrics = evaluation["metrics"]
    tags = {
        f"metric.test_{k}": f"{metrics[k]['value']:.4f}"
        for k in KEY_METRICS
        if metrics.get(k, {}).get("value") is not None
    }
    tags |= {
        "dataset_hash": split["dataset_hash"],
        "run_id": run_id,
        "backbone_weights": run.data.tags.get("backbone_weights", ""),
    }
    existing = registry.version_of_run(run_id)
    if existing is not None:
        version = str(existing.version)
        registry.tag(version, tags)
    else:
        version = str(
            registry.create_version(
                _logged_model_uri(run_id, run.info.experiment_id), run_id, tags
            ).version
        )
    params = {
        k.removeprefix("chosen."): v for k, v in run.data.params.items() if k.startswith("chosen.")
    }
    classes = json.loads(run.data.params.get("data.classes", "[]")) or list(settings.data.classes)
    card = render_model_card(
        registry.name,
        version,
        run_id,
        classes,
        evaluation["positive_class"],
        split["dataset_hash"],
        split["counts"],
        len(split["excluded"]),
        metrics,
        params,
        run.data.tags.get("backbone_weights", "?"),
        int(run.data.params.get("model.input_size", 0)),
        evaluation.get("calibration"),
        run.data.tags.get("image_grids", "not logged"),
        run.data.params.get("model.roi", "image"),
        cv_estimate(run_id),
    )
    client.log_text(run_id, card, f"model_card_v{version}.md")
    registry.tag(version, {"model_card": f"runs:/{run_id}/model_card_v{version}.md"})
    registry.set_alias(STAGING, version)
    return version


def cv_estimate(run_id: str) -> dict[str, Any] | None:
    """The run's out-of-fold estimate (``cv_estimate.json``), when its parameters were chosen by
    cross-validation."""
    try:
        return mlflow.artifacts.load_dict(f"runs:/{run_id}/cv_estimate.json")
    except (MlflowException, OSError):
        return None


def _logged_model_uri(run_id: str, experiment_id: str) -> str:
    models = mlflow.search_logged_models(
        experiment_ids=[experiment_id],
        filter_string=f"source_run_id = '{run_id}'",
        output_format="list",
    )
    if not models:
        raise RegistryError(f"run {run_id} has no logged model")
    return models[0].model_uri


@dataclass
class EvaluationSet:
    y_true: np.ndarray
    images: list[str]  # base64 file bytes, as a client would send them
    classes: list[str]
    positive: int
    dataset_hash: str
    contents: list[Content]  # the files, by content hash
    left_out: dict[str, str] = field(default_factory=dict)  # path -> why it was left out


def evaluation_set(run_id: str, data_dir: Path | None) -> EvaluationSet:
    """The candidate's held-out test images (from its logged split manifest), read from disk."""
    split = mlflow.artifacts.load_dict(f"runs:/{run_id}/split_manifest.json")
    evaluation = mlflow.artifacts.load_dict(f"runs:/{run_id}/test_evaluation.json")
    root = Path(data_dir or split["data_dir"])
    test = [f for f in split["files"] if f["split"] == "test"]
    missing = [f["path"] for f in test if not (root / f["path"]).is_file()]
    if missing:
        raise RegistryError(
            f"evaluation images missing under {root} (pass --data-dir): {missing[:5]}"
        )
    config = mlflow.artifacts.load_dict(f"runs:/{run_id}/config.json")
    classes = config["data"]["classes"]
    return EvaluationSet(
        y_true=np.array([classes.index(f["label"]) for f in test]),
        images=[base64.b64encode((root / f["path"]).read_bytes()).decode("ascii") for f in test],
        classes=classes,
        positive=classes.index(evaluation["positive_class"]),
        dataset_hash=split["dataset_hash"],
        contents=[Content(f["sha256"], root / f["path"], None) for f in test],
    )


def without_seen(data: EvaluationSet, model_uris: list[str], settings: Settings) -> EvaluationSet:
    """``data`` without the images that are copies (identical or derived) of images any of the
    models trained or was calibrated on: production may have trained on a derived copy of a new
    test image, and that would flatter it."""
    seen = [content for uri in model_uris for content in training_images(uri)]
    reasons = seen_images(data.contents, seen, settings)
    keep = [i for i, c in enumerate(data.contents) if c.sha256 not in reasons]
    if not keep:
        raise RegistryError(
            f"every test image of the candidate is a copy of an image {' or '.join(model_uris)} trained on: nothing left to gate on"
        )
    left_out = {str(c.path): reasons[c.sha256] for c in data.contents if c.sha256 in reasons}
    return EvaluationSet(
        data.y_true[keep],
        [data.images[i] for i in keep],
        data.classes,
        data.positive,
        data.dataset_hash,
        [data.contents[i] for i in keep],
        left_out,
    )


def predict_set(
    model_uri: str, data: EvaluationSet, batch: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """The served probabilities and labels (class indices), exactly as clients would get them."""
    model = mlflow.pyfunc.load_model(model_uri)
    frames = [
        model.predict(pd.DataFrame({IMAGE_COLUMN: data.images[i : i + batch]}))
        for i in range(0, len(data.images), batch)
    ]
    result = pd.concat(frames, ignore_index=True)
    columns = [probability_column(c) for c in data.classes]
    if not set(columns) <= set(result.columns):
        raise RegistryError(
            f"{model_uri} predicts {list(result.columns)}, not the classes {data.classes}"
        )
    unknown = set(result["label"]) - set(data.classes)
    if unknown:
        raise RegistryError(
            f"{model_uri} predicts labels {sorted(unknown)} outside the classes {data.classes}"
        )
    return result[columns].to_numpy(dtype=np.float64), result["label"].map(
        data.classes.index
    ).to_numpy(dtype=np.int64)


def promote(
    settings: Settings, version: str | None = None, data_dir: Path | None = None
) -> GateDecision:
    """Gate ``version`` (default: ``staging``) against production on the candidate's test set;
    move ``production`` only when it passes (``core.gate``: an inconclusive comparison keeps
    production)."""
    registry = open_registry(settings)
    candidate = registry.version(version) if version else registry.by_alias(STAGING)
    if candidate is None:
        raise RegistryError(
            f"no candidate: model {registry.name!r} has no '{STAGING}' alias; pass --version"
        )
    production = registry.by_alias(PRODUCTION)
    if production is not None and production.version == candidate.version:
        if candidate.tags.get("gate.decision") == "passed":  # a retry after its own promotion
            return _already_promoted(candidate)
        raise RegistryError(f"version {candidate.version} is already {PRODUCTION}")
    data = evaluation_set(candidate.run_id, data_dir)
    data = without_seen(
        data, [registry.uri(v.version) for v in (candidate, production) if v is not None], settings
    )
    candidate_proba, candidate_pred = predict_set(registry.uri(candidate.version), data)
    production_proba, production_pred = (
        predict_set(registry.uri(production.version), data) if production else (None, None)
    )
    r = settings.registry
    estimate = cv_estimate(candidate.run_id) if r.floors_on == "cv_lower" else None
    if (
        estimate is None
        and r.floors_on == "cv_lower"
        and registry.client.get_run(candidate.run_id).data.tags.get("calibrated_on")
        == "out-of-fold predictions"
    ):
        raise RegistryError(
            f"run {candidate.run_id} was cross-validated but its cv_estimate.json cannot be read: the CV floors cannot be checked"
        )
    floor_values = (
        {name: _number(estimate["metrics"].get(name, {}).get("low")) for name in r.floors}
        if estimate
        else None
    )
    decision = decide(
        data.y_true,
        candidate_proba,
        production_proba,
        data.positive,
        r.floors,
        r.compare_metric,
        r.margin,
        r.min_paired_cases,
        r.bootstrap_resamples,
        settings.seed,
        candidate_pred,
        production_pred,
        floor_values,
        f"CV lower bound ({estimate['folds']}-fold)" if estimate else "test",
    )
    gated_against = str(production.version) if production else None
    decision.extra = {
        "candidate": str(candidate.version),
        "production": gated_against,
        "evaluation_dataset": data.dataset_hash,
        "left_out": data.left_out,
    }
    if data.left_out:
        kinds = ", ".join(
            f"{n} {kind}" for kind, n in sorted(Counter(data.left_out.values()).items())
        )
        decision.reasons.append(
            f"left out {len(data.left_out)} test images that are copies of images a compared model trained on ({kinds}); gated on {len(data.y_true)}"
        )
    gate_tags = {
        "gate.evaluated_against": gated_against or "none",
        "gate.evaluation_dataset": data.dataset_hash,
    }
    # Compare-and-set on the alias: under the registry lock, production must still be the
    # version the gate compared against; another promotion that won the race refuses this one.
    with registry.lock("promotion"):
        current = registry.by_alias(PRODUCTION)
        now = str(current.version) if current else None
        if now == str(candidate.version):  # another attempt at this same promotion got there first
            return _already_promoted(registry.version(candidate.version))
        if not decision.passed:
            registry.tag(
                candidate.version,
                gate_tags
                | {"gate.decision": decision.verdict, "gate.reason": decision.summary[:5000]},
            )
            return decision
        if now != gated_against:
            decision.passed, decision.verdict = False, "rejected"
            decision.reasons.append(
                f"production moved from {gated_against or 'none'} to {now} while the gate ran: not promoted; run `osteo promote` again to gate against it"
            )
            decision.extra["production"] = now
            registry.tag(
                candidate.version,
                gate_tags | {"gate.decision": "rejected", "gate.reason": decision.summary[:5000]},
            )
            return decision
        registry.tag(
            candidate.version,
            gate_tags | {"gate.decision": "passed", "gate.reason": decision.summary[:5000]},
        )
        if production is not None:
            registry.tag(candidate.version, {REPLACED_TAG: production.version})
            registry.set_alias(PREVIOUS, production.version)
        registry.set_alias(PRODUCTION, candidate.version)
        if (
            staged := registry.by_alias(STAGING)
        ) is not None and staged.version == candidate.version:
            registry.drop_alias(STAGING)
    return decision


def _number(value: Any) -> float:
    """A metric read back from JSON, where a missing value (NaN when written) is null."""
    return float("nan") if value is None else float(value)


def _already_promoted(candidate: ModelVersion) -> GateDecision:
    """The decision an earlier attempt recorded, for a retry that finds its promotion done."""
    reasons = [
        f"already promoted: version {candidate.version} is production (an earlier attempt's gate: {candidate.tags.get('gate.reason', '')})"
    ]
    metrics = {
        k.removeprefix("metric.test_"): float(v)
        for k, v in candidate.tags.items()
        if k.startswith("metric.test_")
    }
    against = candidate.tags.get("gate.evaluated_against", "none")
    extra = {
        "candidate": str(candidate.version),
        "production": None if against == "none" else against,
        "evaluation_dataset": candidate.tags.get("gate.evaluation_dataset"),
    }
    return GateDecision(True, reasons, metrics, extra=extra)


def rollback(settings: Settings) -> tuple[str, str]:
    """Move ``production`` back to ``previous``; returns (from, to) versions. Holds the same
    registry lock as a promotion, so the two never interleave their alias writes."""
    registry = open_registry(settings)
    with registry.lock("promotion"):
        production = registry.by_alias(PRODUCTION)
        if production is None:
            raise RegistryError(
                f"model {registry.name!r} has no '{PRODUCTION}' version to roll back"
            )
        previous = registry.by_alias(PREVIOUS)
        if previous is None or previous.version == production.version:
            # A crash after the last rollback's first write leaves previous == production.
            target = production.tags.get(REPLACED_TAG)
            if not target:
                raise RegistryError(
                    f"nothing to roll back to: version {production.version} replaced no earlier version"
                )
            previous = registry.version(target)
        registry.set_alias(PRODUCTION, previous.version)
        registry.tag(production.version, {"osteo.rolled_back": "true"})
        earlier = previous.tags.get(REPLACED_TAG)
        if earlier:
            registry.set_alias(PREVIOUS, earlier)
        else:
            registry.drop_alias(PREVIOUS)
    return str(production.version), str(previous.version)


LISTED_METRICS = ("balanced_accuracy", "recall", "specificity", "roc_auc")


def registered_models(settings: Settings) -> list[str]:
    """The names of every model registered in the configured store."""
    return model_names(open_registry(settings).client)


def _number(tag: str | None) -> float | None:
    """A metric tag's value as a number; None when missing or not a finite number."""
    try:
        value = float(tag) if tag is not None else None
    except ValueError:
        return None
    return value if value is not None and np.isfinite(value) else None


def list_versions(settings: Settings, models: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per version of ``models`` (default: ``registry.model_name``), by model then
    version: its aliases, run, test metrics (numbers), data, gate decision and creation time."""
    client = open_registry(settings).client
    rows = []
    for name in models or [settings.registry.model_name]:
        registry = Registry(name, client)
        by_version: dict[str, list[str]] = {}
        for alias, version in registry.aliases().items():
            by_version.setdefault(str(version), []).append(alias)
        rows += [
            {
                "model": name,
                "version": int(v.version),
                "aliases": sorted(by_version.get(str(v.version), [])),
                "run_id": v.run_id,
                **{m: _number(v.tags.get(f"metric.test_{m}")) for m in LISTED_METRICS},
                "dataset_hash": (v.tags.get("dataset_hash") or "")[:12],
                "gate": v.tags.get("gate.decision", ""),
                "created": pd.Timestamp(v.creation_timestamp, unit="ms").strftime("%Y-%m-%d %H:%M"),
            }
            for v in registry.versions()
        ]
    return rows
