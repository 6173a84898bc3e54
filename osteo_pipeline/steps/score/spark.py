"""The Spark engine of ``osteo score`` (the ``spark`` extra; Java 17 or later on the machine).

Files are read by Spark's ``binaryFile`` source and scored by a
``pyspark.ml.functions.predict_batch_udf``, which loads the model once per Python worker and
feeds it batches; the rows come from the same ``Scorer`` as the local engine's. One Spark job
per ``scoring.part_size`` files, each written as one Parquet part on the driver (rows are a few
hundred bytes: no image comes back), so a kill loses one part, as locally.

On a ``local[...]`` master the model is copied to a local folder once and loaded from there; on a
cluster every worker loads it from the registry, at the driver's tracking URI."""

from __future__ import annotations

import os
import sys
import tempfile
from urllib.parse import unquote, urlparse

import pandas as pd

from osteo_pipeline.config.scoring import ScoringSettings
from osteo_pipeline.errors import OsteoError
from osteo_pipeline.io.archive import ArchiveFile
from osteo_pipeline.steps.score.local import Tally, score_locally
from osteo_pipeline.steps.score.scorer import ModelRef, Scorer, content_hash

SKIPPED = "__skipped__"  # the error a worker returns for a file this version already scored


class SparkUnavailableError(OsteoError):
    """PySpark or Java is missing."""


def _local_path(uri: str) -> str:
    """A ``binaryFile`` path (``file:/a/b%20c.png``) as a plain absolute path."""
    return os.path.normpath(unquote(urlparse(uri).path))


def _session(master: str):  # noqa: ANN202 - pyspark.sql.SparkSession
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise SparkUnavailableError(
            "the spark engine needs PySpark: pip install 'osteo-pipeline[spark]' (and Java 17+)"
        ) from exc
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # workers run this interpreter
    try:
        return (
            SparkSession.builder.master(master)
            .appName("osteo-score")
            .config("spark.ui.enabled", "false")
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
            .getOrCreate()
        )
    except Exception as exc:  # Java missing or the master unreachable: py4j's own errors
        raise SparkUnavailableError(f"cannot start Spark on {master}: {exc}") from exc


def _spark_readable(file: ArchiveFile) -> bool:
    """Whether Spark reads the file under its own name: it exists, and its path has none of the
    characters Hadoop takes for a pattern or a scheme, nor a name Spark hides (``_x``, ``.x``)."""
    if file.file is None or not file.file.is_file():
        return False
    text = str(file.file.resolve())
    return not any(c in text for c in "[]{}*?:\\,") and not file.file.name.startswith(("_", "."))


def _predict_fn(
    location: str,
    tracking_uri: str,
    ref: ModelRef,
    positive: str,
    batch_size: int,
    threads: int,
    names: dict[str, str],
    done: set[tuple[str, str]],
):  # noqa: ANN202 - what predict_batch_udf's make_predict_fn returns
    """``make_predict_fn`` for ``predict_batch_udf``: runs once per Python worker, whose
    TensorFlow gets ``threads`` threads (the machine's cores shared among the workers)."""

    def make():  # noqa: ANN202
        import mlflow
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        mlflow.set_tracking_uri(tracking_uri)
        scorer = Scorer.load(location, ref, positive, batch_size)
        kinds = scorer.output_columns

        def predict(uris, contents):  # noqa: ANN001, ANN202 - numpy arrays of one batch
            paths = [names.get(_local_path(u), "") for u in uris]
            contents = [bytes(c) for c in contents]
            hashes = [content_hash(c) for c in contents]
            todo = [i for i, (p, h) in enumerate(zip(paths, hashes)) if (p, h) not in done]
            result = pd.DataFrame(index=range(len(paths)), columns=list(kinds), dtype=object)
            result["error"] = SKIPPED
            if todo:
                rows = scorer.rows(
                    [paths[i] for i in todo],
                    [contents[i] for i in todo],
                    hashes=[hashes[i] for i in todo],
                )
                result.loc[todo, list(kinds)] = rows[list(kinds)].to_numpy()
            return {
                c: result[c].astype("float64" if kind == "double" else object).to_numpy()
                for c, kind in kinds.items()
            }

        return predict

    return make


def score_on_spark(
    tally: Tally,
    ref: ModelRef,
    positive: str,
    files: list[ArchiveFile],
    done: set[tuple[str, str]],
    scoring: ScoringSettings,
) -> None:
    """Score ``files`` on Spark at ``scoring.spark_master`` into ``tally`` (whose scorer is the
    driver's). Files Spark cannot be handed by name (missing, refused by the manifest, a name
    Hadoop reads as a pattern) are scored on the driver by the same ``Scorer``, so every file
    gets its row either way."""
    import mlflow

    spark = _session(scoring.spark_master)
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql.types import DoubleType, StringType, StructField, StructType

    readable = [f for f in files if _spark_readable(f)]
    names = {os.path.normpath(str(f.file.resolve())): f.path for f in readable}
    kinds = tally.scorer.output_columns
    schema = StructType(
        [
            StructField(c, DoubleType() if kind == "double" else StringType())
            for c, kind in kinds.items()
        ]
    )
    score_locally(tally, [f for f in files if not _spark_readable(f)], done, scoring.part_size)
    with tempfile.TemporaryDirectory(prefix="osteo-score-") as tmp:
        location = ref.uri
        if scoring.spark_master.startswith("local"):
            location = mlflow.artifacts.download_artifacts(ref.uri, dst_path=tmp)
        threads = max(1, (os.cpu_count() or 1) // spark.sparkContext.defaultParallelism)
        udf = predict_batch_udf(
            _predict_fn(
                location,
                mlflow.get_tracking_uri(),
                ref,
                positive,
                scoring.batch_size,
                threads,
                names,
                done,
            ),
            return_type=schema,
            batch_size=scoring.batch_size,
        )
        for start in range(0, len(readable), scoring.part_size):
            part = [str(f.file.resolve()) for f in readable[start : start + scoring.part_size]]
            frame = (
                spark.read.format("binaryFile")
                .load(part)
                .select("path", udf("path", "content").alias("s"))
                .select("path", "s.*")
                .toPandas()
            )
            frame["path"] = [names.get(_local_path(u), "") for u in frame["path"]]
            if len(frame) != len(part) or not frame["path"].all():
                raise SparkUnavailableError(
                    f"Spark returned {len(frame)} rows for {len(part)} files: stopped, the parts "
                    "written so far are kept (run again to resume, or use --engine local)"
                )
            new = frame[frame["error"] != SKIPPED].copy()
            for column, kind in kinds.items():
                if kind == "double":
                    new[column] = new[column].astype("float64")
            tally.part(new.reset_index(drop=True), len(part))
