"""Pure data-quality logic over a manifest: duplicates and derived copies, label conflicts, the
summary tables that the Great Expectations suites check, and the groups a split must keep whole."""

from __future__ import annotations

import pandas as pd


def readable(manifest: pd.DataFrame) -> pd.DataFrame:
    return manifest[manifest["error"].isna()]


def duplicate_groups(manifest: pd.DataFrame) -> list[list[str]]:
    """Groups of paths with byte-identical content (two or more files), sorted for stable output."""
    hashed = manifest[manifest["sha256"].notna()]
    groups = [sorted(g["path"]) for _, g in hashed.groupby("sha256") if len(g) > 1]
    return sorted(groups)


def copy_group_column(manifest: pd.DataFrame, groups: dict[str, int] | None) -> pd.Series:
    """Group id per readable row: rows share one when their contents are identical or derived
    copies of each other (``groups``: sha256 -> derived-copy group; ``None``: identical only)."""
    usable = readable(manifest)
    if groups is None:
        return usable.groupby("sha256").ngroup().rename("group")
    keys = usable["sha256"].map(
        lambda sha: f"copy-{groups[sha]}" if sha in groups else f"sha-{sha}"
    )
    return pd.Series(pd.factorize(keys)[0], index=usable.index, name="group")


def copy_groups(manifest: pd.DataFrame, links: list[dict[str, object]]) -> list[dict[str, object]]:
    """Groups of readable files holding two or more copies of one radiograph (identical bytes or
    derived copies), each with its paths, labels and links (source, copy, kind, score by path),
    sorted for stable output."""
    usable = readable(manifest)
    first = {sha: min(g["path"]) for sha, g in usable.groupby("sha256")}
    found = []
    for _, group in usable.groupby("group"):
        if len(group) < 2:
            continue
        shas = set(group["sha256"])
        exact = [
            {"source": min(g["path"]), "copy": path, "kind": "exact", "score": 1.0}
            for _, g in group.groupby("sha256")
            for path in sorted(g["path"])[1:]
        ]
        derived = [
            {
                "source": first[str(link["source"])],
                "copy": first[str(link["copy"])],
                "kind": link["kind"],
                "score": link["score"],
            }
            for link in links
            if link["source"] in shas and link["copy"] in shas
        ]
        found.append(
            {
                "paths": sorted(group["path"]),
                "labels": sorted(group["label"].unique()),
                "links": exact + derived,
            }
        )
    return sorted(found, key=lambda g: g["paths"])


def label_conflicts(groups: list[dict[str, object]]) -> list[dict[str, object]]:
    """Copy groups whose files carry different labels, with the kinds of link that join them."""
    return [
        {
            "paths": g["paths"],
            "labels": g["labels"],
            "kinds": sorted({str(link["kind"]) for link in g["links"]}),
        }
        for g in groups
        if len(g["labels"]) > 1
    ]


def class_table(manifest: pd.DataFrame, classes: list[str], class_dirs: list[str]) -> pd.DataFrame:
    """One row per configured class and per class folder found: readable-image count and share,
    and the share of patients (images of a folder, which has no patients)."""
    usable = readable(manifest)
    counts = usable["label"].value_counts()
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
    if "patient" in usable:
        patients = usable.groupby("label")["patient"].nunique()
        table["patients"] = [int(patients.get(label, 0)) for label in labels]
        everyone = usable["patient"].nunique()
        table["patient_share"] = table["patients"] / everyone if everyone else 0.0
    else:
        table["patients"], table["patient_share"] = table["count"], table["share"]
    return table


def content_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """One row per radiograph (a copy ``group``: identical or derived copies): how many files and
    distinct contents it holds, and how many labels."""
    usable = readable(manifest)
    groups = usable.groupby("group")
    table = groups.agg(
        n_files=("path", "size"), n_contents=("sha256", "nunique"), n_labels=("label", "nunique")
    ).reset_index()
    # Built by hand and kept as objects: paths may hold surrogate escapes (undecodable file
    # names), which pandas' Arrow-backed strings reject.
    first = {group: min(paths) for group, paths in groups["path"]}
    table["first_path"] = pd.Series(
        [first[g] for g in table["group"]], dtype=object, index=table.index
    )
    return table
