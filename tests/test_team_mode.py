"""Team mode for real: PostgreSQL + an S3 endpoint (moto_server) + `mlflow server` proxying
artifacts to S3, all on 127.0.0.1. The retrain flow pulls its batch from S3 and runs against the
server; runs and registry rows must land in PostgreSQL, model files in the bucket, and no
credential in any param or tag. Everything started is stopped, also on failure."""

import base64
import os

import boto3
import mlflow
import pandas as pd
import psycopg
import pytest
from mlflow.tracking import MlflowClient

from flows.retrain import retrain_flow
from tests.integration_services import mlflow_server, pg_bin, postgres, s3_endpoint

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]
KEY_ID, SECRET = "osteo-test-key-id-7d1e", "osteo-test-secret-9f2c4b"
BUCKET = "osteo-team"


@pytest.mark.skipif(
    pg_bin() is None, reason="PostgreSQL server binaries not installed (.ci/run installs them)"
)
def test_retrain_flow_against_postgres_and_s3(
    synth_dir, config_file, train_settings, tmp_path, monkeypatch
):
    credentials = {
        "AWS_ACCESS_KEY_ID": KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for name, value in credentials.items():
        monkeypatch.setenv(name, value)
    with postgres() as database, s3_endpoint(tmp_path) as endpoint:
        monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", endpoint)
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket=BUCKET)
        data = synth_dir(per_class=10)
        for i, image in enumerate(sorted(p for p in data.rglob("*") if p.is_file())):
            extra = {"ChecksumAlgorithm": "SHA256"} if i % 2 else {}
            s3.put_object(
                Bucket=BUCKET,
                Key=f"incoming/{image.parent.name}/{image.name}",
                Body=image.read_bytes(),
                **extra,
            )

        server_env = credentials | {"MLFLOW_S3_ENDPOINT_URL": endpoint}
        with mlflow_server(tmp_path, database, f"s3://{BUCKET}/mlflow", server_env) as server:
            monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
            result = retrain_flow(
                f"s3://{BUCKET}/incoming",
                str(config_file),
                ["registry.floors={}", f"tracking.uri={server}", "tune.trials=1"],
            )
            assert result["promoted"]

            with psycopg.connect(database) as connection, connection.cursor() as cursor:
                cursor.execute("select count(*) from runs")
                assert cursor.fetchone()[0] >= 3  # study, its trial, the refit
                cursor.execute("select name from registered_models")
                assert cursor.fetchall() == [(train_settings.registry.model_name,)]
                cursor.execute("select alias, version from registered_model_aliases")
                assert ("production", 1) in cursor.fetchall()

            keys = [
                o["Key"]
                for page in s3.get_paginator("list_objects_v2").paginate(
                    Bucket=BUCKET, Prefix="mlflow/"
                )
                for o in page.get("Contents", [])
            ]
            assert any(k.endswith("MLmodel") for k in keys) and any(
                k.endswith("model.keras") for k in keys
            )

            mlflow.set_tracking_uri(server)
            model = mlflow.pyfunc.load_model(
                f"models:/{train_settings.registry.model_name}@production"
            )
            image = base64.b64encode(next(data.rglob("*.jpg")).read_bytes()).decode()
            assert model.predict(pd.DataFrame({"image": [image]}))["label"][0] in {
                "normal",
                "osteoporosis",
            }

            client = MlflowClient()
            experiment = client.get_experiment_by_name(train_settings.tracking.experiment)
            logged = []
            for run in client.search_runs([experiment.experiment_id]):
                logged += [
                    *run.data.params.values(),
                    *run.data.params.keys(),
                    *run.data.tags.values(),
                ]
            for version in client.search_model_versions(
                f"name = '{train_settings.registry.model_name}'"
            ):
                logged += list(version.tags.values())
            assert logged and not [v for v in logged if KEY_ID in str(v) or SECRET in str(v)]
    assert os.environ["MLFLOW_S3_ENDPOINT_URL"] == endpoint
