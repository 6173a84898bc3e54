"""Settings of the data: its classes, what validation requires of a batch, the split, and the
synthetic set."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from osteo_pipeline.config.base import Section
from osteo_pipeline.core.image_bounds import ImageBounds
from osteo_pipeline.core.search_space import MAX_INPUT_SIZE


class DataSettings(Section):
    classes: list[str] = Field(default=["normal", "osteoporosis"], min_length=2)
    """Class folder names, in label order."""
    positive_class: str | None = None
    """Class whose sensitivity/specificity are reported (default: the last class)."""
    extensions: list[str] = [".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm"]
    """File suffixes (case-insensitive) treated as images inside class folders."""
    ignore_unlisted_classes: bool = False
    """Class folders not in data.classes are left out of training and class checks instead of
    failing validation; their files still count when looking for label conflicts."""

    @model_validator(mode="after")
    def _unique_classes(self) -> DataSettings:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"data.classes has repeated names: {self.classes}")
        if self.positive_class is not None and self.positive_class not in self.classes:
            raise ValueError(
                f"data.positive_class {self.positive_class!r} is not one of {self.classes}"
            )
        return self

    @property
    def positive(self) -> str:
        return self.positive_class or self.classes[-1]


class ValidationSettings(Section):
    min_width: int = Field(default=224, ge=1)
    min_height: int = Field(default=224, ge=1)
    allowed_modes: list[str] = ["L", "RGB", "P", "I;16", "I;16B", "I", "F"]
    """Pillow modes accepted: gray 8/16/32-bit, float, RGB and palette (all converted to gray);
    DICOM reports L or I;16. RGBA/LA (transparency) and CMYK are rejected."""
    max_pixels: int = Field(default=40_000_000, ge=1)
    """Decompression-bomb guard: larger images are rejected unread."""
    min_class_share: float = Field(default=0.10, ge=0, le=1)
    max_class_share: float = Field(default=0.80, ge=0, le=1)
    min_images_per_class: int = Field(default=5, ge=0)
    derived_copies: bool = True
    """Find derived copies (resized, re-encoded, contrast-changed, padded, mirrored, rotated,
    cropped), not only identical files."""
    copy_threshold: float = Field(default=0.5, gt=0, lt=1)
    """Correlation of high-passed pixels, after fitting a pair, from which it is a derived copy."""
    copies_cache_dir: Path | None = None
    """Derived-copy features and matches, by content hash (default $XDG_CACHE_HOME/osteo/copies,
    else ~/.cache/osteo/copies; 'none' in YAML: memory only)."""
    fail_on_label_conflicts: bool = True
    """Fail the batch on copies of one radiograph (identical or derived) filed under different
    classes, or only exclude them from the split."""
    fail_on_duplicates: bool = False
    """Copies of one radiograph (identical or derived) with one label are reported; fail the
    batch too?"""
    suites_dir: Path | None = None
    """Folder of GX suite JSON files; default: the suites shipped in the package
    (osteo_pipeline/expectations)."""

    @property
    def image_bounds(self) -> ImageBounds:
        """The size and mode every image must have, for the GX suite and the model's door."""
        return ImageBounds(self.min_width, self.min_height, tuple(self.allowed_modes))

    @model_validator(mode="after")
    def _share_bounds(self) -> ValidationSettings:
        if self.min_class_share > self.max_class_share:
            raise ValueError(
                "validation.min_class_share must not exceed validation.max_class_share"
            )
        return self


class SplitSettings(Section):
    train: float = Field(default=0.70, gt=0, lt=1)
    val: float = Field(default=0.15, gt=0, lt=1)
    test: float = Field(default=0.15, gt=0, lt=1)
    group_derived_copies: bool = True
    """Keep derived copies in one split, like identical ones (false: identical copies only)."""

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> SplitSettings:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split fractions must sum to 1, got {total:.4f}")
        return self


class SynthSettings(Section):
    per_class: int = Field(default=24, ge=1, le=100_000)
    size: int = Field(default=256, ge=32, le=4 * MAX_INPUT_SIZE)
    """Shortest side in px; images vary up to +15%/+40%."""
