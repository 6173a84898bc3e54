"""Candidate pairs for derived-copy matching: each picture's keypoints look up their nearest
keypoints of all others in a Hamming index (faiss), and the partners with the most close keypoints
in each pose are worth verifying (:mod:`~osteo_pipeline.core.copies`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from osteo_pipeline.core.copy_fit import Pose

if TYPE_CHECKING:
    from osteo_pipeline.core.copy_features import Features


#: Below this many keypoints an exact index is faster than an approximate one.
EXACT_UP_TO = 50_000
#: Keypoints per cell of the approximate index, and cells searched per query.
CELL_SIZE, PROBES = 1024, 8


def _hamming_index(descriptors: np.ndarray):
    """Nearest neighbours in Hamming space with faiss: exact for small sets; above
    :data:`EXACT_UP_TO` keypoints an inverted file of cells of about :data:`CELL_SIZE`
    keypoints each (centred on keypoints drawn at random), the :data:`PROBES` nearest of them
    found through an HNSW graph (its default search breadth, 16, is at least that) and
    searched. A query's cost then stays nearly flat as n grows (with a flat list of sqrt(n)
    cells it grows as sqrt(n)), so the total grows about as n."""
    import faiss

    bits = descriptors.shape[1] * 8
    data = np.ascontiguousarray(descriptors)
    if len(data) <= EXACT_UP_TO:
        index = faiss.IndexBinaryFlat(bits)
        index.add(data)
        return index
    cells = max(1, len(data) // CELL_SIZE)
    centres = np.random.default_rng(0).choice(len(data), cells, replace=False)
    quantizer = faiss.IndexBinaryHNSW(bits, 16)
    quantizer.add(data[np.sort(centres)])
    index = faiss.IndexBinaryIVF(quantizer, bits, cells)
    index.nprobe = PROBES
    index.add(data)
    return index


class Candidate(NamedTuple):
    """A pair worth verifying: ``copy`` looked ``source`` up in ``pose``, with ``votes`` close
    keypoints."""

    copy: int
    source: int
    pose: Pose
    votes: int


def candidate_pairs(
    prints: Sequence[Features],
    queried: Iterable[int],
    sources: Iterable[int] | None = None,
    neighbours: int = 10,
    square_neighbours: int = 30,
    max_distance: int = 40,
    min_votes: int = 5,
    partners: int = 4,
) -> list[Candidate]:
    """Pairs worth verifying: for each image in ``queried``, the
    ``partners`` images among ``sources`` (default: all) holding the most keypoints within
    ``max_distance`` bits of one of its own, counting a source's mirror image separately, and the
    best two of each other pose it looks up in (its inverse; stretched back, for a square; fully
    equalised, for a picture whose tones that reshapes).
    Each keypoint counts its ``neighbours`` nearest, a square picture's its
    ``square_neighbours`` nearest: a picture squashed to a square matches its source's keypoints
    less closely, and among tens of thousands of images more of the nearest are others'."""
    queried = sorted(set(queried))
    sources = sorted(set(range(len(prints)) if sources is None else sources))
    if not queried or not sources:
        return []
    owner_parts, mirror_parts, descriptor_parts = [], [], []
    for i in sources:
        for mirrored, desc in (
            (False, prints[i].descriptors),
            (True, prints[i].mirrored_descriptors),
        ):
            owner_parts.append(np.full(len(desc), i, dtype=np.int64))
            mirror_parts.append(np.full(len(desc), int(mirrored), dtype=np.int64))
            descriptor_parts.append(desc)
    owners, mirrors = np.concatenate(owner_parts), np.concatenate(mirror_parts)
    if len(owners) == 0:
        return []
    index = _hamming_index(np.concatenate(descriptor_parts))
    pairs = []
    for copy in queried:
        poses, descriptors = zip(*[(Pose(), prints[copy].descriptors), *prints[copy].lookups()])
        pose_of = np.concatenate(
            [np.full(len(d), p, dtype=np.int64) for p, d in enumerate(descriptors)]
        )
        if len(pose_of) == 0:
            continue
        square = len(prints[copy].stretched_descriptors) > 0
        distances, rows = index.search(
            np.ascontiguousarray(np.concatenate(descriptors)),
            square_neighbours if square else neighbours,
        )
        close = (rows >= 0) & (distances <= max_distance)
        close &= owners[np.where(rows >= 0, rows, 0)] != copy
        keypoint = np.nonzero(close)[0].astype(np.int64)
        # (pose, partner, mirrored) as one number, then one vote per keypoint and such a key,
        # however many of its neighbours it holds
        key = (pose_of[keypoint] * len(prints) + owners[rows[close]]) * 2 + mirrors[rows[close]]
        voted = np.unique(key * len(pose_of) + keypoint) // len(pose_of)
        keys, counts = np.unique(voted, return_counts=True)
        pose_index, partner, mirrored = keys // 2 // len(prints), keys // 2 % len(prints), keys % 2
        for pose in np.unique(pose_index):
            mine = np.flatnonzero((pose_index == pose) & (counts >= min_votes))
            best = mine[np.argsort(-counts[mine], kind="stable")][: 2 if pose else partners]
            pairs += [
                Candidate(
                    copy,
                    int(partner[b]),
                    replace(poses[pose], mirrored=bool(mirrored[b])),
                    int(counts[b]),
                )
                for b in best
            ]
    return pairs
