"""Derived copies of a radiograph as public redistributions make them: resized or squashed to a
square, cropped to one knee or one half, mirrored, turned, re-encoded, re-toned, blurred,
sharpened, noised or labelled, alone and combined. ``osteo synth --copies``, the copy tests and
``bench/copies.py`` plant them to measure the detector (:mod:`~osteo_pipeline.core.copies`).

Each kind is a chain of steps (:data:`COPY_KINDS`) and the names the detector must report for it
(:mod:`~osteo_pipeline.core.copy_kinds`). Photometric strengths scale with the picture so that
each change is visible in the detector's working picture.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageFilter, ImageOps

from osteo_pipeline.core.copy_features import WORK_SIDE

#: Pixels x random generator -> pixels.
Step = Callable[[np.ndarray, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class CopyKind:
    """A planted copy: the steps that make it, in order, its format (``JPEG-60``: quality 60), and
    the kind names the detector must report for it (a name ending in ``-`` is a prefix)."""

    steps: tuple[str, ...]
    reported: tuple[str, ...]
    format: str = "JPEG"

    @property
    def photometric(self) -> bool:
        return any(step in PHOTOMETRIC for step in self.steps)


@dataclass(frozen=True)
class PlantedCopy:
    """One derived copy, its format (a Pillow format; ``JPEG-60``: JPEG at quality 60), and the
    change of aspect ratio it was given (>= 1)."""

    image: Image.Image
    format: str
    squash: float


def _knee_crop(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A square around one knee's joint (one half of a two-knee film, or the knee of a single)."""
    height, width = pixels.shape
    half = width // 2 if width > 1.3 * height else width
    x0 = 0 if half == width or rng.random() < 0.5 else width - half
    side = int(min(half, height) * rng.uniform(0.7, 0.95))
    cx = x0 + half / 2 + rng.uniform(-0.05, 0.05) * half
    cy = height * rng.uniform(0.42, 0.52)
    left = int(np.clip(cx - side / 2, 0, width - side))
    top = int(np.clip(cy - side / 2, 0, height - side))
    return pixels[top : top + side, left : left + side]


def _half(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The left or right part of a film (45 to 60% of its width, most of its height): one knee
    of two, or the side of a single knee's film that holds more of it (the other may be
    background only)."""
    height, width = pixels.shape
    part, tall = int(width * rng.uniform(0.45, 0.6)), int(height * rng.uniform(0.85, 1.0))
    top = int(rng.uniform(0, height - tall + 1))
    left, right = pixels[top : top + tall, :part], pixels[top : top + tall, width - part :]
    spread = float(left.std()) - float(right.std())
    if abs(spread) < 0.1 * float(pixels.std()):  # alike: two knees, either will do
        return left if rng.random() < 0.5 else right
    return left if spread > 0 else right


def _margin_crop(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    height, width = pixels.shape
    top, bottom = (int(height * rng.uniform(0.03, 0.1)) for _ in range(2))
    left, right = (int(width * rng.uniform(0.03, 0.1)) for _ in range(2))
    return pixels[top : height - bottom, left : width - right]


def _resized(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS))


def _smaller(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    scale = max(rng.uniform(0.3, 0.7), 224 / min(pixels.shape))
    height, width = pixels.shape
    return _resized(pixels, (round(width * scale), round(height * scale)))


def _small_turn(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Turned 4 to 12 degrees either way on the same canvas, the corners left black."""
    height, width = pixels.shape
    angle = rng.uniform(4, 12) * rng.choice([-1, 1])
    turn = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0)
    return cv2.warpAffine(pixels, turn, (width, height), flags=cv2.INTER_LINEAR)


