"""Knee regions of interest: each knee of a radiograph, cropped square around its joint line.

Most films in public knee sets show both knees; a 224 px downsample of a 2,400 px two-knee film
leaves the bone texture a few pixels wide. ``knee_boxes`` finds the gap between the legs (the
darkest column band near the middle, when it is clearly darker than both legs; a landscape film
with no such gap is split at its middle), then in each leg its centre column and the joint line:
the darkest row of the leg's central band with bright bone a little above (femur) and below
(tibia). The crop is a square one leg wide around that point. Detection runs on a small copy of
the image; boxes are in the full image's pixels. Pure numpy/OpenCV, no I/O.

Every image gives ``VIEWS`` crops: a film of one knee gives its knee twice, so each radiograph
weighs the same in training and the image's probability is the mean over its crops either way."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

#: Crops per image in ``knees`` mode (see the module docstring).
VIEWS = 2
#: Bump when boxes may change for the same image: on-disk crop caches are keyed by it.
VERSION = 1
#: Side (px) of the copy detection runs on.
WORK_SIDE = 256
#: A column band between the legs this much darker than the darker leg is a gap.
GAP_RATIO = 0.6
#: Films at least this much wider than tall hold two knees even when no gap shows.
BILATERAL_ASPECT = 1.15
#: Crop side in leg widths (soft tissue included).
CROP_LEG_WIDTHS = 1.0


@dataclass(frozen=True)
class Box:
    """A square crop: top-left corner and side, in the image's pixels."""

    left: int
    top: int
    side: int

    def crop(self, image: np.ndarray) -> np.ndarray:
        return image[self.top : self.top + self.side, self.left : self.left + self.side]


def _smooth(profile: np.ndarray, sigma: float) -> np.ndarray:
    radius = max(1, int(3 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / max(sigma, 1e-3)) ** 2)
    return np.convolve(np.pad(profile, radius, mode="edge"), kernel / kernel.sum(), mode="valid")


def _content(small: np.ndarray) -> tuple[int, int, int, int]:
    """Rows and columns (top, bottom, left, right) inside the black frame many films carry."""
    level = max(8.0, 0.15 * float(np.percentile(small, 99)))
    rows = np.flatnonzero(small.mean(axis=1) > level)
    cols = np.flatnonzero(small.mean(axis=0) > level)
    if len(rows) < 8 or len(cols) < 8:
        return 0, small.shape[0], 0, small.shape[1]
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def split_column(small: np.ndarray) -> int | None:
    """The column between two legs (in ``small``), or None for a single knee."""
    height, width = small.shape
    profile = _smooth(small.mean(axis=0), width / 60)
    low, high = int(0.3 * width), int(0.7 * width)
    gap = low + int(np.argmin(profile[low:high]))
    if profile[gap] < GAP_RATIO * min(profile[:gap].max(), profile[gap:].max()):
        return gap
    return width // 2 if width >= BILATERAL_ASPECT * height else None


def _knee_box(strip: np.ndarray) -> tuple[float, float, float]:
    """Centre column, joint row and crop side of the one knee in ``strip`` (its pixels)."""
    height, width = strip.shape
    level = max(8.0, 0.15 * float(np.percentile(strip, 99)))
    columns = np.clip(_smooth(strip.mean(axis=0), width / 40) - level, 0, None)
    if columns.sum() == 0:
        return width / 2, height / 2, min(width, height)
    centre = float((columns * np.arange(width)).sum() / columns.sum())
    leg = max(4.0, float((strip.mean(axis=0) > level).sum()))
    # The joint space: a dark row with bright bone a little above (femur) and below (tibia), in
    # the leg's central band.
    band = strip[:, int(max(0, centre - leg / 6)) : int(min(width, centre + leg / 6)) + 1]
    rows = _smooth(band.mean(axis=1), height / 200)
    reach = max(2, int(0.03 * height))
    score = np.full(height, -np.inf)
    score[reach:-reach] = np.minimum(rows[: -2 * reach], rows[2 * reach :]) - rows[reach:-reach]
    low, high = int(0.15 * height), int(0.85 * height)
    joint = low + int(np.argmax(score[low:high]))
    return centre, float(joint), CROP_LEG_WIDTHS * leg


def knee_boxes(gray: np.ndarray) -> list[Box]:
    """One square box per knee (left to right): two on a film of both knees, one otherwise."""
    height, width = gray.shape
    scale = WORK_SIDE / max(height, width)
    small = cv2.resize(
        gray,
        (max(1, round(width * scale)), max(1, round(height * scale))),
        interpolation=cv2.INTER_AREA,
    ).astype(np.float32)
    top, bottom, left, right = _content(small)
    content = small[top:bottom, left:right]
    gap = split_column(content)
    strips = [(0, content.shape[1])] if gap is None else [(0, gap), (gap, content.shape[1])]
    boxes = []
    for x0, x1 in strips:
        centre, joint, side = _knee_box(content[:, x0:x1])
        side = float(np.clip(side, 0.25 * content.shape[0], min(content.shape[0], x1 - x0)))
        full_side = max(1, min(round(side / scale), height, width))
        cx, cy = (left + x0 + centre) / scale, (top + joint) / scale
        boxes.append(
            Box(
                int(np.clip(round(cx - full_side / 2), 0, width - full_side)),
                int(np.clip(round(cy - full_side / 2), 0, height - full_side)),
                full_side,
            )
        )
    return boxes


def knee_crops(gray: np.ndarray, size: int) -> np.ndarray:
    """``VIEWS`` x ``size`` x ``size`` uint8: each knee of ``gray`` (area-averaged when shrunk), a
    single knee repeated."""
    crops = []
    for box in knee_boxes(gray):
        crop = box.crop(gray)
        interpolation = cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_LINEAR
        crops.append(
            cv2.resize(np.ascontiguousarray(crop), (size, size), interpolation=interpolation)
        )
    return np.stack([crops[i % len(crops)] for i in range(VIEWS)])
