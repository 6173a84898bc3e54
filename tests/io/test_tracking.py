"""Where runs go: the user's MLFLOW_TRACKING_URI wins over tracking.uri, on every call."""

import mlflow

from osteo_pipeline.io import tracking


def test_the_users_tracking_uri_wins_on_every_configure_in_one_process(
    tiny_settings, tmp_path, monkeypatch
):
    server = f"sqlite:///{tmp_path / 'users.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    settings = tiny_settings.model_copy(
        update={
            "tracking": tiny_settings.tracking.model_copy(
                update={"uri": f"sqlite:///{tmp_path / 'config.db'}"}
            )
        }
    )
    for _ in range(3):  # MLflow writes the URI it is given back into MLFLOW_TRACKING_URI
        tracking.configure(settings)
        assert tracking.tracking_uri(settings) == server
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    tracking.configure(settings)
    assert tracking.tracking_uri(settings) == settings.tracking.uri
    other = f"sqlite:///{tmp_path / 'changed.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)  # the user changed it meanwhile
    tracking.configure(settings)
    assert tracking.tracking_uri(settings) == other


def test_interval_metrics_are_logged_flat_and_nan_is_left_out(tiny_settings, tmp_path):
    """{metric: {value, low, high}} becomes metric, metric_ci_low, metric_ci_high; NaN (a CI of
    one class, an AUC of one label) is left out rather than rejected by MLflow."""
    tracking.configure(
        tiny_settings.model_copy(
            update={
                "tracking": tiny_settings.tracking.model_copy(
                    update={"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
                )
            }
        )
    )
    with mlflow.start_run() as run:
        tracking.log_intervals(
            {"roc_auc": {"value": 0.7, "low": 0.5, "high": float("nan")}},
            "cv_",
            extra={"ece": 0.1, "ece_raw": float("nan")},
        )
    logged = mlflow.get_run(run.info.run_id).data.metrics
    assert logged == {"cv_roc_auc": 0.7, "cv_roc_auc_ci_low": 0.5, "cv_ece": 0.1}


def test_the_pipelines_experiments_open_on_their_training_runs(tiny_settings, tmp_path):
    """MLflow 3's UI opens an experiment on its GenAI overview unless ``mlflow.experimentKind``
    says model development: set on the experiment configure creates and on one that existed."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = tiny_settings.model_copy(
        update={
            "tracking": tiny_settings.tracking.model_copy(
                update={"uri": uri, "artifact_root": str(tmp_path / "mlruns")}
            )
        }
    )
    created = tracking.configure(settings)
    mlflow.set_tracking_uri(uri)
    older = mlflow.create_experiment(
        "made-before", artifact_location=(tmp_path / "older").as_uri()
    )  # no kind, as earlier versions left it
    existing = tracking.configure(
        settings.model_copy(
            update={"tracking": settings.tracking.model_copy(update={"experiment": "made-before"})}
        )
    )
    assert existing == older
    for experiment_id in (created, older):
        assert (
            mlflow.get_experiment(experiment_id).tags["mlflow.experimentKind"]
            == "custom_model_development"
        )
