"""Features for derived-copy matching (:mod:`~osteo_pipeline.core.copies`): the keypoints of a
picture and of the pictures a copy of it may look like.

The picture is trimmed of constant borders (padding), shrunk to :data:`WORK_SIDE`, smoothed and
equalised; ORB keypoints are taken from it (not from burnt-in labels), from its mirror image and
from its inverse; for a square picture (often a film squashed to a square) from it stretched back
along either axis; and for a picture whose tones a full equalisation reshapes, from that. ORB is
rotation- and scale-invariant; the mirror covers left-right flips, the inverse a swap of dark and
bright.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from osteo_pipeline.core.copy_check import burnt_in
from osteo_pipeline.core.copy_fit import Pose

#: Longest side, in px, of the picture that features and verification use.
WORK_SIDE = 512
#: Pictures whose shorter side is below this (px) are matched only when identical: below it, the
#: fine structure that tells two patients apart is gone (distinct synthetic knees at 160 px
#: correlate up to 0.43 after fitting, at 224 px up to 0.34). Trimming a constant background may
#: leave less, but not under a third of it (half a film with a wide collimated border, squashed
#: to 224 px, keeps the knee in 75 to 95 px of its width).
MIN_SIDE = 200
#: Keypoints per orientation and image.
KEYPOINTS = 200
#: Keypoints of each extra picture (the inverse, the stretches of a square, the full equalisation):
#: they look others up and fit, but are not looked up.
LOOKUP_KEYPOINTS = 64
#: A picture whose full histogram equalisation differs from the clip-limited one ORB reads by more
#: than this many grey levels on average (a film mostly near-black, its anatomy in a few levels)
#: also looks up with the keypoints of its fully equalised picture: an equalised copy of it shows
#: what those levels hid, and little else of it matches.
RESHAPED = 50


@dataclass(frozen=True)
class Features:
    """What matching needs of one image (all coordinates in its working picture)."""

    shape: tuple[int, int]  # (height, width) of the working picture
    trimmed: bool  # constant borders (padding) were cut off
    points: np.ndarray  # (n, 2) float32 keypoint positions
    descriptors: np.ndarray  # (n, 32) uint8 ORB descriptors
    mirrored_points: np.ndarray  # the same of the mirror image, in the mirror image's coordinates
    mirrored_descriptors: np.ndarray
    inverted_points: np.ndarray  # the same of the inverse (dark and bright swapped)
    inverted_descriptors: np.ndarray
    equalised_points: np.ndarray  # the same of its full equalisation (none unless RESHAPED)
    equalised_descriptors: np.ndarray
    # a square picture's keypoints once stretched back by each of STRETCHES (points in its own
    # coordinates), and the stretch of each
    stretched_points: np.ndarray
    stretched_descriptors: np.ndarray
    stretched_by: np.ndarray

    ARRAYS = (
        "points",
        "descriptors",
        "mirrored_points",
        "mirrored_descriptors",
        "inverted_points",
        "inverted_descriptors",
        "equalised_points",
        "equalised_descriptors",
        "stretched_points",
        "stretched_descriptors",
        "stretched_by",
    )

    def fitted(self, pose: Pose) -> tuple[np.ndarray, np.ndarray]:
        """The keypoints (points, descriptors) this picture is fitted with in ``pose``: its
        inverse's, its full equalisation's, or its own with those of all its stretches (their
        points are in its own coordinates, and one of them may describe a squashed copy's
        corners best)."""
        if pose.inverted:
            return self.inverted_points, self.inverted_descriptors
        if pose.equalised:
            return self.equalised_points, self.equalised_descriptors
        return (
            np.concatenate([self.points, self.stretched_points]),
            np.concatenate([self.descriptors, self.stretched_descriptors]),
        )

    def lookups(self) -> list[tuple[Pose, np.ndarray]]:
        """Each pose this picture looks up in, with its descriptors."""
        return [
            (Pose(inverted=True), self.inverted_descriptors),
            (Pose(equalised=True), self.equalised_descriptors),
            *[
                (Pose(stretch=float(f)), self.stretched_descriptors[self.stretched_by == f])
                for f in np.unique(self.stretched_by)
            ],
        ]

    def arrays(self) -> dict[str, np.ndarray]:
        """As plain arrays, for caching (:meth:`from_arrays` reads them back)."""
        return {
            "shape": np.asarray(self.shape),
            "trimmed": np.asarray(self.trimmed),
            **{name: getattr(self, name) for name in self.ARRAYS},
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Features:
        return cls(
            shape=(int(arrays["shape"][0]), int(arrays["shape"][1])),
            trimmed=bool(arrays["trimmed"]),
            **{name: arrays[name] for name in cls.ARRAYS},
        )


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


#: ORB's settings: a coarse pyramid (5 levels, 1.3 apart) and small patches, for pictures of
#: :data:`WORK_SIDE` px.
ORB_SCALE, ORB_LEVELS = 1.3, 5


def _orb(keypoints: int) -> cv2.ORB:
    return cv2.ORB_create(
        nfeatures=keypoints,
        scaleFactor=ORB_SCALE,
        nlevels=ORB_LEVELS,
        edgeThreshold=15,
        patchSize=15,
        fastThreshold=5,
    )


def _equalised(picture: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The picture ORB reads: smoothed (noise, grain and JPEG blocks make no corners), then
    equalised over the whole picture with a clip limit (a global monotone change of tones, such
    as a gamma or an equalisation, then leaves nearly the same picture, and a flat background is
    not blown up into noise), then locally (CLAHE). Second, the same fully equalised (no clip
    limit) where that differs from the first by more than :data:`RESHAPED` levels, else None."""
    smooth = cv2.GaussianBlur(np.clip(picture, 0, 255).astype(np.float32), (0, 0), 1.0)
    smooth = smooth.round().astype(np.uint8)
    clipped = cv2.createCLAHE(clipLimit=3.0, tileGridSize=(1, 1)).apply(smooth)
    full = cv2.equalizeHist(smooth)
    local = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
    reshaped = np.mean(np.abs(full.astype(np.int16) - clipped)) > RESHAPED
    return local.apply(clipped), local.apply(full) if reshaped else None


