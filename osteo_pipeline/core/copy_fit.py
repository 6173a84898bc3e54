"""Fitting a candidate copy onto its source, and checking the fit pixel by pixel.

The geometry is an affine transform, fitted with RANSAC to keypoint matches: independent x and y
scales (a film squashed to a square, a half of it squashed), any rotation, a mirror (matched
against the source's mirror image), shifts (crops). It must stay within what redistributions do
(:func:`plausible`): a zoom of at most :data:`MAX_ZOOM` either way, an aspect change of at most
:data:`MAX_ASPECT`, squashed along the axes of one of the two pictures, within
:data:`MAX_AXIS_TILT` degrees. A squash along a diagonal is what it takes to bend one knee onto
another, never what a redistribution did.

The pixel check compares the two pictures at the resolution they share (each is blurred along
the axes where it is finer than the other) in the coarser one's frame, where both have structure
(flat background holds only noise, which a re-toned copy amplifies). It correlates their
*detail*: the high-passed picture divided by its local contrast, clipped. Distinct radiographs
share anatomy but not fine structure and noise, so their detail does not correlate, while a
copy's does whatever was done to its tones: brightness, contrast, gamma, histogram equalisation
and CLAHE (locally monotone changes scale detail locally, and the local contrast divides that
out), blur, sharpening, noise, a burnt-in label (clipping bounds its weight). An inverted copy
(MONOCHROME1 against MONOCHROME2) is found by its inverted keypoints and compared inverted. A fit
that falls short is polished once on the pixels (:func:`refine`) and scored again, and one still
short by less than half is scored once more with the copy's tones mapped onto the source's
(``compare(..., toned=True)``): an equalisation bends tones further than the local contrast
divides out.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

#: The largest zoom, either way, between a copy and its source.
MAX_ZOOM = 10.0
#: The largest change of aspect ratio: a film of 4:5 whose half is squashed to a square is 2.5.
MAX_ASPECT = 3.0
#: Where the aspect changed, the squash runs along one picture's axes within this (degrees).
MAX_AXIS_TILT = 20.0
#: Keypoint matches, and RANSAC inliers, a fit needs.
MIN_MATCHES = 6
#: A refined fit (:func:`refine`) is kept only when the two smoothed pictures then correlate this
#: well: a copy's nearly always do, even noised or squashed, while refining also pulls two
#: different knees' anatomy together, but not this close (docs/validation.md has the figures)...
MIN_AGREEMENT = 0.98
#: ... or this well once the copy's tones are mapped onto the source's, as a re-toned copy's do: a
#: fitted tone curve absorbs some of any difference, so the bar is higher.
MIN_TONED_AGREEMENT = 0.99
#: Fits whose smoothed pictures correlate less than this are not refined: those of copies start
#: above it, while most fits of two different knees start lower (refining costs an ECC run).
MIN_START_AGREEMENT = 0.85
#: Overlap, in pixels of the compared frame, below which a fit is not judged.
MIN_OVERLAP = 400


@dataclass(frozen=True)
class Pose:
    """How a candidate copy is matched to its source: against the source's mirror image, and
    with the copy's inverted keypoints (and pixels) or not. ``stretch``: which of a square
    copy's stretched pictures proposed the pair (the fit then uses all its keypoints)."""

    mirrored: bool = False
    inverted: bool = False
    stretch: float = 1.0


@dataclass(frozen=True)
class Seen:
    """One picture in the compared frame: its pixels, their low- and high-pass (Gaussian, 1.5
    px) and its local contrast (the RMS of the high-pass within about 6 px)."""

    pixels: np.ndarray
    smooth: np.ndarray
    highpass: np.ndarray
    local: np.ndarray

    @classmethod
    def of(cls, pixels: np.ndarray) -> Seen:
        smooth = cv2.GaussianBlur(pixels, (0, 0), 1.5)
        highpass = pixels - smooth
        return cls(pixels, smooth, highpass, np.sqrt(cv2.GaussianBlur(highpass**2, (0, 0), 6.0)))

    def detail(self) -> np.ndarray:
        """High-pass over local contrast, clipped to 4: alike whatever was done to the tones."""
        floor = 0.25 * float(np.sqrt(np.mean(self.highpass**2))) + 1e-3
        return np.clip(self.highpass / (self.local + floor), -4, 4)


