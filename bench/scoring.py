"""Scoring throughput: images per second of `osteo score` end to end (listing, reading, hashing,
decoding, the model, Parquet parts, worklist) against the raw model's batch-16 throughput on the
same images already decoded, and the Spark engine (`local[2]`) against the local one on the same
cores, all measured in one run. Goal: local end to end >= 0.8x raw.

    .venv/bin/python bench/scoring.py [--images 192] [--size 224] [--source-size 512]
        [--out bench/results/scoring.json]

The model is a real ResNet-50 pyfunc (random init: speed does not depend on the weights'
values), registered in a throw-away MLflow store with the artifacts a training run logs."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from osteo_pipeline.core.model import ModelSpec, build_model  # noqa: E402
from osteo_pipeline.core.preprocess import load_views  # noqa: E402
from osteo_pipeline.steps.registry import register_run  # noqa: E402
from osteo_pipeline.steps.score import resolve_model, score_archive  # noqa: E402
from osteo_pipeline.steps.score.scorer import Scorer  # noqa: E402
from osteo_pipeline.steps.split import split_dataset  # noqa: E402
from osteo_pipeline.steps.synth import write_synthetic_dataset  # noqa: E402
from osteo_pipeline.steps.validate import validate_folder  # noqa: E402
from tests.registry_helpers import log_candidate  # noqa: E402
from tests.small import small_training_settings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--source-size", type=int, default=512)
    parser.add_argument("--spark", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", type=Path, default=Path("bench/results/scoring.json"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="osteo-bench-"))
    os.environ["XDG_CACHE_HOME"] = str(work / "cache")
    base = small_training_settings(work)
    settings = base.model_copy(
        update={"model": base.model.model_copy(update={"input_size": args.size})}
    )
    classes = list(settings.data.classes)
    write_synthetic_dataset(work / "train", classes, 12, args.source_size, 0)
    split = split_dataset(validate_folder(work / "train", settings), settings)
    resnet = build_model(ModelSpec(tuple(classes), args.size, 256, 0.3), None)
    version = register_run(log_candidate(split, settings, 0.0, model=resnet), settings)
    uri = f"models:/{settings.registry.model_name}/{version}"
    archive = work / "archive"
    write_synthetic_dataset(archive, classes, args.images // 2, args.source_size, 1)
    files = [f for f in sorted(archive.rglob("*")) if f.is_file() and not f.name.startswith(".")]

    # The raw model: batch-16 forward passes on pixels decoded beforehand.
    ref = resolve_model(settings, uri)
    scorer = Scorer.load(ref.uri, ref, classes[-1], 16)
    model = scorer.classifier
    pixels = np.concatenate(
        [load_views(f.read_bytes(), model.size, model.max_pixels, model.roi) for f in files]
    )
    model.predict_pixels(pixels[:16])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(pixels), 16):
        model.predict_pixels(pixels[i : i + 16])
    raw = len(files) / (time.perf_counter() - start)

    results = {"images": len(files), "input_size": args.size, "source_size": args.source_size}
    results["raw_batch16_images_per_s"] = round(raw, 2)
    engines = ["local", "spark"] if args.spark else ["local"]
    for engine in engines:
        scoring = settings.scoring.model_copy(update={"engine": engine, "spark_master": "local[2]"})
        run = settings.model_copy(update={"scoring": scoring})
        start = time.perf_counter()
        result = score_archive(archive, work / f"out-{engine}", run, uri)
        seconds = time.perf_counter() - start
        assert result.scored == len(files) and result.errors == 0, result
        results[f"{engine}_seconds"] = round(seconds, 1)
        results[f"{engine}_images_per_s"] = round(len(files) / seconds, 2)
    results["local_vs_raw"] = round(results["local_images_per_s"] / raw, 3)
    if args.spark:
        results["spark_vs_local"] = round(
            results["spark_images_per_s"] / results["local_images_per_s"], 3
        )
    results["cpus"] = os.cpu_count()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
