"""Serving latency: p50/p95 of a request to `mlflow models serve` vs the raw in-process model call
on the same image, batch 1 and 16, measured in the same run. Goal: server p50 <= 1.3x raw (batch 1).

    .venv/bin/python bench/serving_latency.py [--size 224] [--requests 60]
        [--out bench/results/serving_latency.json]

The model is a real ResNet-50 pyfunc (random init: latency does not depend on the weights' values)
logged to a throw-away MLflow store; the server binds 127.0.0.1 only."""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mlflow  # noqa: E402
import numpy as np  # noqa: E402
import requests  # noqa: E402

from osteo_pipeline.config import ValidationSettings  # noqa: E402
from osteo_pipeline.core.model import ModelSpec, build_model  # noqa: E402
from osteo_pipeline.core.preprocess import load_pixels, model_input  # noqa: E402
from osteo_pipeline.core.synth import generate  # noqa: E402
from osteo_pipeline.serving import compiled_forward, log_pyfunc  # noqa: E402
from tests.servers import free_port, model_server  # noqa: E402


def percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.array(samples) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "n": len(samples),
    }


def timed(call, repeats: int) -> list[float]:  # noqa: ANN001
    call()  # warm-up
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--out", type=Path, default=Path("bench/results/serving_latency.json"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="osteo-bench-"))
    uri = f"sqlite:///{work / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(
        experiment_id=mlflow.create_experiment(
            "bench", artifact_location=(work / "mlruns").as_uri()
        )
    )
    model = build_model(ModelSpec(("normal", "osteoporosis"), args.size, 256, 0.3), None)
    sample = generate(["normal"], 1, args.size, seed=0)[0]
    buffer = io.BytesIO()
    sample.image.convert("L").resize((args.size, args.size)).save(buffer, format="JPEG", quality=92)
    jpeg = buffer.getvalue()
    pixels = load_pixels(jpeg, args.size, 10**8)[None]
    with mlflow.start_run() as run:
        info = log_pyfunc(
            model,
            ["normal", "osteoporosis"],
            args.size,
            40_000_000,
            run.info.run_id,
            bounds=ValidationSettings().image_bounds,
        )

    forward = compiled_forward(model)
    results: dict[str, dict] = {"image": {"side_px": args.size, "jpeg_bytes": len(jpeg)}}
    for batch in (1, 16):
        x = model_input(np.repeat(pixels, batch, axis=0))
        results[f"raw_model_call_batch{batch}"] = percentiles(
            timed(lambda x=x: np.asarray(forward(x)), args.requests)
        )
        results[f"keras_predict_batch{batch}"] = percentiles(
            timed(lambda x=x: model.predict(x, verbose=0), max(10, args.requests // 3))
        )

    image = base64.b64encode(jpeg).decode()
    port = free_port()
    with model_server(info.model_uri, port, uri, log=work / "serve.log"):
        url = f"http://127.0.0.1:{port}/invocations"
        session = requests.Session()
        for batch in (1, 16):
            payload = {"dataframe_split": {"columns": ["image"], "data": [[image]] * batch}}

            def post(payload=payload) -> None:  # noqa: ANN001
                response = session.post(url, json=payload, timeout=60)
                response.raise_for_status()

            results[f"server_request_batch{batch}"] = percentiles(timed(post, args.requests))
    for batch in (1, 16):
        results[f"ratio_server_vs_raw_p50_batch{batch}"] = round(
            results[f"server_request_batch{batch}"]["p50_ms"]
            / results[f"raw_model_call_batch{batch}"]["p50_ms"],
            3,
        )
    results["goal"] = "ratio_server_vs_raw_p50_batch1 <= 1.3"
    results["met"] = results["ratio_server_vs_raw_p50_batch1"] <= 1.3
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
