"""Derived copies of a radiograph: the same picture resized, re-encoded, contrast-stretched,
padded, mirrored, rotated or cropped, wherever it is filed and under whatever label.

Three steps, each cheap enough for tens of thousands of images:

1. **Features** (:func:`features`): the picture is trimmed of constant borders (padding), shrunk
   to :data:`WORK_SIDE` and contrast-equalised (CLAHE); ORB keypoints are taken from it and from
   its mirror image. ORB is rotation- and scale-invariant; the mirror covers left-right flips.
2. **Candidates** (:func:`candidate_pairs`): every keypoint looks up its nearest keypoints of all
   other images in a Hamming nearest-neighbour index (faiss; an inverted file for large sets, so
   sub-quadratic); each image's
   partners with the most close keypoints, plain or mirrored, become candidate pairs.
3. **Verification** (:func:`verify`): the two images' keypoints are matched (ratio test), a
   similarity transform (rotation, scale, shift) is fitted with RANSAC, the copy is warped onto
   its source, and the high-passed pixels of the overlap must correlate. Distinct radiographs
   share anatomy but not fine structure and noise, so this keeps two patients apart, while
   resizing to 224 px, JPEG re-encoding and contrast changes keep a copy's correlation high.

Each link carries its kind (``resized``, ``re-encoded``, ``padded`` or ``crop``, with ``mirrored``
and/or ``rotated-N`` in front when the orientation changed) and its score. Byte-identical copies
(``exact``) are found by content hash before any of this. Groups are the connected components of
the links (:func:`connected_groups`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass

import cv2
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

#: Longest side, in px, of the picture that features and verification use.
WORK_SIDE = 512
#: Pictures whose shorter side is below this (px) are matched only when identical: below it, the
#: fine structure that tells two patients apart is gone (distinct synthetic knees at 160 px
#: correlate up to 0.43 after fitting, at 224 px up to 0.34). Trimming a black background may
#: leave less, but not under half of it.
MIN_SIDE = 200

#: Keypoints per orientation and image.
KEYPOINTS = 200
#: Version of the features and the matching: cached results of another version are not reused.
VERSION = "copies-orb-5"


@dataclass(frozen=True)
class Features:
    """What matching needs of one image (all coordinates in its working picture)."""

    shape: tuple[int, int]  # (height, width) of the working picture
    trimmed: bool  # constant borders (padding) were cut off
    points: np.ndarray  # (n, 2) float32 keypoint positions
    descriptors: np.ndarray  # (n, 32) uint8 ORB descriptors
    mirrored_points: np.ndarray  # the same of the mirror image, in the mirror image's coordinates
    mirrored_descriptors: np.ndarray

    def arrays(self) -> dict[str, np.ndarray]:
        """As plain arrays, for caching (:meth:`from_arrays` reads them back)."""
        return {
            "shape": np.asarray(self.shape),
            "trimmed": np.asarray(self.trimmed),
            "points": self.points,
            "descriptors": self.descriptors,
            "mirrored_points": self.mirrored_points,
            "mirrored_descriptors": self.mirrored_descriptors,
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Features:
        return cls(
            shape=(int(arrays["shape"][0]), int(arrays["shape"][1])),
            trimmed=bool(arrays["trimmed"]),
            **{
                k: arrays[k]
                for k in ("points", "descriptors", "mirrored_points", "mirrored_descriptors")
            },
        )


@dataclass(frozen=True)
class Link:
    """``copy`` derives from ``source`` (row indices): ``kind`` says how, ``score`` how surely."""

    source: int
    copy: int
    kind: str
    score: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def trim_borders(gray: np.ndarray, tolerance: int = 3) -> np.ndarray:
    """``gray`` without constant rows and columns at its edges (padding: their values span at
    most ``tolerance`` grey levels, where even smooth anatomy carries noise); never cut below a
    quarter of either side, so a nearly blank image is left as it is."""
    rows = np.ptp(gray, axis=1) > tolerance
    cols = np.ptp(gray, axis=0) > tolerance
    if not rows.any() or not cols.any():
        return gray
    top, bottom = int(np.argmax(rows)), len(rows) - int(np.argmax(rows[::-1]))
    left, right = int(np.argmax(cols)), len(cols) - int(np.argmax(cols[::-1]))
    if (bottom - top) * 4 < gray.shape[0] or (right - left) * 4 < gray.shape[1]:
        return gray
    return gray[top:bottom, left:right]


def _shrink(picture: np.ndarray) -> np.ndarray:
    scale = min(1.0, WORK_SIDE / max(picture.shape))
    small = (
        cv2.resize(picture, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        if scale < 1
        else picture
    )
    return np.ascontiguousarray(small, dtype=np.float32)


def working_picture(gray: np.ndarray) -> np.ndarray:
    """The picture features and verification use: trimmed, shrunk to :data:`WORK_SIDE`, float32."""
    return _shrink(trim_borders(np.asarray(gray)))


def _orb(picture: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    equalised = cv2.normalize(picture, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    equalised = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(equalised)
    orb = cv2.ORB_create(
        nfeatures=KEYPOINTS,
        scaleFactor=1.3,
        nlevels=5,
        edgeThreshold=15,
        patchSize=15,
        fastThreshold=5,
    )
    keypoints, descriptors = orb.detectAndCompute(equalised, None)
    if descriptors is None:
        return np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8)
    return np.float32([k.pt for k in keypoints]).reshape(-1, 2), descriptors


def features(gray: np.ndarray) -> Features:
    """The :class:`Features` of a grayscale picture (any size, uint8 or float)."""
    gray = np.asarray(gray)
    content = trim_borders(gray)
    picture, trimmed = _shrink(content), content.shape != gray.shape
    if min(gray.shape) < MIN_SIDE or min(content.shape) < MIN_SIDE // 2:
        none = (np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8))
        return Features(picture.shape, trimmed, *none, *none)
    points, descriptors = _orb(picture)
    mirrored_points, mirrored_descriptors = _orb(np.ascontiguousarray(np.fliplr(picture)))
    return Features(
        picture.shape, trimmed, points, descriptors, mirrored_points, mirrored_descriptors
    )


#: Below this many keypoints an exact index is faster than an approximate one.
EXACT_UP_TO = 50_000


def _hamming_index(descriptors: np.ndarray):
    """Nearest neighbours in Hamming space with faiss: exact for small sets; above
    :data:`EXACT_UP_TO` keypoints an inverted file of sqrt(n) cells, 8 searched per query, so
    the total cost grows as n^1.5, not n^2."""
    import faiss

    bits = descriptors.shape[1] * 8
    data = np.ascontiguousarray(descriptors)
    if len(data) <= EXACT_UP_TO:
        index = faiss.IndexBinaryFlat(bits)
    else:
        cells = int(np.sqrt(len(data)))
        index = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(bits), bits, cells)
        sample = np.random.default_rng(0).choice(
            len(data), min(len(data), 40 * cells), replace=False
        )
        index.train(data[np.sort(sample)])
        index.nprobe = 8
    index.add(data)
    return index


def candidate_pairs(
    prints: Sequence[Features],
    queried: Iterable[int],
    sources: Iterable[int] | None = None,
    neighbours: int = 5,
    max_distance: int = 40,
    min_votes: int = 6,
    partners: int = 4,
) -> list[tuple[int, int, bool]]:
    """``(copy, source, mirrored)`` pairs worth verifying: for each image in ``queried``, the
    ``partners`` images among ``sources`` (default: all) holding the most keypoints within
    ``max_distance`` bits of one of its own, counting a source's mirror image separately."""
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
            owner_parts.append(np.full(len(desc), i))
            mirror_parts.append(np.full(len(desc), mirrored))
            descriptor_parts.append(desc)
    owners, mirrors = np.concatenate(owner_parts), np.concatenate(mirror_parts)
    if len(owners) == 0:
        return []
    index = _hamming_index(np.concatenate(descriptor_parts))
    pairs = []
    for copy in queried:
        desc = prints[copy].descriptors
        if len(desc) == 0:
            continue
        distances, rows = index.search(np.ascontiguousarray(desc), neighbours)
        close = (rows >= 0) & (distances <= max_distance)
        close &= owners[np.where(rows >= 0, rows, 0)] != copy
        hit_owner, hit_mirror = owners[rows[close]], mirrors[rows[close]]
        keypoint = np.nonzero(close)[0]
        # one vote per (keypoint, partner, orientation), however many of its neighbours it holds
        votes = np.unique(np.stack([keypoint, hit_owner, hit_mirror]), axis=1)
        partner_keys, counts = np.unique(votes[1:], axis=1, return_counts=True)
        best = np.argsort(-counts, kind="stable")[:partners]
        pairs += [
            (copy, int(partner_keys[0, b]), bool(partner_keys[1, b]))
            for b in best
            if counts[b] >= min_votes
        ]
    return pairs


