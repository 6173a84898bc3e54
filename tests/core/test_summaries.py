"""The typed summaries and their markdown renderer: what the Prefect artifacts and the model card
show."""

from __future__ import annotations

import math

from osteo_pipeline.core.summaries import MetricsTable, ValidationSummary

SUMMARY = {
    "passed": False,
    "data_dir": "/data/batch",
    "classes": ["normal", "osteoporosis"],
    "files": 5,
    "readable": 4,
    "counts": {"normal": 3, "osteoporosis": 1},
    "unreadable": [{"path": "normal/broken.jpg", "reason": "not an image"}],
    "duplicate_groups": [["normal/a.jpg", "normal/a-copy.jpg"]],
    "label_conflicts": [
        {
            "paths": ["normal/a.jpg", "osteoporosis/b.png"],
            "labels": ["normal", "osteoporosis"],
            "kinds": ["mirrored"],
        }
    ],
    "copy_groups": [{"paths": [], "labels": [], "links": []}] * 2,
    "derived_copies": {"checked": True, "links": 3, "matched_now": 4, "seconds": 0.5},
    "failed_expectations": [
        {
            "expectation": "expect_column_values_to_be_null",
            "check": "readable",
            "table": "files",
            "column": "error",
            "bound": {},
            "observed": "1 of 5 rows outside the bound",
            "unexpected": [{"id": f"normal/{i}.jpg", "value": "bad"} for i in range(12)],
            "severity": "critical",
            "why": "every file must decode",
        }
    ],
    "warnings": [],
    "suggestions": ["set data.ignore_unlisted_classes=true"],
    "ignored": [{"path": "notes.txt", "reason": "not an image extension"}],
    "data_docs": None,
    "formats": {"JPEG": 4},
    "modes": {"L": 4},
    "seconds": 1.25,
}


def test_a_validation_summary_reads_the_steps_dict_and_renders_markdown():
    summary = ValidationSummary.from_dict(SUMMARY)
    assert summary.verdict == "FAILED" and summary.copy_groups == 2
    assert [(c.label, c.images, c.share) for c in summary.class_counts()] == [
        ("normal", 3, "75.0%"),
        ("osteoporosis", 1, "25.0%"),
    ]
    assert summary.copies_line() == (
        "1 exact-duplicate groups, 2 groups of copies (3 derived-copy links, 4 contents matched "
        "now in 0.5 s), 1 ignored entries"
    )
    markdown = summary.to_markdown("/r/validation.html", listed=10)
    lines = markdown.splitlines()
    assert lines[0] == "## Validation FAILED: `/data/batch`"
    assert "| normal | 3 | 75.0% |" in lines
    failed = next(line for line in lines if line.startswith("- **critical** `readable`"))
    assert "`normal/9.jpg` …" in failed and "normal/10.jpg" not in failed  # 10 listed of 12
    assert "- unreadable `normal/broken.jpg`: not an image" in lines
    assert "- label conflict: normal/a.jpg = osteoporosis/b.png (mirrored)" in lines
    assert "- to fit: set data.ignore_unlisted_classes=true" in lines
    assert lines[-1] == "Full report: `/r/validation.html`"


def test_no_readable_image_has_no_share_and_unchecked_copies_say_so():
    empty = ValidationSummary.from_dict(
        SUMMARY
        | {
            "readable": 0,
            "derived_copies": {"checked": False, "links": 0, "matched_now": 0, "seconds": 0.0},
        }
    )
    assert {c.share for c in empty.class_counts()} == {"-"}
    assert "(derived copies not checked)" in empty.copies_line()


def test_a_metrics_table_shows_a_missing_value_or_interval_as_a_dash():
    table = MetricsTable.from_dict(
        {
            "balanced_accuracy": {"value": 0.8125, "low": 0.7, "high": 0.9},
            "ece": {"value": 0.05, "low": math.nan, "high": math.nan},  # no CI
            "roc_auc": {"value": None, "low": None, "high": None},  # read back from JSON
        }
    )
    assert table.to_markdown("CV estimate", "95% interval").splitlines() == [
        "| metric | CV estimate | 95% interval |",
        "|---|---|---|",
        "| balanced_accuracy | 0.812 | 0.700 – 0.900 |",
        "| ece | 0.050 | - |",
        "| roc_auc | - | - |",
    ]