def _tone(curve: Callable[[np.ndarray], np.ndarray]) -> Step:
    def step(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return (
            np.clip(curve(pixels.astype(np.float32) / 255) * 255, 0, 255).round().astype(np.uint8)
        )

    return step


def _gamma(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    gamma = rng.uniform(0.5, 0.7) if rng.random() < 0.5 else rng.uniform(1.5, 2.0)
    return _tone(lambda x: x**gamma)(pixels, rng)


def _brightened(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    offset = rng.uniform(0.1, 0.18)
    return _tone(lambda x: x + offset)(pixels, rng)


def _contrast(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    gain = rng.uniform(1.25, 1.45)
    return _tone(lambda x: x.mean() + (x - x.mean()) * gain)(pixels, rng)


def _clahe(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return cv2.createCLAHE(clipLimit=rng.uniform(2.5, 4.0), tileGridSize=(8, 8)).apply(pixels)


def _working_px(pixels: np.ndarray) -> float:
    """Pixels of ``pixels`` per pixel of the detector's working picture (at least 1)."""
    return max(1.0, max(pixels.shape) / WORK_SIDE)


def _blurred(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return cv2.GaussianBlur(pixels, (0, 0), rng.uniform(1.2, 2.0) * _working_px(pixels))


def _sharpened(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    unsharp = ImageFilter.UnsharpMask(
        radius=2.0 * _working_px(pixels), percent=int(rng.uniform(100, 180)), threshold=0
    )
    return np.asarray(Image.fromarray(pixels).filter(unsharp))


def _noisy(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise, grain one working pixel wide."""
    height, width = pixels.shape
    scale = _working_px(pixels)
    grain = rng.normal(0, rng.uniform(5, 8), (round(height / scale), round(width / scale)))
    noise = cv2.resize(grain.astype(np.float32), (width, height), interpolation=cv2.INTER_NEAREST)
    return np.clip(pixels + noise, 0, 255).round().astype(np.uint8)


def _marked(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A burnt-in label near a corner, white, as scanners and viewers print them."""
    height, width = pixels.shape
    marked = pixels.copy()
    scale = max(width, height) / 400
    corner = (int(width * rng.uniform(0.03, 0.4)), int(height * rng.uniform(0.08, 0.15)))
    label = str(rng.choice(["R", "L", "AP", "PA"])) + f" {int(rng.integers(1, 99)):02d}"
    thickness = max(2, round(2.5 * scale))
    cv2.putText(marked, label, corner, cv2.FONT_HERSHEY_SIMPLEX, scale, 255, thickness)
    return marked


GEOMETRIC: dict[str, Step] = {
    "smaller": _smaller,
    "square-224": lambda pixels, rng: _resized(pixels, (224, 224)),
    "knee-crop": _knee_crop,
    "half": _half,
    "margin-crop": _margin_crop,
    "mirror": lambda pixels, rng: np.fliplr(pixels),
    "turn-90": lambda pixels, rng: np.rot90(pixels, 1),
    "turn-180": lambda pixels, rng: np.rot90(pixels, 2),
    "small-turn": _small_turn,
    "pad": lambda pixels, rng: np.pad(
        pixels,
        ((int(0.08 * max(pixels.shape)),) * 2, (int(0.04 * max(pixels.shape)),) * 2),
        constant_values=0,
    ),
}
PHOTOMETRIC: dict[str, Step] = {
    "invert": lambda pixels, rng: 255 - pixels,
    "brighten": _brightened,
    "contrast": _contrast,
    "gamma": _gamma,
    "equalise": lambda pixels, rng: np.asarray(ImageOps.equalize(Image.fromarray(pixels))),
    "clahe": _clahe,
    "blur": _blurred,
    "sharpen": _sharpened,
    "noise": _noisy,
    "mark": _marked,
}

#: The derived copies ``osteo synth --copies`` plants, by name.
COPY_KINDS: dict[str, CopyKind] = {
    "resized": CopyKind(("smaller",), ("resized",), "PNG"),
    "jpeg-60": CopyKind((), ("re-encoded",), "JPEG-60"),
    "padded": CopyKind(("pad",), ("padded",), "PNG"),
    "mirrored": CopyKind(("mirror",), ("mirrored",)),
    "rotated-90": CopyKind(("turn-90",), ("rotated-90",), "PNG"),
    "rotated-180": CopyKind(("turn-180",), ("rotated-180",), "PNG"),
    "rotated-small": CopyKind(("small-turn",), ("rotated-",)),
    "knee-crop-224": CopyKind(("knee-crop", "square-224"), ("crop",)),
    "mirrored-knee-crop-224": CopyKind(("knee-crop", "mirror", "square-224"), ("crop", "mirrored")),
    "margin-crop": CopyKind(("margin-crop",), ("crop",)),
    "squashed-224": CopyKind(("square-224",), ("resized", "squashed-")),
    "half-squashed-224": CopyKind(("half", "square-224"), ("crop", "squashed-")),
    "mirrored-half-squashed-224-brightened": CopyKind(
        ("half", "mirror", "square-224", "brighten"),
        ("crop", "squashed-", "mirrored", "brightened"),
    ),
    "squashed-224-inverted": CopyKind(
        ("square-224", "invert"), ("resized", "squashed-", "inverted")
    ),
    "inverted": CopyKind(("invert",), ("inverted",), "PNG"),
    "brightened": CopyKind(("brighten",), ("brightened",)),
    "contrast": CopyKind(("contrast",), ("contrast-stretched",)),
    "gamma": CopyKind(("gamma",), ("gamma",)),
    "equalised": CopyKind(("equalise",), ("equalised",)),
    "clahe": CopyKind(("clahe",), ("equalised-locally",)),
    "blurred": CopyKind(("blur",), ("blurred",)),
    "sharpened": CopyKind(("sharpen",), ("sharpened",), "PNG"),
    "noisy": CopyKind(("noise",), ("noisy",), "PNG"),
    "marked": CopyKind(("mark",), ("marked",)),
}


def derived_copy(pixels: np.ndarray, kind: str, rng: np.random.Generator) -> PlantedCopy:
    """One derived copy of a uint8 grayscale radiograph, of a kind in :data:`COPY_KINDS`."""
    if kind not in COPY_KINDS:
        raise ValueError(f"unknown derived-copy kind {kind!r}; known: {', '.join(COPY_KINDS)}")
    recipe = COPY_KINDS[kind]
    squash = 1.0
    for step in recipe.steps:
        if step == "square-224":  # squashed from the aspect it had then (a crop's, a half's)
            aspect = pixels.shape[1] / pixels.shape[0]
            squash = max(aspect, 1 / aspect)
        pixels = ({**GEOMETRIC, **PHOTOMETRIC}[step])(np.ascontiguousarray(pixels), rng)
    return PlantedCopy(
        Image.fromarray(np.ascontiguousarray(pixels), mode="L"), recipe.format, round(squash, 3)
    )