def _as_arrays(
    keypoints: Sequence[cv2.KeyPoint], descriptors: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    if descriptors is None or not len(keypoints):
        return np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8)
    return np.float32([k.pt for k in keypoints]).reshape(-1, 2), descriptors


def _turned(
    keypoints: Sequence[cv2.KeyPoint], width: int | None, angle: Callable[[float], float]
) -> list[cv2.KeyPoint]:
    """``keypoints`` with their orientation turned by ``angle``, and mirrored left to right in a
    picture ``width`` px wide (not when None) exactly as ORB's pyramid mirrors them (each level
    ``round(width / scale)`` px wide)."""
    turned = []
    for k in keypoints:
        x = k.pt[0]
        if width is not None:
            scale = ORB_SCALE**k.octave
            x = (round(width / scale) - 1) * scale - x
        turned.append(
            cv2.KeyPoint(x, k.pt[1], k.size, angle(k.angle) % 360, k.response, k.octave, k.class_id)
        )
    return turned


def _strongest(keypoints: Sequence[cv2.KeyPoint], count: int) -> list[cv2.KeyPoint]:
    """About the ``count`` keypoints ORB would keep had it been asked for that many: the
    strongest (Harris) of ``keypoints`` on each pyramid level, in ORB's share per level."""
    factor = 1 / ORB_SCALE
    share = count * (1 - factor) / (1 - factor**ORB_LEVELS)
    kept, left = [], count
    for level in range(ORB_LEVELS):
        wanted = left if level == ORB_LEVELS - 1 else min(left, round(share * factor**level))
        on_level = sorted((k for k in keypoints if k.octave == level), key=lambda k: -k.response)
        kept += on_level[:wanted]
        left -= wanted
    return kept


#: A square picture is often a film squashed to a square: it also looks up stretched back
#: (width over height times these).
STRETCHES = (0.5, 0.71, 1.41, 2.0)


def _stretched_orb(
    equalised: np.ndarray, unlabelled: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ORB of the ``equalised`` picture stretched by each of :data:`STRETCHES` (area kept),
    outside burnt-in labels (``unlabelled``), points mapped back into the picture, and the
    stretch of each keypoint."""
    parts = []
    for stretch in STRETCHES:
        fx, fy = np.sqrt(stretch), 1 / np.sqrt(stretch)
        stretched = cv2.resize(equalised, None, fx=fx, fy=fy, interpolation=cv2.INTER_AREA)
        size = stretched.shape[::-1]
        outside = cv2.resize(unlabelled, size, interpolation=cv2.INTER_NEAREST)
        points, descriptors = _as_arrays(
            *_orb(LOOKUP_KEYPOINTS).detectAndCompute(stretched, outside)
        )
        parts.append((points / np.float32([fx, fy]), descriptors, np.full(len(points), stretch)))
    points, descriptors, stretch = (np.concatenate(column) for column in zip(*parts))
    return points.astype(np.float32), descriptors, stretch.astype(np.float32)


def features(gray: np.ndarray) -> Features:
    """The :class:`Features` of a grayscale picture (any size, uint8 or float).

    The mirror image and the inverse have the same corners as the picture (FAST and the Harris
    score are symmetric under both), turned: a mirror takes an orientation a to 180 - a, an
    inverse to a + 180. So their keypoints are found once and only described again, at a fifth
    of the cost of detecting them anew and with the same descriptors."""
    gray = np.asarray(gray)
    content = trim_borders(gray)
    picture, trimmed = _shrink(content), content.shape != gray.shape
    none = (np.zeros((0, 2), np.float32), np.zeros((0, 32), np.uint8))
    if min(gray.shape) < MIN_SIDE or min(content.shape) < MIN_SIDE // 3:
        return Features(
            picture.shape, trimmed, *none, *none, *none, *none, *none, np.zeros(0, np.float32)
        )
    equalised, fully_equalised = _equalised(picture)
    unlabelled = (~burnt_in(picture)).astype(np.uint8)
    orb = _orb(KEYPOINTS)
    keypoints, descriptors = orb.detectAndCompute(equalised, unlabelled)
    mirrored = orb.compute(
        np.ascontiguousarray(np.fliplr(equalised)),
        _turned(keypoints, equalised.shape[1], lambda a: 180 - a),
    )
    inverted = orb.compute(
        255 - equalised, _turned(_strongest(keypoints, LOOKUP_KEYPOINTS), None, lambda a: a + 180)
    )
    reshaped = (
        _as_arrays(*_orb(LOOKUP_KEYPOINTS).detectAndCompute(fully_equalised, unlabelled))
        if fully_equalised is not None
        else none
    )
    square = abs(np.log(gray.shape[1] / gray.shape[0])) < 0.03
    return Features(
        picture.shape,
        trimmed,
        *_as_arrays(keypoints, descriptors),
        *_as_arrays(*mirrored),
        *_as_arrays(*inverted),
        *reshaped,
        *(_stretched_orb(equalised, unlabelled) if square else (*none, np.zeros(0, np.float32))),
    )
