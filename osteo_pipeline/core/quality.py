"""Pure data-quality logic over a manifest: duplicates, label conflicts, near-duplicates, the
summary tables that the Great Expectations suites check, and the groups a split must keep whole."""

from __future__ import annotations

import numpy as np
import pandas as pd


def readable(manifest: pd.DataFrame) -> pd.DataFrame:
    return manifest[manifest["error"].isna()]


def duplicate_groups(manifest: pd.DataFrame) -> list[list[str]]:
    """Groups of paths with byte-identical content (two or more files), sorted for stable output."""
    hashed = manifest[manifest["sha256"].notna()]
    groups = [sorted(g["path"]) for _, g in hashed.groupby("sha256") if len(g) > 1]
    return sorted(groups)


def label_conflicts(manifest: pd.DataFrame) -> list[dict[str, object]]:
    """Exact-duplicate groups whose copies carry different labels."""
    hashed = manifest[manifest["sha256"].notna()]
    conflicts = []
    for sha, group in hashed.groupby("sha256"):
        if group["label"].nunique() > 1:
            conflicts.append(
                {
                    "sha256": sha,
                    "paths": sorted(group["path"]),
                    "labels": sorted(group["label"].unique()),
                }
            )
    return sorted(conflicts, key=lambda c: c["paths"])


def _connected_components(n: int, pairs: np.ndarray) -> np.ndarray:
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(i) for i in range(n)])


def phash_components(phashes: pd.Series, max_distance: int, block: int = 2048) -> np.ndarray:
    """Component id per row, joining rows whose 64-bit hashes differ in at most ``max_distance`` bits."""
    values = np.array([int(h, 16) for h in phashes], dtype=np.uint64)
    pairs = []
    for start in range(0, len(values), block):
        chunk = values[start : start + block]
        distances = np.bitwise_count(chunk[:, None] ^ values[None, :])
        rows, cols = np.nonzero(distances <= max_distance)
        keep = cols > rows + start
        pairs.append(np.stack([rows[keep] + start, cols[keep]], axis=1))
    joined = np.concatenate(pairs) if pairs else np.empty((0, 2), dtype=np.int64)
    return _connected_components(len(values), joined)


def near_duplicate_groups(manifest: pd.DataFrame, max_distance: int) -> list[list[str]]:
    """Perceptual-hash groups that hold at least two different contents (not merely exact copies)."""
    usable = readable(manifest).reset_index(drop=True)
    if usable.empty:
        return []
    usable = usable.assign(component=phash_components(usable["phash"], max_distance))
    groups = [
        sorted(g["path"]) for _, g in usable.groupby("component") if g["sha256"].nunique() > 1
    ]
    return sorted(groups)


def split_groups(manifest: pd.DataFrame, max_distance: int | None) -> pd.Series:
    """Group id per readable row that a split must never separate: exact copies always share one
    (identical bytes give identical perceptual hashes); near-duplicates too when ``max_distance``
    is given."""
    usable = readable(manifest)
    if max_distance is None:
        ids = usable.groupby("sha256").ngroup()
    else:
        components = phash_components(usable["phash"], max_distance)
        ids = pd.Series(pd.factorize(components)[0], index=usable.index)
    return ids.rename("group")


def class_table(manifest: pd.DataFrame, classes: list[str], class_dirs: list[str]) -> pd.DataFrame:
    """One row per configured class and per class folder found: readable-image count and share."""
    counts = readable(manifest)["label"].value_counts()
    labels = list(dict.fromkeys([*classes, *class_dirs]))
    total = int(counts.sum())
    table = pd.DataFrame(
        {
            "label": labels,
            "count": [int(counts.get(label, 0)) for label in labels],
            "configured": [label in classes for label in labels],
        }
    )
    table["share"] = table["count"] / total if total else 0.0
    return table


def content_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per distinct content (sha256): how many files carry it and how many labels."""
    hashed = manifest[manifest["sha256"].notna()]
    groups = hashed.groupby("sha256")
    table = groups.agg(n_files=("path", "size"), n_labels=("label", "nunique")).reset_index()
    # Built by hand and kept as objects: paths may hold surrogate escapes (undecodable file
    # names), which pandas' Arrow-backed strings reject.
    first = {sha256: min(paths) for sha256, paths in groups["path"]}
    table["first_path"] = pd.Series([first[s] for s in table["sha256"]], dtype=object, index=table.index)
    return table
