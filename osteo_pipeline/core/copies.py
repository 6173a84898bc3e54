"""Derived copies of a radiograph: the same picture resized, squashed to a square, cropped,
padded, mirrored, rotated, inverted, re-encoded or re-toned, wherever it is filed and under
whatever label.

Three steps, each cheap enough for tens of thousands of images:

1. **Features** (:mod:`~osteo_pipeline.core.copy_features`): ORB keypoints of the picture
   trimmed, shrunk and equalised, of its mirror image and its inverse, of a square picture
   stretched back, and of a picture whose tones a full equalisation reshapes, so equalised.
2. **Candidates** (:mod:`~osteo_pipeline.core.copy_candidates`): every keypoint (plain,
   inverted, stretched, equalised) looks up its nearest keypoints of all other images in a Hamming
   nearest-neighbour index (faiss; an inverted file for large sets, so sub-quadratic); each
   image's partners with the most close keypoints, in each pose, become candidate pairs.
3. **Verification** (:func:`verify`, :mod:`~osteo_pipeline.core.copy_fit`,
   :mod:`~osteo_pipeline.core.copy_check`): a plausible affine
   fit, then a pixel check of the two pictures' detail at the resolution they share.

Each link carries its kind (:mod:`~osteo_pipeline.core.copy_kinds`: e.g.
``crop+squashed-1.6+mirrored+brightened``) and its score. Byte-identical copies (``exact``) are
found by content hash before any of this. Groups are the connected components of the links
(:func:`connected_groups`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
from scipy.cluster.hierarchy import DisjointSet
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from osteo_pipeline.core import copy_check, copy_fit, copy_kinds
from osteo_pipeline.core.copy_candidates import Descriptors, InvertedLists, candidate_pairs
from osteo_pipeline.core.copy_features import Features
from osteo_pipeline.core.copy_fit import Pose

#: Version of the features and the matching: cached results of another version are not reused.
VERSION = "copies-orb-8"


@dataclass(frozen=True)
class Link:
    """``copy`` derives from ``source`` (row indices): ``kind`` says how, ``score`` how surely."""

    source: int
    copy: int
    kind: str
    score: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def verify(
    copy: Features,
    copy_picture: np.ndarray,
    source: Features,
    source_picture: np.ndarray,
    pose: Pose,
    threshold: float = 0.5,
) -> copy_check.Match:
    """Fit the copy onto the source in ``pose`` (against the source's mirror image, with the
    copy's inverted or fully equalised keypoints) and score the fit
    (:mod:`~osteo_pipeline.core.copy_check`): a glance at half size first, and the full check
    only for a fit that passes it (most fits of two different knees do not); both with the
    copy's tones mapped onto the source's when it was fitted with its fully equalised keypoints.
    A fit scoring below ``threshold`` is refined on the pixels and scored again; one still short
    of it, but by less than half, is scored once more with the copy's tones mapped onto the
    source's (an equalisation bends tones too far for the detail's local normalisation alone)."""
    copy_points, copy_descriptors = copy.fitted(pose)
    source_points, source_descriptors = (
        (source.mirrored_points, source.mirrored_descriptors)
        if pose.mirrored
        else (source.points, source.descriptors)
    )
    transform = copy_fit.fit(copy_points, copy_descriptors, source_points, source_descriptors)
    if transform is None:
        return copy_check.NO_MATCH
    target = np.ascontiguousarray(np.fliplr(source_picture)) if pose.mirrored else source_picture
    match = copy_check.NO_MATCH
    toned = pose.equalised  # keypoints of the fully equalised copy: its tones may be far off
    if copy_check.glance(copy_picture, target, transform, pose.inverted, toned) >= threshold / 2:
        match = copy_check.compare(copy_picture, target, transform, pose.inverted, toned)
    if match.score >= threshold:
        return match
    refined = copy_fit.refine(copy_picture, target, transform, pose.inverted)
    if refined is not None:
        again = copy_check.compare(copy_picture, target, refined, pose.inverted)
        match = again if again.score > match.score else match
    if match.transform is not None and threshold / 2 <= match.score < threshold:  # re-toned?
        toned = copy_check.compare(copy_picture, target, match.transform, pose.inverted, toned=True)
        match = toned if toned.score > match.score else match
    return match


def find_links(
    prints: Sequence[Features],
    pictures: Callable[[int], np.ndarray],
    sizes: Sequence[tuple[int, int]],
    queried: Iterable[int] | None = None,
    sources: Iterable[int] | None = None,
    threshold: float = 0.5,
    inverted_lists: InvertedLists | None = None,
    descriptors: Descriptors | None = None,
) -> list[Link]:
    """Verified derived-copy links among ``prints``; ``pictures(i)`` gives image i's working
    picture (:func:`~osteo_pipeline.core.copy_features.working_picture`), ``sizes`` each file's
    (width, height), (0, 0) when not known. Only pairs of an image in ``queried`` (default: all)
    and one in ``sources`` (default: all) are looked for: a re-validation matches its new files
    against all, an evaluation its images against the training images. Candidates are verified
    most votes first, and a pair already joined through other links is not verified again:
    groups are what the links are for, so each image needs one link into its group, not one to
    every member. ``inverted_lists`` and ``descriptors``: where the candidate search's index
    keeps its keypoints and how it reads them (:func:`~.copy_candidates.candidate_pairs`)."""
    everyone = set(range(len(prints)))
    queried = everyone if queried is None else set(queried)
    sources = everyone if sources is None else set(sources)
    index_options = {"inverted_lists": inverted_lists, "descriptors": descriptors}
    candidates = candidate_pairs(prints, queried, sources, **index_options) + candidate_pairs(
        prints, sources - queried, sources=queried, **index_options
    )
    joined, links, tried = DisjointSet(range(len(prints))), [], set()
    for copy, source, pose, _ in sorted(candidates, key=lambda c: -c.votes):
        if joined.connected(copy, source):  # linked already, through others: nothing to add
            continue
        fitted = (copy, source, replace(pose, stretch=1.0))
        if fitted in tried:  # another stretch, same fit
            continue
        tried.add(fitted)
        match = verify(
            prints[copy], pictures(copy), prints[source], pictures(source), pose, threshold
        )
        if (
            match.score >= threshold and match.inside < 0.8 <= match.cover
        ):  # the source is the crop: turn the link round
            # the source fitted onto the copy: with its own equalised keypoints, if it has some
            back = replace(
                pose, equalised=pose.equalised and len(prints[source].equalised_descriptors) > 0
            )
            turned = verify(
                prints[source], pictures(source), prints[copy], pictures(copy), back, threshold
            )
            if turned.score >= threshold:
                copy, source, match = source, copy, turned
        trimmed = (prints[copy].trimmed, prints[source].trimmed)
        if match.score >= threshold and copy_kinds.copy_first(
            match, pose.mirrored, trimmed, sizes[copy], sizes[source]
        ):
            copy, source = source, copy
            match = copy_check.read_backwards(match, pose.mirrored)
        if match.score >= threshold:
            kind = copy_kinds.name(
                match,
                pose,
                (prints[copy].trimmed, prints[source].trimmed),
                sizes[copy],
                sizes[source],
            )
            joined.merge(copy, source)
            links.append(Link(source, copy, kind, round(match.score, 3)))
    return sorted(links, key=lambda link: (link.source, link.copy))


def connected_groups(n: int, pairs: Iterable[tuple[int, int]]) -> np.ndarray:
    """Group id per image: the connected components of the links (scipy)."""
    edges = np.asarray(list(pairs), dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]
