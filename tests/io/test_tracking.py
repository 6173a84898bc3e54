"""Where runs go: the user's MLFLOW_TRACKING_URI wins over tracking.uri, on every call."""

from osteo_pipeline.io import tracking


def test_the_users_tracking_uri_wins_on_every_configure_in_one_process(tiny_settings, tmp_path, monkeypatch):
    server = f"sqlite:///{tmp_path / 'users.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    settings = tiny_settings.model_copy(update={"tracking": tiny_settings.tracking.model_copy(update={"uri": f"sqlite:///{tmp_path / 'config.db'}"})})
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
