"""Fitting a candidate copy onto its source.

The geometry is an affine transform, fitted with RANSAC to keypoint matches: independent x and y
scales (a film squashed to a square, a half of it squashed), any rotation, a mirror (matched
against the source's mirror image), shifts (crops). It must stay within what redistributions do
(:func:`plausible`): a zoom of at most :data:`MAX_ZOOM` either way, an aspect change of at most
:data:`MAX_ASPECT`, squashed along the axes of one of the two pictures, within
:data:`MAX_AXIS_TILT` degrees. A squash along a diagonal is what it takes to bend one knee onto
another, never what a redistribution did. A fit whose pixel check
(:mod:`~osteo_pipeline.core.copy_check`) falls short is polished once on the pixels
(:func:`refine`).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from osteo_pipeline.core.copy_check import MIN_OVERLAP, matched, shrunk, shrunk_transform

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


@dataclass(frozen=True)
class Pose:
    """How a candidate copy is matched to its source: against the source's mirror image, and
    with the copy's inverted keypoints (and pixels) or not; with the keypoints of its full
    equalisation or not. ``stretch``: which of a square copy's stretched pictures proposed the
    pair (the fit then uses all its keypoints)."""

    mirrored: bool = False
    inverted: bool = False
    stretch: float = 1.0
    equalised: bool = False


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


def _toned_like(copy: np.ndarray, source: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """``copy`` with its tones mapped onto those of ``source`` (warped onto it by ``transform``)
    where the two overlap."""
    warped, inside = _warped_onto(copy, source, transform)
    return matched(copy, warped, inside)


def _agreement(copy: np.ndarray, source: np.ndarray, transform: np.ndarray) -> float:
    """Correlation of ``copy`` and ``source`` warped onto it by ``transform`` (copy -> source)."""
    warped, inside = _warped_onto(copy, source, transform)
    if inside.sum() < MIN_OVERLAP // 4:
        return -1.0
    return float(np.corrcoef(copy[inside], warped[inside])[0, 1])


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
        cv2.GaussianBlur(shrunk(picture, scale), (0, 0), 1.0)
        for picture in (copy_picture, source_picture)
    )
    start = shrunk_transform(transform, scale)
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
