"""Procedural knee-like radiographs whose bone density differs by class.

A femur from the top and a tibia from the bottom meet at a joint gap. Bone has a bright cortical
shell and a trabecular interior. With rising severity (normal -> osteopenia -> osteoporosis) the
cortex thins, trabeculae become sparser and the bone darker: the cues a classifier should learn,
and ones that survive down-scaling so tiny test models can learn them too. Sizes, formats and
modes vary so the data exercises the same paths real collections do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

#: Severity of the known class names; any other class gets one spread by its position.
KNOWN_SEVERITY = {"normal": 0.0, "osteopenia": 0.5, "osteoporosis": 1.0}


@dataclass(frozen=True)
class SynthImage:
    label: str
    image: Image.Image
    format: str  # Pillow format name: "JPEG" or "PNG"

    @property
    def suffix(self) -> str:
        return ".jpg" if self.format == "JPEG" else ".png"


def class_severity(classes: list[str]) -> dict[str, float]:
    spread = np.linspace(0.0, 1.0, len(classes)) if len(classes) > 1 else [0.0]
    return {c: KNOWN_SEVERITY.get(c, float(s)) for c, s in zip(classes, spread)}


def _bone_profile(height: int, width: int, top: bool, rng: np.random.Generator) -> np.ndarray:
    """Mask of one bone: a shaft that flares into condyles (femur) or a plateau (tibia)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    centre = width * (0.5 + rng.uniform(-0.03, 0.03))
    shaft = width * rng.uniform(0.13, 0.16)
    flare = width * rng.uniform(0.27, 0.31)
    joint = height * rng.uniform(0.45, 0.48)
    gap = height * rng.uniform(0.035, 0.05)
    if top:
        t = np.clip((y - joint * 0.35) / (joint * 0.65), 0, 1)  # 0 on the shaft, 1 at the joint
        inside = y < joint - gap / 2
    else:
        t = np.clip(1 - (y - joint - gap / 2) / (height * 0.3), 0, 1)
        inside = y > joint + gap / 2
    half = shaft + (flare - shaft) * t**1.6
    if top:  # notch between the two femoral condyles
        notch = (
            (t > 0.85) & (np.abs(x - centre) < width * 0.05) & (y > joint - gap / 2 - height * 0.05)
        )
        inside &= ~notch
    return inside & (np.abs(x - centre) < half)


def _trabeculae(shape: tuple[int, int], density: float, rng: np.random.Generator) -> np.ndarray:
    """A mesh of vertically oriented struts; ``density`` in (0, 1] is the share of bone filled."""
    noise = rng.standard_normal(shape).astype(np.float32)
    scale = max(shape) / 320
    struts = ndimage.gaussian_filter(noise, sigma=(3.0 * scale, 1.0 * scale))
    threshold = np.quantile(struts, 1 - density)
    return (struts > threshold).astype(np.float32)


def render(label: str, severity: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """One grayscale radiograph in [0, 1]; its shorter side is ``size`` to 1.15 x ``size`` px."""
    width = int(size * rng.uniform(1.0, 1.15))
    height = int(width * rng.uniform(1.05, 1.25))
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    soft = 0.12 + 0.12 * np.exp(-(((x - width / 2) / (width * 0.38)) ** 2))
    image = soft + 0.02 * rng.standard_normal((height, width)).astype(np.float32)

    cortex = width * (0.055 - 0.03 * severity) * rng.uniform(0.9, 1.1)
    density = float(np.clip(0.55 - 0.35 * severity + rng.normal(0, 0.03), 0.08, 0.9))
    for top in (True, False):
        mask = _bone_profile(height, width, top, rng)
        depth = ndimage.distance_transform_edt(mask)
        shell = (depth > 0) & (depth <= cortex)
        core = depth > cortex
        texture = _trabeculae((height, width), density, rng)
        bone_level = 0.42 - 0.08 * severity
        image = np.where(core, bone_level + 0.32 * texture, image)
        image = np.where(shell, 0.88 + 0.04 * rng.standard_normal((height, width)), image)
    image = ndimage.gaussian_filter(image, sigma=max(0.6, size / 400))
    image += 0.015 * rng.standard_normal(image.shape)
    return np.clip(image, 0, 1)


def example_radiograph(size: int, seed: int = 0) -> np.ndarray:
    """A synthetic ``size`` x ``size`` uint8 radiograph: what a logged model carries as its input
    example, so that no patient image ends up in model artifacts, the registry or serving images."""
    image = render("example", 0.5, size, np.random.default_rng(seed))
    return (image[:size, :size] * 255).round().astype(np.uint8)


def generate(
    classes: list[str], per_class: int, size: int, seed: int, bilateral: bool = False
) -> list[SynthImage]:
    """``per_class`` images per class, deterministic for ``seed``; formats and modes alternate.
    ``bilateral``: both knees on each film (``size`` is then each knee's width)."""
    severity = class_severity(classes)
    draw = render_bilateral if bilateral else render
    images = []
    for class_index, label in enumerate(classes):
        for i in range(per_class):
            rng = np.random.default_rng([seed, class_index, i])
            pixels = (draw(label, severity[label], size, rng) * 255).round().astype(np.uint8)
            image = Image.fromarray(pixels, mode="L")
            if i % 3 == 2:
                image = image.convert("RGB")  # real sets mix grayscale and RGB JPEGs
            images.append(SynthImage(label, image, "PNG" if i % 2 else "JPEG"))
    return images


def render_bilateral(
    label: str, severity: float, size: int, rng: np.random.Generator
) -> np.ndarray:
    """Both knees on one film, like most radiographs of public knee sets: two independent knees
    (the right one mirrored) side by side with soft tissue between; each knee ``size`` px wide."""
    left, right = render(label, severity, size, rng), np.fliplr(render(label, severity, size, rng))
    height = min(left.shape[0], right.shape[0])
    gap = 0.1 + 0.02 * rng.standard_normal((height, max(8, size // 12))).astype(np.float32)
    return np.clip(np.hstack([left[:height], gap, right[:height]]), 0, 1)
