"""Archive scale: peak anonymous memory, wall and CPU time and disk of `osteo validate` and of one
`osteo tune` trial on synthetic sets of growing size, measured in one run. Goals: peak anonymous
RSS at the largest size at most 1.5x that at the smallest, for both; tune's time per image at
the largest within 1.3x of that at the smallest.

    .venv/bin/python bench/scale.py [--sizes 1000,4000,16000] [--input-size 224] [--roi image]
        [--image-size 256] [--out bench/results/scale.json] [--set KEY=VALUE ...]
        [--steps validate,tune]

Each size gets its own synthetic set (`osteo synth`, kept under --work for later runs), cache and
stores. The trial: a single split (no CV), unfreeze depth 2, 1 head + 1 fine-tuning epoch,
random initial weights (speed and memory do not depend on their values). Memory is sampled
from /proc every 0.1 s: anonymous RSS (RssAnon, plus RssShmem: what the process itself holds)
apart from file-backed RSS (RssFile: memory-mapped pixel shards and activation spills, pages the
kernel can drop). `--set tune.cv=on` measures cross-validation's folds instead."""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _status(pid: int) -> dict[str, int]:
    fields = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("RssAnon", "RssFile", "RssShmem"):
                fields[name] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return fields


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (tune's worker processes)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):  # children of every thread
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return found


def measured(
    command: list[str], env: dict[str, str], log: Path, disk: tuple[Path, ...], spill: Path
) -> dict[str, float]:
    """Run ``command``; its wall and CPU seconds, peak anonymous and file-backed RSS, and disk:
    what it leaves under ``disk`` plus the peak under ``spill`` (the activation cache's spill,
    removed when tune ends; sampled each second, a few files). The
    memory over time goes to ``log`` with suffix ``.memory.tsv`` (seconds, anon MB, file MB), to
    read against the log's timestamps."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        peak = {"RssAnon": 0, "RssFile": 0, "disk": 0}
        done = threading.Event()
        timeline = log.with_suffix(".memory.tsv").open("w")

        def sample() -> None:
            ticks = 0
            while not done.is_set():
                totals = {"RssAnon": 0, "RssFile": 0}
                for pid in _tree(process.pid):
                    for name, value in _status(pid).items():
                        # shared memory (tmpfs) cannot be dropped either: counted as anonymous
                        totals["RssAnon" if name == "RssShmem" else name] += value
                for name in ("RssAnon", "RssFile"):
                    peak[name] = max(peak[name], totals[name])
                if ticks % 10 == 0:
                    peak["disk"] = max(peak["disk"], disk_mb(spill))
                    seconds = time.perf_counter() - start
                    anon, file = (totals[k] // 2**20 for k in ("RssAnon", "RssFile"))
                    timeline.write(f"{seconds:.0f}\t{anon}\t{file}\n")
                ticks += 1
                time.sleep(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = process.wait()
        done.set()
        sampler.join()
        timeline.close()
    if code != 0:
        raise SystemExit(f"{' '.join(command[:3])} failed ({code}); see {log}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "wall_s": round(time.perf_counter() - start, 1),
        "cpu_s": round(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 1),
        "peak_anon_mb": round(peak["RssAnon"] / 2**20),
        "peak_file_mb": round(peak["RssFile"] / 2**20),
        "disk_mb": disk_mb(*disk) + max(peak["disk"], disk_mb(spill)),
    }


def disk_mb(*folders: Path) -> int:
    total = 0
    for folder in folders:
        for file in folder.rglob("*"):
            try:
                total += file.stat().st_size if file.is_file() else 0
            except OSError:  # removed while counted
                pass
    return round(total / 2**20)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,4000,16000")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--roi", default="image")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--work", type=Path, default=Path("/tmp/osteo-bench-scale"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/scale.json"))
    parser.add_argument("--set", action="append", default=[], help="a further config override")
    parser.add_argument("--steps", default="validate,tune", help="which steps to measure")
    args = parser.parse_args()
    steps = set(args.steps.split(","))
    if not steps or steps - {"validate", "tune"}:
        parser.error(f"--steps: validate and/or tune, not {args.steps!r}")
    osteo = str(BIN / "osteo")
    results = []
    for n in (int(s) for s in args.sizes.split(",")):
        data = args.work / f"data-{n}-{args.image_size}"
        if not (data / ".complete").is_file():
            shutil.rmtree(data, ignore_errors=True)
            subprocess.run(
                [osteo, "synth", str(data), "--per-class", str(n // 2)]
                + ["--size", str(args.image_size), "--seed", "3"],
                check=True,
                capture_output=True,
            )
            (data / ".complete").touch()
        run = args.work / f"run-{n}-{args.input_size}-{args.roi}"
        shutil.rmtree(run, ignore_errors=True)
        run.mkdir(parents=True)
        env = os.environ | {
            "HOME": str(run / "home"),
            "XDG_CACHE_HOME": str(run / "cache"),
            "TF_CPP_MIN_LOG_LEVEL": "3",
        }
        settings = [
            f"tracking.uri=sqlite:///{run / 'mlflow.db'}",
            f"tracking.artifact_root={run / 'mlruns'}",
            f"tune.storage=sqlite:///{run / 'optuna.db'}",
            f"tune.cache_spill_dir={run / 'spill'}",
            f"train.cache_dir={run / 'pixels'}",
            f"output_dir={run / 'outputs'}",
            "model.weights=none",
            "model.allow_random_init_fallback=true",
            "validation.min_width=64",
            "validation.min_height=64",
            f"tune.input_sizes=[{args.input_size}]",
            f"tune.rois=[{args.roi}]",
            "tune.unfreeze_depth=[2,2]",
            "tune.cv=off",
            "train.head_epochs=1",
            "train.finetune_epochs=1",
            *args.set,
        ]
        sets = [a for s in settings for a in ("--set", s)]
        row = {"images": n, "input_size": args.input_size, "roi": args.roi}
        if "validate" in steps:
            row["validate"] = measured(
                [osteo, "validate", str(data), *sets, "--report-dir", str(run / "report")],
                env,
                run / "validate.log",
                (run / "cache",),
                run / "spill",
            )
        if "tune" in steps:
            tune = measured(
                [osteo, "tune", str(data), "--trials", "1", *sets],
                env,
                run / "tune.log",
                (run / "pixels", run / "cache"),
                run / "spill",
            )
            tune["s_per_image"] = round(tune["wall_s"] / n, 4)
            row["tune"] = tune
        results.append(row)
        print(json.dumps(row), flush=True)
    first, last = results[0], results[-1]
    summary = {}
    if "validate" in steps:
        summary["validate_anon_ratio"] = round(
            last["validate"]["peak_anon_mb"] / first["validate"]["peak_anon_mb"], 2
        )
    if "tune" in steps:
        if len(results) > 1:  # seconds per added image, without the fixed start-up cost
            added = last["images"] - first["images"]
            summary["tune_marginal_s_per_image"] = round(
                (last["tune"]["wall_s"] - first["tune"]["wall_s"]) / added, 4
            )
        summary["tune_anon_ratio"] = round(
            last["tune"]["peak_anon_mb"] / first["tune"]["peak_anon_mb"], 2
        )
        summary["tune_time_per_image_ratio"] = round(
            last["tune"]["s_per_image"] / first["tune"]["s_per_image"], 2
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": results, "summary": summary}, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
