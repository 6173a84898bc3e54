"""Great Expectations suite definitions: the committed JSON suites in the
``osteo_pipeline.expectations`` package, the custom class-balance expectation they use,
and the parameters they take from the settings."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe

from osteo_pipeline.config import Settings

#: The suites, each checked against the table of the same name.
SUITE_NAMES = ("files", "classes", "contents", "manifest")
SUITES_PACKAGE = "osteo_pipeline.expectations"


class ExpectClassShareToBeBetween(gxe.ExpectColumnValuesToBeBetween):
    """Each class's share of all readable images lies within bounds.

    GX has no class-balance expectation: this one runs on the per-class summary table (one row per
    class, ``share`` = count / total), so a failure names the offending class and its share."""

    column: str = "share"
    description: str = "Each class's share of readable images lies within the configured bounds"


def suite_parameters(settings: Settings) -> dict[str, Any]:
    """Values for the ``$PARAMETER`` placeholders in the JSON suites."""
    v = settings.validation
    return {
        "classes": list(settings.data.classes),
        **v.image_bounds.as_dict(),
        "min_class_share": v.min_class_share,
        "max_class_share": v.max_class_share,
        "min_images_per_class": v.min_images_per_class,
    }


def load_suite(
    name: str, suites_dir: Path | None = None
) -> tuple[gx.ExpectationSuite, dict[str, Any]]:
    """The suite ``name`` and its top-level meta (which table it checks, its id column)."""
    path = (
        suites_dir / f"{name}.json"
        if suites_dir
        else resources.files(SUITES_PACKAGE).joinpath(f"{name}.json")
    )
    spec = json.loads(path.read_text(encoding="utf-8"))
    suite = gx.ExpectationSuite(
        name=spec["name"], expectations=spec["expectations"], meta=spec.get("meta")
    )
    return suite, spec.get("meta", {})
