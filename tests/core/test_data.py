import keras
import numpy as np
import pytest

from osteo_pipeline.config import AugmentSettings
from osteo_pipeline.core.data import (
    RowBatches,
    ViewBatches,
    augmenter,
    class_weights,
    make_dataset,
)
from osteo_pipeline.core.preprocess import model_input
from osteo_pipeline.training.activations import FoldViews

PIXELS = np.repeat(
    np.random.default_rng(0).integers(0, 256, (6, 32, 32, 1)).astype(np.uint8), 3, axis=3
)  # gray, as decoded
LABELS = np.array([0, 1, 0, 1, 0, 0])


def _batches(ds):
    return np.concatenate([np.asarray(x) for x, *_ in ds])


def test_without_augmentation_the_pipeline_is_exactly_the_backbone_preprocessing():
    out = _batches(make_dataset(PIXELS, LABELS, 2, 4))
    assert np.allclose(out, model_input(PIXELS))


def test_augmentation_changes_images_and_stays_in_pixel_range():
    out = _batches(make_dataset(PIXELS, LABELS, 2, 6, augment=augmenter(AugmentSettings(), seed=1)))
    assert not np.allclose(out, model_input(PIXELS))
    restored = out[..., ::-1] + np.array([123.68, 116.779, 103.939])
    assert restored.min() >= -1e-3 and restored.max() <= 255 + 1e-3


def test_augmentation_repeats_from_the_seed_whatever_the_threads_and_differs_each_epoch():
    def epochs(seed: int) -> list[np.ndarray]:
        ds = make_dataset(
            np.repeat(PIXELS, 8, axis=0),
            np.repeat(LABELS, 8),
            2,
            4,
            augmenter(AugmentSettings(), seed),
            shuffle_seed=0,
        )
        return [_batches(ds) for _ in range(2)]

    first, again, other = epochs(1), epochs(1), epochs(2)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.allclose(first[0], first[1]) and not np.allclose(first[0], other[0])


def _augment(settings: AugmentSettings, images: np.ndarray, seed: int = 0) -> np.ndarray:
    return augmenter(settings, seed)(images[..., 0], key=(0,))[..., None]


NOTHING = AugmentSettings(
    horizontal_flip=False, rotation=0, shift=0, zoom=0, brightness=0, contrast=0
)
GRAY = PIXELS[..., :1].astype(np.float32)


def test_augmenter_off_is_none_and_all_zero_factors_are_the_identity():
    assert augmenter(AugmentSettings(enabled=False), 0) is None
    np.testing.assert_allclose(_augment(NOTHING, GRAY), GRAY, atol=1e-3)


def test_the_same_key_gives_the_same_augmentation_and_another_key_another():
    augment = augmenter(AugmentSettings(), 0)
    np.testing.assert_array_equal(augment(GRAY[..., 0], (3, 16)), augment(GRAY[..., 0], (3, 16)))
    assert not np.allclose(augment(GRAY[..., 0], (3, 16)), augment(GRAY[..., 0], (3, 0)))


def test_flip_alone_mirrors_about_half_the_images():
    out = _augment(NOTHING.model_copy(update={"horizontal_flip": True}), np.repeat(GRAY, 8, axis=0))
    flipped = [
        np.allclose(o, g[:, ::-1], atol=1e-3) for o, g in zip(out, np.repeat(GRAY, 8, axis=0))
    ]
    same = [np.allclose(o, g, atol=1e-3) for o, g in zip(out, np.repeat(GRAY, 8, axis=0))]
    assert all(f or k for f, k in zip(flipped, same)) and 0 < sum(flipped) < len(out)


def test_geometry_stays_within_the_paper_ranges():
    square = np.zeros((1, 64, 64, 1), np.float32)
    square[:, 24:40, 24:40] = 255  # a centred bright square: its centroid moves by the shift only
    for seed in range(5):
        out = _augment(NOTHING.model_copy(update={"shift": 0.10}), square, seed)[0, :, :, 0]
        rows, cols = np.nonzero(out > 127)
        assert abs(rows.mean() - 31.5) <= 6.5 + 0.5 and abs(cols.mean() - 31.5) <= 6.5 + 0.5
        rotated = _augment(NOTHING.model_copy(update={"rotation": 10 / 360}), square, seed)[
            0, :, :, 0
        ]
        assert abs((rotated > 127).sum() - 256) < 40  # rotation keeps the area
        zoomed = _augment(NOTHING.model_copy(update={"zoom": 0.10}), square, seed)[0, :, :, 0]
        assert 256 / 1.1**2 - 30 < (zoomed > 127).sum() < 256 / 0.9**2 + 30