def _highpass(image: np.ndarray) -> np.ndarray:
    return image - cv2.GaussianBlur(image, (0, 0), 1.5)


@dataclass(frozen=True)
class Match:
    score: float  # correlation of high-passed pixels over the overlap, -1 when no fit was found
    transform: np.ndarray | None  # 2x3 similarity from the copy's picture into the source's
    cover: float  # share of the source's picture the copy covers
    # share of the copy's picture that lies on the source (< 1: the source is a crop of it)
    inside: float


NO_MATCH = Match(-1.0, None, 0.0, 0.0)


def verify(
    copy: Features,
    copy_picture: np.ndarray,
    source: Features,
    source_picture: np.ndarray,
    mirrored: bool,
) -> Match:
    """Fit the copy onto the source (or onto its mirror image) and score the fit: RANSAC on ratio-
    tested keypoint matches, then normalised correlation of the high-passed overlap."""
    points, descriptors = (
        (source.mirrored_points, source.mirrored_descriptors)
        if mirrored
        else (source.points, source.descriptors)
    )
    if len(copy.descriptors) < 6 or len(descriptors) < 6:
        return NO_MATCH
    pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(copy.descriptors, descriptors, k=2)
    good = [m[0] for m in pairs if len(m) == 2 and m[0].distance < 0.85 * m[1].distance]
    if len(good) < 6:
        return NO_MATCH
    from_points = copy.points[[m.queryIdx for m in good]]
    to_points = points[[m.trainIdx for m in good]]
    transform, inliers = cv2.estimateAffinePartial2D(
        from_points, to_points, method=cv2.RANSAC, ransacReprojThreshold=3.0
    )
    if transform is None or int(inliers.sum()) < 6:
        return NO_MATCH
    scale2 = abs(float(np.linalg.det(transform[:, :2])))
    if (
        not 0.01 <= scale2 <= 100
    ):  # degenerate, or a copy more than 10x smaller or larger: not a fit
        return NO_MATCH
    target = np.ascontiguousarray(np.fliplr(source_picture)) if mirrored else source_picture
    # Compare in the frame of the coarser picture: a 224 px crop of a 2,400 px film holds less
    # detail than the film's working picture, and detail only one side has is not a difference.
    if scale2 > 1:  # the copy is the coarser one: bring the source down onto it
        fixed, moving, onto = (
            copy_picture,
            cv2.GaussianBlur(target, (0, 0), 0.5 * np.sqrt(scale2)),
            cv2.invertAffineTransform(transform),
        )
    else:  # the source is the coarser one (or as fine): bring the copy down onto it
        fixed, moving, onto = (
            target,
            cv2.GaussianBlur(copy_picture, (0, 0), 0.5 / np.sqrt(scale2))
            if scale2 < 1
            else copy_picture,
            transform,
        )
    height, width = fixed.shape
    warped = cv2.warpAffine(moving, onto, (width, height), flags=cv2.INTER_LINEAR)
    overlap = cv2.warpAffine(np.ones_like(moving), onto, (width, height)) > 0.99
    overlap = cv2.erode(overlap.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    if overlap.sum() < 400:
        return NO_MATCH
    a, b = _highpass(warped)[overlap], _highpass(fixed)[overlap]
    a, b = a - a.mean(), b - b.mean()
    score = float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum() + 1e-9))
    area = float(overlap.sum()) * (scale2 if scale2 > 1 else 1.0)  # the overlap in source pixels
    return Match(
        score,
        transform,
        min(1.0, area / target.size),
        min(1.0, area / (copy_picture.size * scale2)),
    )


