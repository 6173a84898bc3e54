"""Serving under load: 8 concurrent clients for 30 s against `mlflow models serve` (127.0.0.1),
half valid images (single, batch of 4, DICOM), half bad payloads of 15 kinds. Must hold: zero
5xx, every bad payload a 4xx with a reason, every valid request answered; reports throughput and
p50/p99 of the valid requests.

    .venv/bin/python bench/serving_load.py [--seconds 30] [--clients 8] [--workers 2] [--size 224]

The model is a real ResNet-50 pyfunc (random init: load behaviour does not depend on weights)."""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mlflow  # noqa: E402

from osteo_pipeline.config import ValidationSettings  # noqa: E402
from osteo_pipeline.core.model import ModelSpec, build_model  # noqa: E402
from osteo_pipeline.core.synth import generate  # noqa: E402
from osteo_pipeline.serving import log_pyfunc  # noqa: E402
from tests.load import BAD_PAYLOADS, run_load, valid_payloads  # noqa: E402
from tests.servers import free_port, model_server  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--out", type=Path, default=Path("bench/results/serving_load.json"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="osteo-load-"))
    uri = f"sqlite:///{work / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(
        experiment_id=mlflow.create_experiment("load", artifact_location=(work / "mlruns").as_uri())
    )
    images = []
    for item in generate(["normal", "osteoporosis"], 3, 512, seed=0):
        buffer = io.BytesIO()
        item.image.convert("L").save(buffer, format="JPEG", quality=92)
        images.append(buffer.getvalue())
    with mlflow.start_run() as run:
        model = build_model(ModelSpec(("normal", "osteoporosis"), args.size, 256, 0.3), None)
        info = log_pyfunc(
            model,
            ["normal", "osteoporosis"],
            args.size,
            40_000_000,
            run.info.run_id,
            bounds=ValidationSettings().image_bounds,
        )
    port = free_port()
    with model_server(info.model_uri, port, uri, log=work / "serve.log", workers=args.workers):
        report = run_load(
            f"http://127.0.0.1:{port}/invocations",
            valid_payloads(images),
            clients=args.clients,
            seconds=args.seconds,
        )
    result = {
        "clients": args.clients,
        "server_workers": args.workers,
        "input_size": args.size,
        "bad_payload_kinds": sorted(BAD_PAYLOADS),
        **report.summary(),
        "examples": {
            "server_errors": report.server_errors[:5],
            "valid_failures": report.valid_failures[:5],
            "bad_not_rejected": report.bad_not_rejected[:5],
        },
    }
    result["met"] = not (
        report.server_errors or report.valid_failures or report.bad_not_rejected
    ) and report.bad_kinds_seen == set(BAD_PAYLOADS)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
