import pandas as pd

from osteo_pipeline.core import quality


def _manifest(rows):
    frame = pd.DataFrame(rows, columns=["path", "label", "sha256", "phash", "error"])
    return frame


ROWS = [
    ("normal/a.png", "normal", "h1", "0000000000000000", None),
    ("normal/a_copy.png", "normal", "h1", "0000000000000000", None),
    ("osteoporosis/a.png", "osteoporosis", "h1", "0000000000000000", None),
    ("normal/b.png", "normal", "h2", "00000000000000ff", None),  # 8 bits from a
    ("normal/b_resaved.png", "normal", "h3", "00000000000000fe", None),  # 1 bit from b
    ("osteoporosis/c.png", "osteoporosis", "h4", "ffffffffffffffff", None),
    ("osteoporosis/bad.png", "osteoporosis", None, None, "empty file (0 bytes)"),
]


def test_duplicate_groups_and_label_conflicts():
    m = _manifest(ROWS)
    assert quality.duplicate_groups(m) == [["normal/a.png", "normal/a_copy.png", "osteoporosis/a.png"]]
    conflicts = quality.label_conflicts(m)
    assert len(conflicts) == 1 and conflicts[0]["labels"] == ["normal", "osteoporosis"]


def test_near_duplicates_need_different_content():
    m = _manifest(ROWS)
    assert quality.near_duplicate_groups(m, max_distance=2) == [["normal/b.png", "normal/b_resaved.png"]]
    assert quality.near_duplicate_groups(m, max_distance=0) == []


def test_split_groups_join_copies_and_near_copies():
    m = _manifest(ROWS)
    exact = quality.split_groups(m, max_distance=None)
    near = quality.split_groups(m, max_distance=2)
    assert exact[0] == exact[1] == exact[2] and exact[3] != exact[4]
    assert near[3] == near[4] and near[0] != near[3] and near[5] not in {near[0], near[3]}
    assert 6 not in exact.index  # unreadable rows get no group


def test_phash_components_blockwise_matches_whole():
    hashes = pd.Series([f"{i:016x}" for i in [0, 1, 3, 1 << 40, (1 << 40) | 1, 2**64 - 1]])
    assert (quality.phash_components(hashes, 1, block=2) == quality.phash_components(hashes, 1)).all()


def test_class_table_counts_readable_images_and_flags_unknown_folders():
    m = _manifest(ROWS)
    table = quality.class_table(m, ["normal", "osteoporosis", "osteopenia"], ["normal", "osteoporosis", "extra"])
    rows = {r.label: r for r in table.itertuples()}
    assert rows["normal"].count == 4 and rows["osteoporosis"].count == 2
    assert rows["osteopenia"].count == 0 and rows["osteopenia"].configured
    assert not rows["extra"].configured
    assert abs(table["share"].sum() - 1) < 1e-9


def test_content_table():
    table = quality.content_table(_manifest(ROWS)).set_index("sha256")
    assert table.loc["h1", "n_files"] == 3 and table.loc["h1", "n_labels"] == 2
    assert table.loc["h2", "n_files"] == 1
