"""The decode-once pixel cache: one decode per content and size, on disk across runs, and
identical files in one batch decoded once (they once raced on the same temporary file)."""

import hashlib

import numpy as np
from PIL import Image

from osteo_pipeline.io.pixels import PixelCache


def _image(path, value, size=(80, 60)):
    Image.fromarray(np.full(size[::-1], value, np.uint8)).save(path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_identical_files_in_one_batch_are_decoded_once_and_returned_in_order(tmp_path):
    a, sha_a = _image(tmp_path / "a.png", 40)
    b, sha_b = _image(tmp_path / "b.png", 200)
    copies = [tmp_path / f"copy{i}.png" for i in range(6)]
    for copy in copies:
        copy.write_bytes(a.read_bytes())
    cache = PixelCache(32, 10**8, tmp_path / "cache")
    pixels = cache.load([a, *copies, b], [sha_a] * 7 + [sha_b])
    assert cache.decoded == 2 and pixels.shape == (8, 32, 32, 3)
    assert (pixels[:7] == 40).all() and (pixels[7] == 200).all()
    assert sorted(p.name for p in cache.folder.glob("*.npy")) == sorted(
        [f"{sha_a}.npy", f"{sha_b}.npy"]
    )


def test_disk_cache_serves_a_new_process_and_a_changed_file_is_a_new_key(tmp_path):
    a, sha_a = _image(tmp_path / "a.png", 90)
    PixelCache(32, 10**8, tmp_path / "cache").load([a], [sha_a])
    again = PixelCache(32, 10**8, tmp_path / "cache")
    assert (again.load([a], [sha_a]) == 90).all() and again.decoded == 0
    a, sha_new = _image(a, 10)
    assert sha_new != sha_a and (again.load([a], [sha_new]) == 10).all() and again.decoded == 1


def test_a_torn_cache_file_is_decoded_again(tmp_path):
    a, sha_a = _image(tmp_path / "a.png", 70)
    cache = PixelCache(32, 10**8, tmp_path / "cache")
    cache.folder.mkdir(parents=True)
    (cache.folder / f"{sha_a}.npy").write_bytes(b"\x93NUMPY torn")
    assert (cache.load([a], [sha_a]) == 70).all() and cache.decoded == 1
    assert cache.load([], []).shape == (0, 32, 32, 3)


def test_a_new_preprocessing_version_is_a_cache_miss(tmp_path, monkeypatch):
    from osteo_pipeline.core import preprocess

    a, sha_a = _image(tmp_path / "a.png", 90)
    PixelCache(32, 10**8, tmp_path / "cache").load([a], [sha_a])
    same = PixelCache(32, 10**8, tmp_path / "cache")
    same.load([a], [sha_a])
    assert same.decoded == 0
    monkeypatch.setattr(preprocess, "PREPROCESS_VERSION", preprocess.PREPROCESS_VERSION + 1)
    changed = PixelCache(32, 10**8, tmp_path / "cache")
    assert (changed.load([a], [sha_a]) == 90).all() and changed.decoded == 1
    assert changed.folder != same.folder


def test_a_list_is_one_memory_mapped_shard_written_once_and_splits_join_without_a_copy(tmp_path):
    import mmap

    from osteo_pipeline.io.pixels import join_rows

    images = [_image(tmp_path / f"{v}.png", v) for v in (10, 20, 30, 40)]
    paths, shas = [p for p, _ in images], [s for _, s in images]
    cache = PixelCache(32, 10**8, tmp_path / "cache")
    pixels = cache.load(paths, shas)
    root = pixels
    while getattr(root, "base", None) is not None:
        root = root.base
    assert isinstance(root, mmap.mmap) and not pixels.flags.writeable
    assert pixels.shape == (4, 32, 32, 3) and [int(p[0, 0, 0]) for p in pixels] == [10, 20, 30, 40]
    shards = list((cache.folder / "shards").glob("*.npy"))
    again = PixelCache(32, 10**8, tmp_path / "cache")
    np.testing.assert_array_equal(again.load(paths, shas), pixels)
    assert again.decoded == 0 and list((cache.folder / "shards").glob("*.npy")) == shards
    joined = join_rows(pixels[:1], pixels[1:3])  # adjacent rows of one shard: a view
    assert np.shares_memory(joined, pixels) and [int(p[0, 0, 0]) for p in joined] == [10, 20, 30]
    apart = join_rows(pixels[:1], pixels[2:3])  # not adjacent: a copy
    assert not np.shares_memory(apart, pixels) and [int(p[0, 0, 1]) for p in apart] == [10, 30]


def test_gathered_rows_are_a_file_backed_copy_in_the_order_asked():
    import mmap

    from osteo_pipeline.io.pixels import gather_rows, three_channels

    gray = np.arange(50 * 4 * 4, dtype=np.uint8).reshape(50, 4, 4)
    pixels = three_channels(gray)
    rows = np.array([40, 3, 3, 17])
    fold = gather_rows(pixels, rows)
    np.testing.assert_array_equal(fold, pixels[rows])
    root = fold
    while getattr(root, "base", None) is not None:
        root = root.base
    assert isinstance(root, mmap.mmap)  # page-cache memory, not the process's own
    assert not fold.flags.writeable and not np.shares_memory(fold, pixels)
    assert gather_rows(pixels, np.array([], dtype=int)).shape == (0, 4, 4, 3)
