import pandas as pd

from osteo_pipeline.core import quality


def _manifest(rows):
    frame = pd.DataFrame(rows, columns=["path", "label", "sha256", "error"])
    return frame


ROWS = [
    ("normal/a.png", "normal", "h1", None),
    ("normal/a_copy.png", "normal", "h1", None),
    ("osteoporosis/a.png", "osteoporosis", "h1", None),
    ("normal/b.png", "normal", "h2", None),
    ("normal/b_resaved.png", "normal", "h3", None),  # a derived copy of b (LINKS)
    ("osteoporosis/c.png", "osteoporosis", "h4", None),
    ("osteoporosis/bad.png", "osteoporosis", None, "empty file (0 bytes)"),
]


#: A derived-copy link between two contents, as the copy finder reports it (h3 resized from h2).
LINKS = [{"source": "h2", "copy": "h3", "kind": "resized", "score": 0.91}]


def _grouped(links):
    m = _manifest(ROWS)
    m["group"] = quality.copy_group_column(
        m, {"h2": 0, "h3": 0, "h1": 1, "h4": 2} if links else None
    )
    return m


def test_duplicate_groups_and_label_conflicts():
    m = _grouped(LINKS)
    assert quality.duplicate_groups(m) == [
        ["normal/a.png", "normal/a_copy.png", "osteoporosis/a.png"]
    ]
    conflicts = quality.label_conflicts(quality.copy_groups(m, LINKS))
    assert conflicts == [
        {
            "paths": ["normal/a.png", "normal/a_copy.png", "osteoporosis/a.png"],
            "labels": ["normal", "osteoporosis"],
            "kinds": ["exact"],
        }
    ]


def test_copy_groups_join_identical_and_derived_copies_with_their_links():
    groups = quality.copy_groups(_grouped(LINKS), LINKS)
    assert [g["paths"] for g in groups] == [
        ["normal/a.png", "normal/a_copy.png", "osteoporosis/a.png"],
        ["normal/b.png", "normal/b_resaved.png"],
    ]
    assert groups[1]["links"] == [
        {"source": "normal/b.png", "copy": "normal/b_resaved.png", "kind": "resized", "score": 0.91}
    ]
    assert [g["paths"] for g in quality.copy_groups(_grouped(None), [])] == [
        groups[0]["paths"]
    ]  # identical only


def test_a_derived_copy_under_another_label_is_a_conflict_named_by_its_kind():
    rows = [*ROWS[:5], ("osteoporosis/b_mirror.png", "osteoporosis", "h5", None)]
    m = _manifest(rows)
    links = [*LINKS, {"source": "h2", "copy": "h5", "kind": "re-encoded+mirrored", "score": 0.8}]
    m["group"] = quality.copy_group_column(m, {"h1": 0, "h2": 1, "h3": 1, "h5": 1})
    conflicts = quality.label_conflicts(quality.copy_groups(m, links))
    assert conflicts[1] == {
        "paths": ["normal/b.png", "normal/b_resaved.png", "osteoporosis/b_mirror.png"],
        "labels": ["normal", "osteoporosis"],
        "kinds": ["re-encoded+mirrored", "resized"],
    }


def test_group_column_joins_copies_and_skips_unreadable_rows():
    exact = _grouped(None)["group"]
    derived = _grouped(LINKS)["group"]
    assert exact[0] == exact[1] == exact[2] and exact[3] != exact[4]
    assert (
        derived[3] == derived[4]
        and derived[0] != derived[3]
        and derived[5] not in {derived[0], derived[3]}
    )
    assert pd.isna(exact[6])  # unreadable rows get no group


def test_class_table_counts_readable_images_and_flags_unknown_folders():
    m = _manifest(ROWS)
    table = quality.class_table(
        m, ["normal", "osteoporosis", "osteopenia"], ["normal", "osteoporosis", "extra"]
    )
    rows = {r.label: r for r in table.itertuples()}
    assert rows["normal"].count == 4 and rows["osteoporosis"].count == 2
    assert rows["osteopenia"].count == 0 and rows["osteopenia"].configured
    assert not rows["extra"].configured
    assert abs(table["share"].sum() - 1) < 1e-9


def test_content_table_has_one_row_per_radiograph():
    table = quality.content_table(_grouped(LINKS)).set_index("first_path")
    assert table.loc["normal/a.png", "n_files"] == 3 and table.loc["normal/a.png", "n_labels"] == 2
    assert (
        table.loc["normal/b.png", "n_files"] == 2 and table.loc["normal/b.png", "n_contents"] == 2
    )
    assert table.loc["osteoporosis/c.png", "n_files"] == 1