def test_brightness_and_contrast_stay_within_ten_percent():
    flat = np.full((16, 8, 8, 1), 100.0, np.float32)
    out = _augment(NOTHING.model_copy(update={"brightness": 0.10, "contrast": 0.10}), flat)
    assert np.all(np.abs(out - 100) <= 25.5 + 1e-3) and out.std() > 1


def test_balanced_class_weights():
    weights = class_weights(LABELS, 2, "balanced")
    assert weights[1] == pytest.approx(6 / (2 * 2)) and weights[0] == pytest.approx(6 / (2 * 4))
    assert class_weights(LABELS, 2, "none") is None
    assert class_weights(np.array([0, 0]), 3, "balanced")[2] == 1.0


def test_view_batches_walk_the_views_epoch_by_epoch_across_fits():
    activations = np.stack([np.full((5, 3), k, np.float32) for k in range(3)])  # view k is all k
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    seen = []
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: seen.append((epoch, data.epoch))
    )
    data = ViewBatches(activations, np.array([0, 1, 0, 1, 1]), 2, 2, {0: 1.5, 1: 0.75}, seed=0)
    model.fit(data, epochs=4, verbose=0, callbacks=[record])
    data = ViewBatches(activations, np.array([0, 1, 0, 1, 1]), 2, 2, None, seed=0, first_epoch=4)
    model.fit(data, initial_epoch=4, epochs=5, verbose=0, callbacks=[record])
    assert seen == [(e, e) for e in range(5)]
    x, y, w = data[0]
    assert x.shape == (2, 3) and np.all(x == 4 % 3) and y.shape == (2, 2) and np.all(w == 1)


def test_row_batches_read_a_fold_s_rows_in_order_and_validate_a_fit():
    """Validation batches over a fold's rows of a cache (``FoldViews``'s per-view rows): the
    rows asked for, in order, a short last batch, and what ``fit`` evaluates on."""
    cached = np.arange(7 * 3, dtype=np.float32).reshape(1, 7, 3)
    rows = FoldViews(cached, np.array([5, 0, 3, 6, 1]))[0]
    data = RowBatches(rows, np.array([1, 0, 1, 1, 0]), 2, batch_size=2)
    assert len(data) == 3
    batches = [data[i] for i in range(len(data))]
    np.testing.assert_array_equal(
        np.concatenate([x for x, _ in batches]), cached[0, [5, 0, 3, 6, 1]]
    )
    assert [len(y) for _, y in batches] == [2, 2, 1] and batches[0][1].tolist() == [[0, 1], [1, 0]]
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    history = model.fit(cached[0], np.eye(2)[[0, 1] * 3 + [0]], validation_data=data, verbose=0)
    assert np.isfinite(history.history["val_loss"]).all()


def test_a_shuffled_pipeline_over_a_memory_map_gives_the_rows_and_labels_of_its_shuffle(tmp_path):
    """Batches gather rows by index from a memory-mapped array: the order is the shuffle's
    (seeded), each image keeps its label, and nothing is copied whole."""
    import tensorflow as tf

    np.save(tmp_path / "shard.npy", np.arange(20, dtype=np.uint8)[:, None, None, None] * 10)
    mapped = np.load(tmp_path / "shard.npy", mmap_mode="r")
    pixels = np.broadcast_to(mapped, (20, 8, 8, 3))
    labels = np.arange(20) % 2
    ds = make_dataset(pixels, labels, 2, 6, shuffle_seed=3)
    order = list(tf.data.Dataset.range(20).shuffle(20, seed=3).as_numpy_iterator())
    seen, hot = [], []
    for x, y in ds:
        # model_input of gray g: the channels are g minus each channel's mean, reversed (caffe)
        seen += [int(round(float(v) + 103.939)) // 10 for v in np.asarray(x)[:, 0, 0, 0]]
        hot += list(np.asarray(y).argmax(axis=1))
    assert seen == order and hot == [o % 2 for o in order]
