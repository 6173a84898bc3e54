"""Answers name the registered model and version that gave them (``model_version``): through
`osteo serve`'s scoring server and through ``load_registered`` in a process."""

import json

import numpy as np
import pandas as pd
import pytest
from mlflow.pyfunc.scoring_server import SERVING_MODEL_CONFIG, load_model_with_mlflow_config
from mlflow.tracking import MlflowClient
from PIL import Image

from osteo_pipeline.io.registry import Registry, RegistryError, registered_version
from osteo_pipeline.serving import IMAGE_COLUMN, encode_image, load_registered
from osteo_pipeline.steps import serve
from osteo_pipeline.steps.registry import register_run
from osteo_pipeline.steps.split import split_dataset
from osteo_pipeline.steps.validate import validate_folder
from tests.registry_helpers import log_candidate


def test_only_a_uri_naming_a_registered_version_has_one(train_settings):
    client = MlflowClient(train_settings.tracking.uri)
    assert registered_version("models:/osteo-knee/12", client) == ("osteo-knee", "12")
    for unregistered in ("runs:/0123abcd/model", "models:/m-0123abcd", "/tmp/model"):
        assert registered_version(unregistered, client) is None
    with pytest.raises(RegistryError, match="model 'osteo-knee' has no 'production' alias"):
        registered_version("models:/osteo-knee@production", client)


@pytest.mark.slow
def test_answers_name_the_registered_model_and_version(synth_dir, train_settings, monkeypatch):
    name = train_settings.registry.model_name
    split = split_dataset(validate_folder(synth_dir(per_class=12), train_settings), train_settings)
    run_id = log_candidate(split, train_settings, 1.0)
    assert register_run(run_id, train_settings) == "1"
    with Image.open(split.data_dir / split.files["path"][0]) as first:
        frame = pd.DataFrame({IMAGE_COLUMN: [encode_image(np.asarray(first.convert("L")))]})

    def answered_by(model) -> list[str]:  # noqa: ANN001
        return model.predict(frame)["model_version"].tolist()

    # In a process: an alias is resolved once, to the version it names.
    assert answered_by(load_registered(f"models:/{name}@staging")) == [f"{name}/1"]
    assert answered_by(load_registered(f"models:/{name}/1")) == [f"{name}/1"]
    assert answered_by(load_registered(f"runs:/{run_id}/model")) == [""]  # not a version

    # `osteo serve`: the scoring server runs that exact version, its environment saying which.
    started = {}
    monkeypatch.setattr(
        serve.subprocess, "Popen", lambda command, env: started.update(command=command, env=env)
    )
    serve.scoring_server(Registry(name, MlflowClient()), "1", train_settings)
    command = started["command"]
    served = command.index("serve")
    assert command[served : served + 3] == ["serve", "-m", f"models:/{name}/1"]
    config = started["env"][SERVING_MODEL_CONFIG]
    assert json.loads(config) == {"registered_model": name, "registered_version": "1"}
    monkeypatch.setenv(SERVING_MODEL_CONFIG, config)
    assert answered_by(load_model_with_mlflow_config(f"models:/{name}/1")) == [f"{name}/1"]