def link_kind(
    match: Match,
    mirrored: bool,
    copy: Features,
    source: Features,
    copy_size: tuple[int, int],
    source_size: tuple[int, int],
) -> str:
    """Name how a copy derives from its source: orientation first, then crop, padded, resized or
    re-encoded (same size once turned, other bytes: a re-encoding or a contrast change). Sizes
    are (width, height); (0, 0) when not known."""
    assert match.transform is not None
    angle = float(np.degrees(np.arctan2(match.transform[1, 0], match.transform[0, 0])))
    quarter = round(angle / 90) % 4
    orientation = [] if not mirrored else ["mirrored"]
    if abs(angle - 90 * round(angle / 90)) > 5:
        orientation.append(f"rotated-{round(angle) % 360}")
    elif quarter:
        orientation.append(f"rotated-{90 * quarter}")
    if match.cover < 0.8:
        base = "crop"
    elif copy.trimmed != source.trimmed:
        base = "padded"
    else:
        turned = tuple(copy_size[::-1]) if quarter % 2 else tuple(copy_size)
        base = "re-encoded" if turned == tuple(source_size) != (0, 0) else "resized"
    return "+".join([*orientation, base])


def find_links(
    prints: Sequence[Features],
    pictures: Callable[[int], np.ndarray],
    sizes: Sequence[tuple[int, int]],
    queried: Iterable[int] | None = None,
    sources: Iterable[int] | None = None,
    threshold: float = 0.5,
) -> list[Link]:
    """Verified derived-copy links among ``prints``; ``pictures(i)`` gives image i's working
    picture (:func:`working_picture`), ``sizes`` each file's (width, height), (0, 0) when not
    known. Only pairs of an image in ``queried`` (default: all) and one in ``sources`` (default:
    all) are looked for: a re-validation matches its new files against all, an evaluation its
    images against the training images."""
    everyone = set(range(len(prints)))
    queried = everyone if queried is None else set(queried)
    sources = everyone if sources is None else set(sources)
    candidates = candidate_pairs(prints, queried, sources) + candidate_pairs(
        prints, sources - queried, sources=queried
    )
    links: dict[frozenset[int], Link] = {}
    for copy, source, mirrored in candidates:
        if frozenset((copy, source)) in links:
            continue
        match = verify(prints[copy], pictures(copy), prints[source], pictures(source), mirrored)
        if (
            match.score >= threshold and match.inside < 0.8 <= match.cover
        ):  # the source is the crop: turn the link round
            turned = verify(
                prints[source], pictures(source), prints[copy], pictures(copy), mirrored
            )
            if turned.score >= threshold:
                copy, source, match = source, copy, turned
        if match.score >= threshold:
            kind = link_kind(
                match, mirrored, prints[copy], prints[source], sizes[copy], sizes[source]
            )
            links[frozenset((copy, source))] = Link(source, copy, kind, round(match.score, 3))
    return sorted(links.values(), key=lambda link: (link.source, link.copy))


def connected_groups(n: int, pairs: Iterable[tuple[int, int]]) -> np.ndarray:
    """Group id per image: the connected components of the links (scipy)."""
    edges = np.asarray(list(pairs), dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]
