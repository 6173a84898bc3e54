"""Cross-validated search cost: the same N-trial search scored by k-fold CV over the shared
activation cache, against a naive single-split search (no activation cache, the whole backbone
every epoch) and a single-split search with the cache, measured in the same run, as ratios.

    .venv/bin/python bench/cv_search.py [--data ../shared/data/knee-xray] [--trials 8] [--folds 5]
        [--out bench/results/cv_search.json]

Each variant is a whole ``osteo tune`` call as a user runs it (validation, split, TensorFlow
start-up, the cache built when used), on a fresh study and tracking store, from a warm pixel
cache, with the same sampler seed and search space (unfreeze depth 0-3, head 0/64/256 units, one
input size) and no pruning, so every variant runs every trial to the end."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from osteo_pipeline.io.weights import cached_or_none

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "knee-xray"
OSTEO = Path(sys.executable).parent / "osteo"
VARIANTS = {
    "naive single split": {"cv": "off", "activation_cache": False},
    "single split, activation cache": {"cv": "off", "activation_cache": True},
    "k-fold CV, shared activation cache": {"cv": "on", "activation_cache": True},
}


def _config(work: Path, args: argparse.Namespace, variant: dict) -> Path:
    config = {
        "data": {"classes": ["normal", "osteoporosis"], "ignore_unlisted_classes": True},
        "validation": {
            "fail_on_label_conflicts": False, "min_class_share": 0.05,
            "min_width": 64, "min_height": 64,
        },
        "model": {"input_size": args.size, "weights": cached_or_none()},
        "train": {
            "batch_size": 16, "head_epochs": args.head_epochs,
            "finetune_epochs": args.finetune_epochs, "cache_dir": str(args.pixel_cache),
        },
        "tune": {
            "storage": f"sqlite:///{work / 'optuna.db'}", "study_name": "bench",
            "warm_start_trials": 0, "pruner": "none",
            "unfreeze_depth": [0, 3], "head_units": [0, 64, 256], "l2": [1e-6, 0.1],
            "cv_folds": args.folds, **variant,
        },
        "tracking": {
            "uri": f"sqlite:///{work / 'mlflow.db'}", "artifact_root": str(work / "mlruns"),
        },
        "output_dir": str(work / "outputs"),
    }  # fmt: skip
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run(args: argparse.Namespace, name: str, variant: dict) -> dict:
    """One whole ``osteo tune`` call on a fresh study and store: wall and CPU time."""
    with tempfile.TemporaryDirectory(prefix="bench-cv-") as folder:
        work = Path(folder)
        command = [
            str(OSTEO),
            "tune",
            str(args.data),
            "--config",
            str(_config(work, args, variant)),
            "--trials",
            str(args.trials),
        ]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(
            command, capture_output=True, text=True, env=os.environ | {"TF_CPP_MIN_LOG_LEVEL": "3"}
        )
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
        summary = next(line for line in done.stdout.splitlines() if line.startswith("study "))
        print(f"{name}: {wall:.0f} s", file=sys.stderr)
        return {
            "variant": name,
            "wall_s": round(wall, 1),
            "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
            "result": summary,
        }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--head-epochs", type=int, default=4)
    parser.add_argument("--finetune-epochs", type=int, default=8)
    parser.add_argument(
        "--pixel-cache", type=Path, default=Path(tempfile.gettempdir()) / "osteo-bench-pixels"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cv_search.json")
    args = parser.parse_args()
    if not args.data.is_dir():  # no shared data here: a synthetic set of the same size
        args.data = Path(tempfile.mkdtemp(prefix="bench-data-")) / "synth"
        subprocess.run(
            [str(OSTEO), "synth", str(args.data), "--per-class", "34", "--size", "1024"], check=True
        )
    if not args.pixel_cache.is_dir():  # decode the images once, outside the timing
        _run(
            argparse.Namespace(**{**vars(args), "trials": 1}),
            "warm-up",
            {"cv": "off", "activation_cache": True},
        )
    runs = [_run(args, name, variant) for name, variant in VARIANTS.items()]
    naive, cached, cv = (r["wall_s"] for r in runs)
    results = {
        "what": (
            f"{args.trials}-trial search, {args.size} px, "
            f"{args.head_epochs}+{args.finetune_epochs} epochs, no pruning; CV {args.folds}-fold"
        ),
        "data": str(args.data),
        "runs": runs,
        "cv_over_naive_single_split": round(cv / naive, 2),
        "cv_over_cached_single_split": round(cv / cached, 2),
        "machine": f"{os.cpu_count()} CPUs",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
