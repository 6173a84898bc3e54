"""What validation requires of every image's size and mode, as one object: the Great Expectations
``files`` suite takes its parameters from it, and ``osteo predict`` and the model server check
each request against the bounds recorded with the model, so they refuse what validation would."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ImageBounds:
    """``validation.min_width``, ``min_height`` and ``allowed_modes``."""

    min_width: int
    min_height: int
    allowed_modes: tuple[str, ...]

    def refusal(self, width: int, height: int, mode: str) -> str | None:
        """Why validation would refuse a ``width`` x ``height`` image of Pillow ``mode``, or
        None."""
        if width < self.min_width or height < self.min_height:
            return (
                f"{width}x{height} px is below the {self.min_width}x{self.min_height} minimum "
                "(validation.min_width/min_height)"
            )
        if mode not in self.allowed_modes:
            return (
                f"mode {mode} is not in validation.allowed_modes [{', '.join(self.allowed_modes)}]"
            )
        return None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, keyed as the settings and the suites' parameters are."""
        return {
            "min_width": self.min_width,
            "min_height": self.min_height,
            "allowed_modes": list(self.allowed_modes),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> ImageBounds | None:
        """The bounds ``as_dict`` wrote, or None where there are none (models logged before
        bounds were recorded with them)."""
        if values is None:
            return None
        return cls(
            int(values["min_width"]), int(values["min_height"]), tuple(values["allowed_modes"])
        )
