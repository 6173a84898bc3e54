"""Register a trained run, gate and promote it, roll back, and list versions.

Alias moves are ordered so that ``production`` is never changed by a failed gate and never left
dangling by a crash: tags first, then ``previous``, then ``production`` (each one atomic write).
They happen under a registry lock, after checking that ``production`` is still the version the gate
compared against (compare-and-set), so two promotions racing cannot both pass against one old
production. Every step is safe to retry: registering a run again returns its version, and a
promotion retried after it succeeded reports the recorded decision."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from osteo_pipeline.config import Settings
from osteo_pipeline.core.gate import (
    PASSED,
    REJECTED,
    Cases,
    FloorEvidence,
    GateDecision,
    GatePolicy,
    decide,
)
from osteo_pipeline.core.model_card import (
    CardData,
    CardIdentity,
    CardModel,
    CardResults,
    render_model_card,
)
from osteo_pipeline.core.redact import redact_url
from osteo_pipeline.io import tracking
from osteo_pipeline.io.registry import (
    PREVIOUS,
    PRODUCTION,
    REPLACED_TAG,
    ROLLED_BACK_TAG,
    STAGING,
    Registry,
    RegistryError,
    model_names,
)
from osteo_pipeline.io.run_artifacts import (
    DATASET_HASH_TAG,
    MODEL_CARD_TAG,
    GateRecord,
    TrainingRun,
    log_model_card,
    tagged_metrics,
)
from osteo_pipeline.steps.gate_data import evaluation_set, predict_set, without_seen


def open_registry(settings: Settings) -> Registry:
    tracking.configure(settings)
    return Registry(settings.registry.model_name, MlflowClient())


def register_run(run_id: str, settings: Settings) -> str:
    """Register the run's ``model`` as a new version tagged with its metrics and data, alias
    ``staging``; log its model card. Returns the version. Idempotent: a run registered before
    (a retried task, a second ``osteo register``) gets its existing version back, with the card,
    tags and alias completed."""
    registry = open_registry(settings)
    run = TrainingRun(run_id, registry.client)
    try:
        tags = run.version_tags()
    except (MlflowException, OSError) as exc:
        raise RegistryError(
            redact_url(
                f"run {run_id!r} is not an `osteo train` run in "
                f"{tracking.tracking_uri(settings)}: {str(exc)[:200]}"
            )
        ) from exc
    existing = registry.version_of_run(run_id)
    if existing is not None:
        version = str(existing.version)
        registry.tag(version, tags)
    else:
        model_uri = _logged_model_uri(run_id, run.run.info.experiment_id)
        version = str(registry.create_version(model_uri, run_id, tags).version)
    card = log_model_card(run_id, version, _model_card(run, registry.name, version))
    registry.tag(version, {MODEL_CARD_TAG: card})
    registry.set_alias(STAGING, version)
    return version


def _model_card(run: TrainingRun, name: str, version: str) -> str:
    split, evaluation = run.split, run.evaluation
    return render_model_card(
        identity=CardIdentity(name=name, version=version, run_id=run.run_id),
        data=CardData(
            classes=run.classes,
            dataset_hash=split.dataset_hash,
            counts=split.counts(),
            excluded=len(split.excluded),
        ),
        model=CardModel(
            weights=run.backbone_weights or "?",
            input_size=run.input_size,
            roi=run.roi,
            params=run.chosen_params,
        ),
        results=CardResults(
            positive=evaluation.positive_class,
            metrics=evaluation.metrics,
            calibration=evaluation.calibration,
            cv=run.cv_estimate,
            image_grids=run.image_grids or "not logged",
            clinical=evaluation.clinical,
        ),
    )


def _logged_model_uri(run_id: str, experiment_id: str) -> str:
    models = mlflow.search_logged_models(
        experiment_ids=[experiment_id],
        filter_string=f"source_run_id = '{run_id}'",
        output_format="list",
    )
    if not models:
        raise RegistryError(f"run {run_id} has no logged model")
    return models[0].model_uri


def promote(
    settings: Settings, version: str | None = None, data_dir: Path | None = None
) -> GateDecision:
    """Gate ``version`` (default: ``staging``) against production on the candidate's test set;
    move ``production`` only when it passes (``core.gate``: an inconclusive comparison keeps
    production)."""
    registry = open_registry(settings)
    # The candidate, and the production it is gated against.
    candidate = registry.version(version) if version else registry.by_alias(STAGING)
    if candidate is None:
        raise RegistryError(
            f"no candidate: model {registry.name!r} has no '{STAGING}' alias; pass --version"
        )
    production = registry.by_alias(PRODUCTION)
    if production is not None and production.version == candidate.version:
        record = GateRecord.from_tags(candidate.tags)
        if record is not None and record.decision == PASSED:  # a retry after its own promotion
            return _already_promoted(candidate)
        raise RegistryError(f"version {candidate.version} is already {PRODUCTION}")
    # The candidate's test images, without copies of what either model trained on.
    run = TrainingRun(candidate.run_id, registry.client)
    compared = [v for v in (candidate, production) if v is not None]
    data = without_seen(
        evaluation_set(run, data_dir), [registry.uri(v.version) for v in compared], settings
    )
    # The gate's decision on the labels each model serves.
    decision = decide(
        cases=Cases(data.y_true, data.positive, data.groups),
        candidate=predict_set(registry.uri(candidate.version), data),
        production=predict_set(registry.uri(production.version), data) if production else None,
        policy=_policy(settings),
        also_floored=_cv_floors(run, settings),
    )
    gated_against = str(production.version) if production else None
    decision.extra = {
        "candidate": str(candidate.version),
        "production": gated_against,
        "evaluation_dataset": data.dataset_hash,
        "left_out": data.left_out,
    }
    if data.left_out:
        kinds = Counter(data.left_out.values())
        counted = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
        decision.reasons.append(
            f"left out {len(data.left_out)} test images that are copies of images (or images of "
            f"patients) a compared model trained on ({counted}); gated on {len(data.y_true)}"
        )
    # The decision on the candidate's tags, then the aliases.
    return _record_and_move(registry, candidate, gated_against, decision, data.dataset_hash)


def _policy(settings: Settings) -> GatePolicy:
    r = settings.registry
    return GatePolicy(
        floors=r.floors,
        compare_metric=r.compare_metric,
        margin=r.margin,
        min_paired_cases=r.min_paired_cases,
        n_resamples=r.bootstrap_resamples,
        seed=settings.seed,
    )


def _cv_floors(run: TrainingRun, settings: Settings) -> FloorEvidence | None:
    """The lower ends of the candidate's cross-validated estimate, which the floors apply to as
    well (``registry.floors_on: cv_lower``), when it has one."""
    if settings.registry.floors_on != "cv_lower":
        return None
    estimate = run.cv_estimate
    if estimate is None and run.cross_validated:
        raise RegistryError(
            f"run {run.run_id} was cross-validated but its cv_estimate.json cannot be read: "
            "the CV floors cannot be checked"
        )
    if estimate is None:
        return None
    return FloorEvidence(
        {name: estimate.metrics.get(name, {}).get("low") for name in settings.registry.floors},
        f"CV lower bound ({estimate.folds}-fold)",
    )


def _record_and_move(
    registry: Registry,
    candidate: ModelVersion,
    gated_against: str | None,
    decision: GateDecision,
    dataset_hash: str,
) -> GateDecision:
    """Tag the decision on the candidate and, when it passed, move the aliases. Compare-and-set:
    under the registry lock, production must still be the version the gate compared against;
    another promotion that won the race refuses this one."""
    with registry.lock("promotion"):
        current = registry.by_alias(PRODUCTION)
        now = str(current.version) if current else None
        if now == str(candidate.version):  # another attempt at this same promotion got there first
            return _already_promoted(registry.version(candidate.version))
        if decision.passed and now != gated_against:
            decision.passed, decision.verdict = False, REJECTED
            decision.reasons.append(
                f"production moved from {gated_against or 'none'} to {now} while the gate ran: "
                "not promoted; run `osteo promote` again to gate against it"
            )
            decision.extra["production"] = now
        record = GateRecord(decision.verdict, decision.summary, gated_against, dataset_hash)
        registry.tag(candidate.version, record.as_tags())
        if not decision.passed:
            return decision
        if gated_against is not None:
            registry.tag(candidate.version, {REPLACED_TAG: gated_against})
            registry.set_alias(PREVIOUS, gated_against)
        registry.set_alias(PRODUCTION, candidate.version)
        staged = registry.by_alias(STAGING)
        if staged is not None and staged.version == candidate.version:
            registry.drop_alias(STAGING)
    return decision


def _already_promoted(candidate: ModelVersion) -> GateDecision:
    """The decision an earlier attempt recorded, for a retry that finds its promotion done."""
    record = GateRecord.from_tags(candidate.tags) or GateRecord(PASSED, "", None, None)
    reasons = [
        f"already promoted: version {candidate.version} is production "
        f"(an earlier attempt's gate: {record.reason})"
    ]
    extra = {
        "candidate": str(candidate.version),
        "production": record.evaluated_against,
        "evaluation_dataset": record.evaluation_dataset,
    }
    return GateDecision(True, reasons, tagged_metrics(candidate.tags), extra=extra)


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
                    f"nothing to roll back to: version {production.version} replaced no "
                    "earlier version"
                )
            previous = registry.version(target)
        registry.set_alias(PRODUCTION, previous.version)
        registry.tag(production.version, {ROLLED_BACK_TAG: "true"})
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
        for v in registry.versions():
            metrics, record = tagged_metrics(v.tags), GateRecord.from_tags(v.tags)
            rows.append(
                {
                    "model": name,
                    "version": int(v.version),
                    "aliases": sorted(by_version.get(str(v.version), [])),
                    "run_id": v.run_id,
                    **{m: metrics.get(m) for m in LISTED_METRICS},
                    "dataset_hash": (v.tags.get(DATASET_HASH_TAG) or "")[:12],
                    "gate": record.decision if record else "",
                    "created": pd.Timestamp(v.creation_timestamp, unit="ms").strftime(
                        "%Y-%m-%d %H:%M"
                    ),
                }
            )
    return rows
