"""Distributed tuning on one machine: the wall time of the same N-trial search with 1 and with 2
local worker processes (``osteo tune --workers``), measured in the same run, as a ratio.

    .venv/bin/python bench/tune_workers.py [--data ../shared/data/knee-xray] [--trials 6]
        [--workers 1,2] [--out bench/results/tune_workers.json]

Each variant is a whole ``osteo tune`` call, as a user runs it (validation, split, TensorFlow
start-up in every worker process, the activation cache built by every worker), on a fresh study
storage and tracking store, from a warm pixel cache. On a machine with 2 cores a second worker can
only gain where one worker leaves a core idle (start-up, input pipeline, Python between steps);
the ratio says how much that is. Wall time and the CPU time of all processes are reported."""

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


def _config(work: Path, args: argparse.Namespace) -> Path:
    config = {
        "data": {"classes": ["normal", "osteoporosis"], "ignore_unlisted_classes": True},
        "validation": {
            "fail_on_label_conflicts": False,
            "min_class_share": 0.05,
            "min_width": 64,
            "min_height": 64,
        },
        "model": {"input_size": args.size, "weights": cached_or_none()},
        "train": {
            "batch_size": 16,
            "head_epochs": 2,
            "finetune_epochs": 3,
            "cache_dir": str(args.pixel_cache),
        },
        "tune": {
            "storage": f"sqlite:///{work / 'optuna.db'}",
            "study_name": "bench",
            "warm_start_trials": 0,
        },
        "tracking": {
            "uri": f"sqlite:///{work / 'mlflow.db'}",
            "artifact_root": str(work / "mlruns"),
        },
        "output_dir": str(work / "outputs"),
    }
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run(args: argparse.Namespace, workers: int) -> dict:
    """One whole ``osteo tune`` call on a fresh study and store; wall and CPU time of all its
    processes."""
    with tempfile.TemporaryDirectory(prefix=f"bench-tune-{workers}-") as folder:
        work = Path(folder)
        command = [
            str(OSTEO),
            "tune",
            str(args.data),
            "--config",
            str(_config(work, args)),
            "--trials",
            str(args.trials),
            "--workers",
            str(workers),
        ]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
        summary = next(line for line in done.stdout.splitlines() if line.startswith("study "))
        return {
            "workers": workers,
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
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument(
        "--pixel-cache", type=Path, default=Path(tempfile.gettempdir()) / "osteo-bench-pixels"
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "tune_workers.json"
    )
    args = parser.parse_args()
    if not args.data.is_dir():  # no shared data here: a synthetic set of the same size
        args.data = Path(tempfile.mkdtemp(prefix="bench-data-")) / "synth"
        subprocess.run(
            [str(OSTEO), "synth", str(args.data), "--per-class", "34", "--size", "1024"], check=True
        )
    if not args.pixel_cache.is_dir():  # decode the images once, outside the timing
        _run(argparse.Namespace(**{**vars(args), "trials": 1}), 1)
    runs = [_run(args, int(n)) for n in args.workers.split(",")]
    base = runs[0]
    results = {
        "command": " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d"),
        "cpus": os.cpu_count(),
        "data": str(args.data),
        "weights": cached_or_none(),
        "trials": args.trials,
        "runs": runs,
        "ratios": {
            f"{r['workers']}_vs_{base['workers']}_workers": {
                "wall": round(r["wall_s"] / base["wall_s"], 3),
                "cpu": round(r["cpu_s"] / base["cpu_s"], 3),
            }
            for r in runs[1:]
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
