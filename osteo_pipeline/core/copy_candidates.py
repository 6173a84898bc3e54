"""Candidate pairs for derived-copy matching: each picture's keypoints look up their nearest
keypoints of all others in a Hamming index (faiss), and the partners with the most close keypoints
in each pose are worth verifying (:mod:`~osteo_pipeline.core.copies`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from osteo_pipeline.core.copy_fit import Pose

if TYPE_CHECKING:
    from osteo_pipeline.core.copy_features import Features


#: Below this many keypoints an exact index is faster than an approximate one.
EXACT_UP_TO = 50_000
#: Keypoints per cell of the approximate index, and cells searched per query.
CELL_SIZE, PROBES = 1024, 8
#: Keypoints added to an index at a time: all an index build holds besides the index itself.
ADD_BATCH = 1 << 18

#: (cells, bytes per code, keypoints) -> the inverted lists an approximate index keeps its
#: keypoints in (faiss ``InvertedLists``; ``None``: faiss' own, in memory). ``io.copies`` passes
#: lists in a memory-mapped file, so an index over tens of thousands of images is not process
#: memory.
InvertedLists = Callable[[int, int, int], Any]
#: (descriptors, ids) of the keypoints to index, a fresh iterator each call (read three times).
Keypoints = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]
#: image -> its plain and mirrored descriptors: what the index reads of an image's features.
Descriptors = Callable[[int], tuple[np.ndarray, np.ndarray]]


def hamming_index(keypoints: Keypoints, inverted_lists: InvertedLists | None = None) -> Any:
    """Nearest neighbours in Hamming space with faiss, searched by id (``None`` for no
    keypoints): exact for small sets; above :data:`EXACT_UP_TO` keypoints an inverted file of
    cells of about :data:`CELL_SIZE` keypoints each (centred on keypoints drawn at random), the
    :data:`PROBES` nearest of them found through an HNSW graph (its default search breadth, 16,
    is at least that) and searched. A query's cost then stays nearly flat as n grows (with a flat
    list of sqrt(n) cells it grows as sqrt(n)), so the total grows about as n. The keypoints are
    read a piece at a time, never all held: to count them, to take the centres, to add them."""
    import faiss

    total, bits = 0, 0
    for descriptors, _ in keypoints():
        total, bits = total + len(descriptors), descriptors.shape[1] * 8
    if total == 0:
        return None
    if total <= EXACT_UP_TO:
        index = faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(bits))
    else:
        cells = max(1, total // CELL_SIZE)
        centres = np.sort(np.random.default_rng(0).choice(total, cells, replace=False))
        quantizer = faiss.IndexBinaryHNSW(bits, 16)
        quantizer.add(_taken(keypoints(), centres))
        index = faiss.IndexBinaryIVF(quantizer, bits, cells)
        index.nprobe = PROBES
        lists = inverted_lists(cells, bits // 8, total) if inverted_lists else None
        if lists is not None:
            index.referenced_lists = lists  # faiss keeps no reference: they live as the index does
            index.replace_invlists(lists, False)
    for descriptors, ids in _batched(keypoints()):
        index.add_with_ids(descriptors, ids)
    return index


def _taken(keypoints: Iterable[tuple[np.ndarray, np.ndarray]], positions: np.ndarray) -> np.ndarray:
    """The descriptors at ``positions`` (sorted) of all the keypoints, in order."""
    taken, start = [], 0
    for descriptors, _ in keypoints:
        end = start + len(descriptors)
        first, last = np.searchsorted(positions, [start, end])
        taken.append(descriptors[positions[first:last] - start])
        start = end
    return np.ascontiguousarray(np.concatenate(taken))


def _batched(
    keypoints: Iterable[tuple[np.ndarray, np.ndarray]],
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The keypoints joined into pieces of about :data:`ADD_BATCH`."""
    held: list[tuple[np.ndarray, np.ndarray]] = []
    count = 0
    for part in keypoints:
        held.append(part)
        count += len(part[1])
        if count >= ADD_BATCH:
            yield _joined(held)
            held, count = [], 0
    if held:
        yield _joined(held)


def _joined(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Pieces of (descriptors, ids) as one, contiguous as faiss reads them."""
    descriptors, ids = zip(*parts)
    return np.ascontiguousarray(np.concatenate(descriptors)), np.concatenate(ids)


def _keypoints(descriptors_of: Descriptors, images: Iterable[int]) -> Keypoints:
    """Each image's keypoints, plain and mirrored, with id ``2 * image + mirrored``."""

    def read() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for i in images:
            for mirrored, descriptors in enumerate(descriptors_of(i)):
                if len(descriptors):
                    yield descriptors, np.full(len(descriptors), 2 * i + mirrored, np.int64)

    return read


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
    inverted_lists: InvertedLists | None = None,
    descriptors: Descriptors | None = None,
) -> list[Candidate]:
    """Pairs worth verifying: for each image in ``queried``, the
    ``partners`` images among ``sources`` (default: all) holding the most keypoints within
    ``max_distance`` bits of one of its own, counting a source's mirror image separately, and the
    best two of each other pose it looks up in (its inverse; stretched back, for a square; fully
    equalised, for a picture whose tones that reshapes).
    Each keypoint counts its ``neighbours`` nearest, a square picture's its
    ``square_neighbours`` nearest: a picture squashed to a square matches its source's keypoints
    less closely, and among tens of thousands of images more of the nearest are others'.
    ``inverted_lists``: where an approximate index keeps its keypoints (:func:`hamming_index`);
    ``descriptors``: how it reads a source's (default: from ``prints``)."""
    queried = sorted(set(queried))
    sources = sorted(set(range(len(prints)) if sources is None else sources))
    if not queried or not sources:
        return []
    if descriptors is None:
        descriptors = lambda i: (prints[i].descriptors, prints[i].mirrored_descriptors)  # noqa: E731
    index = hamming_index(_keypoints(descriptors, sources), inverted_lists)
    if index is None:
        return []
    pairs = []
    for copy in queried:
        poses, descriptors = zip(*[(Pose(), prints[copy].descriptors), *prints[copy].lookups()])
        pose_of = np.concatenate(
            [np.full(len(d), p, dtype=np.int64) for p, d in enumerate(descriptors)]
        )
        if len(pose_of) == 0:
            continue
        square = len(prints[copy].stretched_descriptors) > 0
        distances, ids = index.search(
            np.ascontiguousarray(np.concatenate(descriptors)),
            square_neighbours if square else neighbours,
        )
        close = (ids >= 0) & (distances <= max_distance) & (ids // 2 != copy)
        keypoint = np.nonzero(close)[0].astype(np.int64)
        # (pose, partner, mirrored) as one number, then one vote per keypoint and such a key,
        # however many of its neighbours it holds
        key = pose_of[keypoint] * len(prints) * 2 + ids[close]
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
