"""The pixel check of a fitted copy: how well a copy, brought onto its source by a fitted
transform (:mod:`~osteo_pipeline.core.copy_fit`), agrees with it pixel by pixel.

It compares the two pictures at the resolution they share (each is blurred along the axes where
it is finer than the other) in the coarser one's frame, where both have structure (flat
background holds only noise, which a re-toned copy amplifies) and neither has a burnt-in label
(:func:`burnt_in`: scanners print the same labels on many films). It correlates their *detail*:
the high-passed picture divided by its local contrast, clipped. Distinct radiographs share
anatomy but not fine structure and noise, so their detail does not correlate, while a copy's does
whatever was done to its tones: brightness, contrast, gamma, histogram equalisation and CLAHE
(locally monotone changes scale detail locally, and the local contrast divides that out), blur,
sharpening, noise. An inverted copy (MONOCHROME1 against MONOCHROME2) is compared inverted. With
``compare(..., toned=True)`` the copy's tones are mapped onto the source's first: an
equalisation bends tones further than the local contrast divides out.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

#: Overlap, in pixels of the compared frame, below which a fit is not judged.
MIN_OVERLAP = 400


def burnt_in(picture: np.ndarray) -> np.ndarray:
    """Where a burnt-in label or marker is, and 7 px around it: small (at most 8% of the
    picture's longer side), thin (mostly under 7 px wide) saturated marks on dark ground (the
    unsaturated pixels within 7 px average under 120). Scanners print the same labels on many
    films, so they are left out of keypoints and of the pixel check. A bright cortex is thin and
    saturated too, in a brightened copy, but long or with bright bone on one side."""
    saturated = (picture >= 252).astype(np.uint8)
    if not saturated.any():
        return np.zeros(picture.shape, bool)
    count, marks, stats, _ = cv2.connectedComponentsWithStats(saturated, connectivity=8)
    broad = cv2.morphologyEx(
        saturated, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
    )
    unsaturated = 1.0 - saturated.astype(np.float32)
    ground = cv2.boxFilter(picture.astype(np.float32) * unsaturated, -1, (15, 15)) / np.maximum(
        cv2.boxFilter(unsaturated, -1, (15, 15)), 1e-3
    )
    area = np.maximum(np.bincount(marks.ravel(), minlength=count), 1)
    broad_share = np.bincount(marks.ravel(), broad.ravel().astype(float), count) / area
    dark_ground = np.bincount(marks.ravel(), ground.ravel(), count) / area < 120
    small = stats[:, [cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT]].max(axis=1) <= 0.08 * max(
        picture.shape
    )
    label = (broad_share < 0.2) & small & dark_ground
    label[0] = False  # the unsaturated rest
    return cv2.dilate(label[marks].astype(np.uint8), np.ones((15, 15), np.uint8)) > 0


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


#: Pixels, evenly spread, whose tones :func:`matched` reads (percentiles of all of them were most
#: of the refinement's cost).
TONE_PIXELS = 4096


def matched(picture: np.ndarray, reference: np.ndarray, where: np.ndarray) -> np.ndarray:
    """``picture`` with its tones mapped onto ``reference``'s over ``where`` (quantile matching):
    a gamma, a contrast change or an equalisation undone, so that correlation, which forgives
    only linear changes of tone, sees the same picture."""
    if where.sum() < MIN_OVERLAP // 4:
        return picture
    levels = np.linspace(0, 100, 101)
    chosen = sample(where, TONE_PIXELS)
    # a tone held by many pixels (flat background) spans several levels: it maps to their mean
    tones, level_of = np.unique(np.percentile(picture.ravel()[chosen], levels), return_inverse=True)
    mapped = np.bincount(level_of, np.percentile(reference.ravel()[chosen], levels))
    return np.interp(picture, tones, mapped / np.bincount(level_of)).astype(np.float32)


def shrunk(picture: np.ndarray, scale: float) -> np.ndarray:
    if scale >= 1:
        return picture
    return cv2.resize(picture, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)


def shrunk_transform(transform: np.ndarray, scale: float) -> np.ndarray:
    """``transform`` between the two pictures once both shrink by ``scale``: only the shift
    changes."""
    scaled = transform.astype(np.float32).copy()
    scaled[:, 2] *= scale
    return scaled


def glance(
    copy_picture: np.ndarray,
    source_picture: np.ndarray,
    transform: np.ndarray,
    inverted: bool,
    toned: bool = False,
) -> float:
    """The score of :func:`compare` on both pictures at half size: a quarter of the work, and
    what most fits of two different knees fail (a copy's score there is as high or higher)."""
    return compare(
        shrunk(copy_picture, 0.5),
        shrunk(source_picture, 0.5),
        shrunk_transform(transform, 0.5),
        inverted,
        toned,
    ).score


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
    ``toned``: the copy's tones mapped onto the source's there first (:func:`matched`)."""
    zoom2 = abs(float(np.linalg.det(transform[:, :2])))  # source pixels per copy pixel
    onto_source = transform
    onto_copy = cv2.invertAffineTransform(transform)
    copy_picture = 255 - copy_picture if inverted else copy_picture
    copy_fine = _coarsened(copy_picture, onto_source[:, :2])
    source_fine = _coarsened(source_picture, onto_copy[:, :2])
    if zoom2 > 1:  # the copy is the coarser one: bring the source onto it
        fixed, moving, onto, labels = (
            copy_fine,
            source_fine,
            onto_copy,
            (copy_picture, source_picture),
        )
    else:
        fixed, moving, onto, labels = (
            source_fine,
            copy_fine,
            onto_source,
            (source_picture, copy_picture),
        )
    height, width = fixed.shape
    warped = cv2.warpAffine(moving, onto, (width, height), flags=cv2.INTER_LINEAR)
    overlap = cv2.warpAffine(np.ones_like(moving), onto, (width, height)) > 0.99
    overlap = cv2.erode(overlap.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    area = float(overlap.sum()) * (zoom2 if zoom2 > 1 else 1.0)  # the overlap in source pixels
    fixed_seen, warped_seen = Seen.of(fixed), Seen.of(warped)
    labelled = burnt_in(labels[0]) | cv2.warpAffine(
        burnt_in(labels[1]).astype(np.uint8), onto, (width, height), flags=cv2.INTER_NEAREST
    ).astype(bool)
    compared = (
        overlap
        & ~labelled
        & structured(fixed_seen.local, overlap)
        & structured(warped_seen.local, overlap)
    )
    if compared.sum() < MIN_OVERLAP:
        return NO_MATCH
    scored_fixed, scored_warped = fixed_seen, warped_seen
    if toned and zoom2 > 1:  # for the score only: the kind is read from the pictures as they are
        scored_fixed = Seen.of(matched(fixed, warped, overlap & ~labelled))
    elif toned:
        scored_warped = Seen.of(matched(warped, fixed, overlap & ~labelled))
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