@dataclass(frozen=True)
class Aligned:
    """The two pictures in one frame at one resolution (the copy turned back to the source's
    polarity), where they overlap, and where both have structure (what the score compares)."""

    copy: Seen
    source: Seen
    overlap: np.ndarray
    compared: np.ndarray


@dataclass(frozen=True)
class Match:
    """How well a copy fits onto a source."""

    score: float  # correlation of the two pictures' detail over the overlap; -1: no fit found
    transform: np.ndarray | None  # 2x3 affine from the copy's picture into the source's
    cover: float  # share of the source's picture the copy covers
    inside: float  # share of the copy's picture on the source (< 1: the source is a crop of it)
    aligned: Aligned | None = None


NO_MATCH = Match(-1.0, None, 0.0, 0.0)


def read_backwards(match: Match, mirrored: bool) -> Match:
    """``match`` read from its source to its copy: the linear part of the transform inverted (the
    shift is not kept), cover and inside swapped, the aligned pictures swapped."""
    assert match.transform is not None and match.aligned is not None
    linear = np.linalg.inv(match.transform[:, :2])
    if mirrored:  # the copy was fitted onto the source's mirror image: so is the source onto it
        flip = np.diag([-1.0, 1.0])
        linear = flip @ linear @ flip
    aligned = match.aligned
    return Match(
        match.score,
        np.hstack([linear, np.zeros((2, 1))]),
        match.inside,
        match.cover,
        Aligned(aligned.source, aligned.copy, aligned.overlap, aligned.compared),
    )


def plausible(linear: np.ndarray) -> bool:
    """Whether a 2x2 linear map (copy -> source) is one a redistribution makes."""
    u, singular, vt = np.linalg.svd(linear)
    if np.linalg.det(linear) <= 0:  # a mirror is matched against the mirror image, never fitted
        return False
    zoom = float(np.sqrt(singular[0] * singular[1]))
    aspect = float(singular[0] / singular[1])
    if not 1 / MAX_ZOOM <= zoom <= MAX_ZOOM or aspect > MAX_ASPECT:
        return False
    if aspect < 1.05:
        return True

    def tilt(axis: np.ndarray) -> float:  # degrees from the nearest image axis
        angle = float(np.degrees(np.arctan2(axis[1], axis[0]))) % 90
        return min(angle, 90 - angle)

    return min(tilt(vt[0]), tilt(u[:, 0])) <= MAX_AXIS_TILT


def fit(
    copy_points: np.ndarray,
    copy_descriptors: np.ndarray,
    source_points: np.ndarray,
    source_descriptors: np.ndarray,
) -> np.ndarray | None:
    """The plausible affine (2x3) taking copy keypoints onto source keypoints, or None: ratio-
    tested matches, then RANSAC."""
    if len(copy_descriptors) < MIN_MATCHES or len(source_descriptors) < MIN_MATCHES:
        return None
    pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(copy_descriptors, source_descriptors, k=2)
    good = [m[0] for m in pairs if len(m) == 2 and m[0].distance < 0.85 * m[1].distance]
    if len(good) < MIN_MATCHES:
        return None
    transform, inliers = cv2.estimateAffine2D(
        copy_points[[m.queryIdx for m in good]],
        source_points[[m.trainIdx for m in good]],
        method=cv2.RANSAC,
        ransacReprojThreshold=3.0,
    )
    if transform is None or int(inliers.sum()) < MIN_MATCHES or not plausible(transform[:, :2]):
        return None
    return transform


#: Longest side, in px, of the pictures :func:`refine` works on (ECC's cost grows with the area).
REFINE_SIDE = 256


