"""Derived-copy detection at scale: features and matching time for 1k, 5k and 20k synthetic
radiographs with planted copies, how the time grows with n, and recall/precision at each size.

    .venv/bin/python bench/copies.py [--sizes 1000,5000,20000] [--knee 300] [--share 0.0208]
        [--out bench/results/copies.json]
    .venv/bin/python bench/copies.py --real ../shared/data/knee-xray [--planted 20]

``--real DIR``: DIR validated as it is (exact-copy groups, label conflicts, and every link between
two distinct contents, to check by eye), then a copy of DIR in a temporary folder (never in the
project) with derived copies of ``--planted`` of its radiographs planted (every kind in
``COPY_KINDS``, from the real pixels), validated as a user would (``validate_folder``, cold
cache): time, the recall of the planted copies per kind, and any group that joins two of the
planted radiographs (a false link).

Distinct single-knee radiographs (``osteo synth``'s renderer, shorter side ``--knee`` px); for a
``--share`` of them, one derived copy of every kind in ``COPY_KINDS`` (the default share plants
about one copy per two sources). Pixels stay in memory (JPEG kinds are encoded and decoded), so the
time is the detector's own: features (ORB plain, mirrored, inverted, and stretched for square
pictures) and matching (faiss candidates, affine fits and pixel checks). The exponent between two
sizes is log(t2/t1) / log(n2/n1): 2 would be all-pairs, 1 linear."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from osteo_pipeline.core import copies, copy_features
from osteo_pipeline.core.synth import render
from osteo_pipeline.core.synth_copies import COPY_KINDS, derived_copy

ROOT = Path(__file__).resolve().parents[1]


def _decoded(image: Image.Image, format_: str) -> np.ndarray:
    buffer = io.BytesIO()
    if format_.startswith("JPEG"):
        image.save(
            buffer, format="JPEG", quality=int(format_.split("-")[1]) if "-" in format_ else 92
        )
    else:
        image.save(buffer, format="PNG")
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L"))


def _one_source(args: tuple[int, int, float, int]) -> list[tuple[str, np.ndarray]]:
    """One distinct radiograph and, for a share of them, its planted copies: [(kind, pixels)]."""
    index, knee, share, seed = args
    rng = np.random.default_rng([seed, index])
    pixels = (render("x", rng.uniform(0, 1), knee, rng) * 255).round().astype(np.uint8)
    items = [("source", _decoded(Image.fromarray(pixels), "JPEG"))]
    if rng.random() < share:
        for kind in COPY_KINDS:
            planted = derived_copy(pixels, kind, rng)
            items.append((kind, _decoded(planted.image, planted.format)))
    return items


def corpus(
    n: int, knee: int, share: float, seed: int
) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """About ``n`` images: pixels, the source index of each, and its kind."""
    sources = max(1, round(n / (1 + share * len(COPY_KINDS))))
    images, source_of, kinds = [], [], []
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        for index, items in enumerate(
            pool.map(_one_source, [(i, knee, share, seed) for i in range(sources)], chunksize=64)
        ):
            for kind, pixels in items:
                images.append(pixels)
                source_of.append(index)
                kinds.append(kind)
    return images, np.asarray(source_of), kinds


def measure(n: int, knee: int, share: float, seed: int) -> dict[str, float]:
    images, source_of, kinds = corpus(n, knee, share, seed)
    started = time.perf_counter()
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        prints = list(pool.map(copy_features.features, images, chunksize=64))
    featured = time.perf_counter()

    @lru_cache(maxsize=2048)
    def picture(i: int) -> np.ndarray:
        return copy_features.working_picture(images[i])

    links = copies.find_links(prints, picture, [im.shape[::-1] for im in images])
    matched = time.perf_counter()
    groups = copies.connected_groups(len(images), [(link.source, link.copy) for link in links])
    planted = [i for i, kind in enumerate(kinds) if kind != "source"]
    first = {s: i for i, s in reversed(list(enumerate(source_of)))}
    missed = [kinds[i] for i in planted if groups[i] != groups[first[source_of[i]]]]
    found = len(planted) - len(missed)
    per_kind = {kind: kinds.count(kind) for kind in COPY_KINDS}
    false_links = sum(source_of[link.source] != source_of[link.copy] for link in links)
    return {
        "images": len(images),
        "sources": int(source_of.max() + 1),
        "planted_copies": len(planted),
        "features_s": round(featured - started, 1),
        "matching_s": round(matched - featured, 1),
        "total_s": round(matched - started, 1),
        "recall": round(found / max(1, len(planted)), 4),
        "recall_by_kind": {
            kind: round(1 - missed.count(kind) / count, 4)
            for kind, count in per_kind.items()
            if count
        },
        "false_links": int(false_links),
        "links": len(links),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def _real_settings(cache: Path):
    from osteo_pipeline.config import load_settings

    return load_settings(
        overrides={
            "data": {"classes": ["normal", "osteopenia", "osteoporosis"]},
            "validation": {"copies_cache_dir": str(cache), "min_width": 64, "min_height": 64},
        },
        environ={},
    )


def as_is(data_dir: Path, work: Path) -> dict[str, object]:
    """DIR validated as it is: its exact-copy groups, label conflicts, and derived-copy links."""
    from osteo_pipeline.steps.validate import validate_folder

    result = validate_folder(data_dir, _real_settings(work / "cache-as-is"))
    links = [link for g in result.copy_groups for link in g["links"] if link["kind"] != "exact"]
    return {
        "files": result.summary["files"],
        "distinct_contents": int(result.scan.manifest["sha256"].dropna().nunique()),
        "exact_groups": sum(
            all(link["kind"] == "exact" for link in g["links"]) for g in result.copy_groups
        ),
        "label_conflicts": len(result.summary["label_conflicts"]),
        "links_between_distinct_contents": links,
    }


def measure_real(data_dir: Path, planted: int, seed: int) -> dict[str, object]:
    import shutil
    import tempfile

    from osteo_pipeline.steps.synth import save_image
    from osteo_pipeline.steps.validate import validate_folder

    work = Path(tempfile.mkdtemp(prefix="copies-real-"))
    try:
        report = {"data": str(data_dir), "as_is": as_is(data_dir, work)}
        root = work / "data"
        shutil.copytree(data_dir, root, ignore=shutil.ignore_patterns("*.md", "*.sha256"))
        originals = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        rng = np.random.default_rng(seed)
        plants = []
        for source in rng.choice(originals, planted, replace=False):
            pixels = np.asarray(Image.open(root / source).convert("L"))
            for kind in COPY_KINDS:
                copy = derived_copy(pixels, kind, rng)
                name = (
                    f"{Path(source).parent}/planted_{Path(source).stem}_{kind}."
                    f"{'jpg' if copy.format.startswith('JPEG') else 'png'}"
                )
                save_image(copy.image, root / name, copy.format)
                plants.append((str(source), name, kind))
        started = time.perf_counter()
        result = validate_folder(root, _real_settings(work / "cache"))
        seconds = time.perf_counter() - started
        group = {path: i for i, g in enumerate(result.copy_groups) for path in g["paths"]}
        missed = [(s, c, k) for s, c, k in plants if group.get(s, -1) != group.get(c, -2)]
        # a planted copy in the group of another radiograph than its own (joined wrongly; two
        # byte-identical files are one radiograph)
        content = {s: hashlib.sha256((root / s).read_bytes()).hexdigest() for s, _, _ in plants}
        source_of = {c: content[s] for s, c, _ in plants} | {s: content[s] for s, _, _ in plants}
        sources_in = [
            {source_of[path] for path in g["paths"] if path in source_of}
            for g in result.copy_groups
        ]
        return report | {
            "files_with_planted": result.summary["files"],
            "validate_s": round(seconds, 1),
            "copies_s": result.summary["derived_copies"]["seconds"],
            "planted": len(plants),
            "recall": round(1 - len(missed) / len(plants), 4),
            "recall_by_kind": {
                kind: round(1 - sum(k == kind for _, _, k in missed) / planted, 4)
                for kind in COPY_KINDS
            },
            "missed": missed,
            "groups_joining_two_radiographs": sum(len(s) > 1 for s in sources_in),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,5000,20000")
    parser.add_argument("--knee", type=int, default=300)
    parser.add_argument(
        "--share",
        type=float,
        default=round(0.5 / len(COPY_KINDS), 4),
        help="Share of sources with one copy of every kind (default: about one copy per two "
        "sources).",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "copies.json")
    parser.add_argument(
        "--real",
        type=Path,
        help="A labeled DATA_DIR to plant copies of its own radiographs into (in a temp folder).",
    )
    parser.add_argument("--planted", type=int, default=20)
    args = parser.parse_args()
    if args.real:
        print(json.dumps(measure_real(args.real, args.planted, args.seed), indent=1))
        return
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        row = measure(n, args.knee, args.share, args.seed)
        if rows:
            row["exponent_vs_previous"] = round(
                float(
                    np.log(row["total_s"] / rows[-1]["total_s"])
                    / np.log(row["images"] / rows[-1]["images"])
                ),
                2,
            )
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d"),
                "cpus": os.cpu_count(),
                "knee_px": args.knee,
                "share": args.share,
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
