"""The hyperparameter space a study searches, as one object: config validation checks it, each
trial draws its parameters from it, and a warm start keeps only the earlier trials that lie in it.

A study always searches the learning rate, unfreeze depth, head size and dropout; the L2 penalty,
input size and roi are searched only when ``tune`` lists them, else trials use the model's."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

from osteo_pipeline.errors import OsteoError

if TYPE_CHECKING:
    import optuna

#: Square input sides (px) the model accepts; knee crops decode films at three times the upper one.
MIN_INPUT_SIZE = 32
MAX_INPUT_SIZE = 1024
MAX_HEAD_UNITS = 8192
MAX_UNFREEZE_DEPTH = 16  # ResNet-50's residual blocks
#: What the network sees: the whole film resized, or each knee cropped around its joint line.
Roi = Literal["image", "knees"]
ROIS: tuple[str, ...] = get_args(Roi)


class SearchSpaceError(OsteoError, ValueError):
    """A configured search space the trials could not be drawn from; the message names the field."""


def sizes_in_bounds(sizes: list[int] | tuple[int, ...]) -> bool:
    """Every input size is one the model accepts."""
    return all(MIN_INPUT_SIZE <= size <= MAX_INPUT_SIZE for size in sizes)


@dataclass(frozen=True)
class SearchSpace:
    """Ranges (low, high) and choices, as configured under ``tune``; ``None``: not searched."""

    learning_rate: tuple[float, float]
    unfreeze_depth: tuple[int, int]
    head_units: tuple[int, ...]
    dropout: tuple[float, float]
    l2: tuple[float, float] | None = None
    input_sizes: tuple[int, ...] | None = None
    rois: tuple[str, ...] | None = None

    def problems(self) -> list[str]:
        """What makes this space unusable, one message per field (empty when it is usable)."""
        found = [
            f"tune.{name} must be a range 0 < low <= high (searched on a log scale), "
            f"got {list(bounds)}"
            for name, bounds in (("learning_rate", self.learning_rate), ("l2", self.l2))
            if bounds is not None and not 0 < bounds[0] <= bounds[1]
        ]
        low, high = self.unfreeze_depth
        if not 0 <= low <= high <= MAX_UNFREEZE_DEPTH:
            found.append(
                f"tune.unfreeze_depth must be a range 0 <= low <= high <= {MAX_UNFREEZE_DEPTH} "
                f"(ResNet-50's blocks), got {[low, high]}"
            )
        if not self.head_units or not all(0 <= n <= MAX_HEAD_UNITS for n in self.head_units):
            found.append(
                f"tune.head_units must list sizes of 0 (a linear head) to {MAX_HEAD_UNITS}, "
                f"got {list(self.head_units)}"
            )
        low, high = self.dropout
        if not 0 <= low <= high < 1:
            found.append(f"tune.dropout must be a range 0 <= low <= high < 1, got {[low, high]}")
        sizes = self.input_sizes
        if sizes is not None and (not sizes or not sizes_in_bounds(sizes)):
            found.append(
                f"tune.input_sizes must list sizes of {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE} px, "
                f"got {list(sizes)}"
            )
        if self.rois is not None and (not self.rois or not set(self.rois) <= set(ROIS)):
            found.append(f"tune.rois must list some of {', '.join(ROIS)} (or be unset)")
        return found

    def check(self) -> SearchSpace:
        """This space, or a :class:`SearchSpaceError` naming every field that is wrong."""
        found = self.problems()
        if found:
            raise SearchSpaceError("; ".join(found))
        return self

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """A trial's draw of every searched parameter (the order of the draws is part of what a
        sampler's seed reproduces: do not reorder them)."""
        params: dict[str, Any] = {
            "learning_rate": trial.suggest_float("learning_rate", *self.learning_rate, log=True),
            "unfreeze_depth": trial.suggest_int("unfreeze_depth", *self.unfreeze_depth),
            "head_units": trial.suggest_categorical("head_units", list(self.head_units)),
            "dropout": trial.suggest_float("dropout", *self.dropout),
        }
        if self.l2:
            params["l2"] = trial.suggest_float("l2", *self.l2, log=True)
        if self.input_sizes:
            params["input_size"] = trial.suggest_categorical("input_size", list(self.input_sizes))
        if self.rois:
            params["roi"] = trial.suggest_categorical("roi", list(self.rois))
        return params

    def admits(self, params: Mapping[str, Any], unsearched: Mapping[str, Any]) -> bool:
        """Whether a trial run with ``params`` (another study's) lies in this space, so that it can
        be enqueued here. The four parameters always searched must lie in their ranges; an L2
        penalty matters only where it is searched, and a trial without one gets it drawn; the
        input (size, roi) must be one this space trains on, ``unsearched`` (the model's) when it
        is not searched, and a trial without one ran at the model's."""

        def within(name: str, bounds: tuple[float, float]) -> bool:
            return bounds[0] <= params.get(name, -1) <= bounds[1]

        inputs = (
            ("input_size", self.input_sizes),
            ("roi", self.rois),
        )
        return (
            within("learning_rate", self.learning_rate)
            and within("unfreeze_depth", self.unfreeze_depth)
            and params.get("head_units") in self.head_units
            and within("dropout", self.dropout)
            and (self.l2 is None or "l2" not in params or within("l2", self.l2))
            and all(
                params.get(name, unsearched[name]) in (choices or (unsearched[name],))
                for name, choices in inputs
            )
        )