def _warped_onto(
    copy: np.ndarray, source: np.ndarray, transform: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``source`` warped into ``copy``'s frame by ``transform`` (copy -> source), and where it
    lands."""
    height, width = copy.shape
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped = cv2.warpAffine(source, transform, (width, height), flags=flags)
    inside = cv2.warpAffine(np.ones_like(source), transform, (width, height), flags=flags) > 0.99
    return warped, inside


def _matched(picture: np.ndarray, reference: np.ndarray, where: np.ndarray) -> np.ndarray:
    """``picture`` with its tones mapped onto ``reference``'s over ``where`` (quantile matching):
    a gamma, a contrast change or an equalisation undone, so that correlation, which forgives
    only linear changes of tone, sees the same picture."""
    if where.sum() < MIN_OVERLAP // 4:
        return picture
    levels = np.linspace(0, 100, 101)
    # a tone held by many pixels (flat background) spans several levels: it maps to their mean
    tones, level_of = np.unique(np.percentile(picture[where], levels), return_inverse=True)
    mapped = np.bincount(level_of, np.percentile(reference[where], levels)) / np.bincount(level_of)
    return np.interp(picture, tones, mapped).astype(np.float32)


def _toned_like(copy: np.ndarray, source: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """``copy`` with its tones mapped onto those of ``source`` (warped onto it by ``transform``)
    where the two overlap."""
    warped, inside = _warped_onto(copy, source, transform)
    return _matched(copy, warped, inside)


def _agreement(copy: np.ndarray, source: np.ndarray, transform: np.ndarray) -> float:
    """Correlation of ``copy`` and ``source`` warped onto it by ``transform`` (copy -> source)."""
    warped, inside = _warped_onto(copy, source, transform)
    if inside.sum() < MIN_OVERLAP // 4:
        return -1.0
    return float(np.corrcoef(copy[inside], warped[inside])[0, 1])


def _shrunk(picture: np.ndarray, scale: float) -> np.ndarray:
    if scale >= 1:
        return picture
    return cv2.resize(picture, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)


def _shrunk_transform(transform: np.ndarray, scale: float) -> np.ndarray:
    """``transform`` between the two pictures once both shrink by ``scale``: only the shift
    changes."""
    shrunk = transform.astype(np.float32).copy()
    shrunk[:, 2] *= scale
    return shrunk


def glance(
    copy_picture: np.ndarray, source_picture: np.ndarray, transform: np.ndarray, inverted: bool
) -> float:
    """The score of :func:`compare` on both pictures at half size: a quarter of the work, and
    what most fits of two different knees fail (a copy's score there is as high or higher)."""
    return compare(
        _shrunk(copy_picture, 0.5),
        _shrunk(source_picture, 0.5),
        _shrunk_transform(transform, 0.5),
        inverted,
    ).score


def refine(
    copy_picture: np.ndarray, source_picture: np.ndarray, transform: np.ndarray, inverted: bool
) -> np.ndarray | None:
    """The fit polished on the pixels themselves (OpenCV's ECC, affine, from ``transform``, on
    both pictures shrunk to :data:`REFINE_SIDE`): the keypoints of a picture squashed 2:1 or
    noised sit a pixel or two off, enough to blur the pixel check. It is polished with the copy's
    tones mapped onto the source's (:func:`_toned_like`). None when that does not converge,
    leaves the plausible, or the two smoothed pictures then correlate below
    :data:`MIN_AGREEMENT`, and below :data:`MIN_TONED_AGREEMENT` with the copy's tones mapped."""
    copy_picture = 255 - copy_picture if inverted else copy_picture
    scale = min(1.0, REFINE_SIDE / max(*copy_picture.shape, *source_picture.shape))

    copy_small, source_small = (
        cv2.GaussianBlur(_shrunk(picture, scale), (0, 0), 1.0)
        for picture in (copy_picture, source_picture)
    )
    start = _shrunk_transform(transform, scale)
    if _agreement(copy_small, source_small, start) < MIN_START_AGREEMENT:
        return None  # too far off to be worth polishing (most fits of two different knees)
    copy_toned = _toned_like(copy_small, source_small, start)
    try:
        toned_agreement, polished = cv2.findTransformECC(
            copy_toned,
            source_small,
            start,
            cv2.MOTION_AFFINE,
            (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 50, 1e-4),
            None,
            5,
        )
    except cv2.error:  # did not converge
        return None
    if not plausible(polished[:, :2]) or (
        toned_agreement < MIN_TONED_AGREEMENT
        and _agreement(copy_small, source_small, polished) < MIN_AGREEMENT
    ):
        return None
    polished = polished.astype(np.float64)
    polished[:, 2] /= scale
    return polished


def _blurred(picture: np.ndarray, sigma_x: float, sigma_y: float) -> np.ndarray:
    if max(sigma_x, sigma_y) < 0.05:
        return picture
    # OpenCV reads a zero sigma_y as "same as sigma_x": a tiny one keeps that axis sharp
    return cv2.GaussianBlur(picture, (0, 0), max(sigma_x, 1e-3), sigmaY=max(sigma_y, 1e-3))


def _coarsened(picture: np.ndarray, linear: np.ndarray) -> np.ndarray:
    """``picture`` blurred along each axis where ``linear`` (its pixels -> the other picture's)
    shrinks it: detail the other picture cannot hold is not a difference."""
    reach = np.linalg.norm(linear, axis=0)  # the other picture's pixels per pixel, along x and y
    sigma = [0.5 / r if r < 1 else 0.0 for r in reach]
    return _blurred(picture, *sigma)


def sample(where: np.ndarray, at_most: int = 20_000) -> np.ndarray:
    """Flat indices of at most about ``at_most`` pixels of a mask, evenly spread."""
    chosen = np.flatnonzero(where)
    return chosen[:: max(1, len(chosen) // at_most)]


def structured(local: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Where a picture has structure: local contrast at least its median over ``where``. Flat
    film background, padding and a rotation's corners hold only faint noise, which a re-toned
    copy amplifies (a gamma, an equalisation): comparing it would compare noise."""
    if not where.any():
        return where
    return local >= max(float(np.median(local.ravel()[sample(where)])), 1e-3)


def compare(
    copy_picture: np.ndarray,
    source_picture: np.ndarray,
    transform: np.ndarray,
    inverted: bool,
    toned: bool = False,
) -> Match:
    """Score a fitted transform (copy -> source picture, the source already mirrored where the
    copy is): the two pictures brought to a common resolution in the coarser one's frame;
    ``toned``: the copy's tones mapped onto the source's there first (:func:`_matched`)."""
    zoom2 = abs(float(np.linalg.det(transform[:, :2])))  # source pixels per copy pixel
    onto_source = transform
    onto_copy = cv2.invertAffineTransform(transform)
    copy_picture = 255 - copy_picture if inverted else copy_picture
    copy_fine = _coarsened(copy_picture, onto_source[:, :2])
    source_fine = _coarsened(source_picture, onto_copy[:, :2])
    if zoom2 > 1:  # the copy is the coarser one: bring the source onto it
        fixed, moving, onto = copy_fine, source_fine, onto_copy
    else:
        fixed, moving, onto = source_fine, copy_fine, onto_source
    height, width = fixed.shape
    warped = cv2.warpAffine(moving, onto, (width, height), flags=cv2.INTER_LINEAR)
    overlap = cv2.warpAffine(np.ones_like(moving), onto, (width, height)) > 0.99
    overlap = cv2.erode(overlap.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    area = float(overlap.sum()) * (zoom2 if zoom2 > 1 else 1.0)  # the overlap in source pixels
    fixed_seen, warped_seen = Seen.of(fixed), Seen.of(warped)
    compared = (
        overlap & structured(fixed_seen.local, overlap) & structured(warped_seen.local, overlap)
    )
    if compared.sum() < MIN_OVERLAP:
        return NO_MATCH
    scored_fixed, scored_warped = fixed_seen, warped_seen
    if toned and zoom2 > 1:  # for the score only: the kind is read from the pictures as they are
        scored_fixed = Seen.of(_matched(fixed, warped, overlap))
    elif toned:
        scored_warped = Seen.of(_matched(warped, fixed, overlap))
    a, b = scored_warped.detail()[compared], scored_fixed.detail()[compared]
    a0, b0 = a - a.mean(), b - b.mean()
    score = float((a0 * b0).sum() / np.sqrt((a0 * a0).sum() * (b0 * b0).sum() + 1e-9))
    copy_side, source_side = (fixed_seen, warped_seen) if zoom2 > 1 else (warped_seen, fixed_seen)
    return Match(
        score,
        transform,
        min(1.0, area / source_picture.size),
        min(1.0, area / (copy_picture.size * zoom2)),
        Aligned(copy_side, source_side, overlap, compared),
    )
