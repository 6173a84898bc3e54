import pytest
import yaml


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API for the flow tests (started once: it takes seconds)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def config_file(train_settings, tmp_path):
    """The tiny training settings as a YAML file, the way flows and deployments receive them."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(train_settings.model_dump(mode="json")))
    return path
