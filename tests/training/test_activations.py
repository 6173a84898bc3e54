"""The activation cache (the search's, and ``osteo compare``'s for pretrained systems): training
on cached frozen-prefix outputs must be the same computation as training the whole model on the
same augmented views."""

import keras
import numpy as np
import pytest

from osteo_pipeline.core import baselines
from osteo_pipeline.core.data import augmenter, class_weights
from osteo_pipeline.core.model import (
    RESNET50_LAYOUT,
    ModelSpec,
    backbone_segment,
    build_model,
    get_backbone,
    inference_copy,
    set_unfrozen_blocks,
)
from osteo_pipeline.core.preprocess import model_input
from osteo_pipeline.training.activations import ActivationCache, view_batches
from osteo_pipeline.training.arrays import Arrays
from osteo_pipeline.training.fit import FitPlan, TrainParams, fit_two_phase, predict_val

pytestmark = pytest.mark.slow
SIZE, BATCH, VIEWS = 32, 16, 2


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    # As decoded: gray in 3 channels.
    gray = np.repeat(rng.integers(0, 256, (9, SIZE, SIZE, 1), dtype=np.uint8), 3, axis=3)
    train = Arrays(gray[:6], np.array([0, 1, 0, 1, 1, 1]))
    val = Arrays(gray[6:], np.array([0, 1, 1]))
    return train, val


@pytest.fixture
def settings(train_settings):
    return train_settings.model_copy(
        update={
            "model": train_settings.model.model_copy(update={"dropout": 0.0}),
            "train": train_settings.train.model_copy(update={"batch_size": BATCH}),
        },
        deep=True,
    )


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    return build_model(ModelSpec(("normal", "osteoporosis"), SIZE, 8, 0.0), None)


def _cache(settings, data, budget=2**30, spill_dir=None, floor=2, layout=RESNET50_LAYOUT):
    train, val = data
    pixels = np.concatenate([train.pixels, val.pixels])
    return ActivationCache(
        pixels,
        np.arange(len(train.pixels)),
        np.arange(len(train.pixels), len(pixels)),
        views=VIEWS,
        augment=augmenter(settings.train.augment, settings.seed),
        batch_size=BATCH,
        floor_depth=floor,
        budget_bytes=budget,
        spill_dir=spill_dir,
        layout=layout,
    )


def _vgg16(tmp_path, seed=0):
    """VGG-16 as ``osteo compare`` builds it, from a local file of random weights (no download)."""
    path = tmp_path / "vgg16_notop.weights.h5"
    if not path.exists():
        keras.utils.set_random_seed(123)
        keras.applications.VGG16(
            include_top=False, weights=None, input_shape=(SIZE, SIZE, 3)
        ).save_weights(path)
    keras.utils.set_random_seed(seed)
    return baselines.vgg16(ModelSpec(("normal", "osteoporosis"), SIZE, 8, 0.0), str(path))


BACKBONES = {
    # name: (build(tmp_path, seed), how a phase sets what trains, cut points)
    "resnet50": (lambda tmp_path, seed=0: _model(seed), set_unfrozen_blocks, RESNET50_LAYOUT),
    "vgg16": (_vgg16, baselines.set_trainable_vgg_blocks, baselines.VGG16_LAYOUT),
}


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_cached_training_matches_the_full_model_on_the_same_views(
    settings, data, tmp_path, backbone
):
    """ResNet-50 (the search) and VGG-16 (``osteo compare``): the same computation either way."""
    build, unfreeze, layout = BACKBONES[backbone]
    train, val = data
    params = TrainParams(learning_rate=1e-3, unfreeze_depth=2, head_units=8, dropout=0.0)
    cached = build(tmp_path)
    reference = inference_copy(cached)
    cache = _cache(settings, data, layout=layout)
    plan = FitPlan(settings, params, epochs=(1, 1), unfreeze=unfreeze)
    fit_two_phase(cached, train, None, plan, cache=cache)  # no validation: both epochs stay

    # The same two epochs on whole images: view 0 in the head phase, view 1 in the fine-tune phase.
    views = [
        np.asarray(x)
        for _, _, x in view_batches(
            train.pixels,
            np.arange(len(train.pixels)),
            VIEWS,
            augmenter(settings.train.augment, settings.seed),
            BATCH,
        )
    ]
    weights = class_weights(train.labels, 2, "balanced")
    sample_weight = np.array([weights[c] for c in train.labels], np.float32)
    for epoch, (depth, lr) in enumerate(
        ((0, settings.train.head_learning_rate), (2, params.learning_rate))
    ):
        unfreeze(reference, depth)
        reference.compile(optimizer=keras.optimizers.Adam(lr), loss="categorical_crossentropy")
        reference.fit(
            views[epoch],
            np.eye(2)[train.labels],
            sample_weight=sample_weight,
            batch_size=BATCH,
            shuffle=False,
            verbose=0,
        )

    changed = [
        not np.allclose(a, b) for a, b in zip(cached.get_weights(), build(tmp_path).get_weights())
    ]
    assert any(changed), "training changed nothing"
    for got, want in zip(cached.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        predict_val(cached, val, 2, BATCH, cache),
        reference.predict(model_input(val.pixels.astype(np.float32)), verbose=0),
        rtol=1e-4,
        atol=1e-5,
    )
    # The floor (depth 2), and depths 1 and 0 on one pass up from it.
    assert cache.report()["activation_cache_boundaries"] == 3


def test_boundaries_chained_from_the_floor_equal_a_direct_pass(settings, data):
    train, val = data
    model = _model()
    cache = _cache(settings, data, floor=3)
    cache.attach(model, [0])
    images = model_input(val.pixels.astype(np.float32))
    for depth in (0, 1, 2, 3):  # depths 1 and 2 were kept on the way up from the floor
        direct = backbone_segment(model, None, [depth])(images, training=False)
        np.testing.assert_allclose(cache.val(depth), np.asarray(direct), rtol=1e-4, atol=1e-5)
        assert cache.train(depth).shape[:2] == (VIEWS, len(train.labels))
    np.testing.assert_allclose(
        cache.val(0), np.asarray(get_backbone(model)(images, training=False)), rtol=1e-4, atol=1e-5
    )


def test_over_budget_spills_to_disk_with_the_same_values_and_cleans_up(settings, data, tmp_path):
    model = _model()
    in_memory = _cache(settings, data)
    in_memory.attach(model, [0])
    spilled = _cache(settings, data, budget=1, spill_dir=tmp_path / "spill")
    spilled.attach(model, [0])
    report = spilled.report()
    assert report["activation_cache_memory_mb"] == 0 and report["activation_cache_spilled_mb"] > 0
    assert isinstance(spilled.train(0), np.memmap) and any((tmp_path / "spill").iterdir())
    # The floor (2) and the asked-for depth (0) spill; boundary 1, passed on the way, is kept
    # only in memory.
    assert report["activation_cache_boundaries"] == 2
    assert in_memory.report()["activation_cache_boundaries"] == 3
    np.testing.assert_array_equal(np.asarray(spilled.train(0)), in_memory.train(0))
    spilled.close()
    assert not any((tmp_path / "spill").iterdir())


def test_a_shared_cache_gives_each_fold_what_a_cache_of_its_own_rows_gives(settings, data):
    """Cross-validation caches every row once and folds select rows: the activations (so the
    fold's training) equal those of a cache computed for that fold alone."""
    train, val = data
    pixels = np.concatenate([train.pixels, val.pixels])
    rows = np.arange(len(pixels))
    augment = augmenter(settings.train.augment, settings.seed)
    shared = ActivationCache(
        pixels,
        rows,
        rows,
        views=VIEWS,
        augment=augment,
        batch_size=4,
        floor_depth=1,
        budget_bytes=2**30,
    )
    model = _model()
    shared.attach(model, [1, 0])
    fold_train, fold_val = np.array([0, 2, 3, 5, 7]), np.array([1, 4, 8])
    own = ActivationCache(
        pixels,
        fold_train,
        fold_val,
        views=VIEWS,
        augment=augment,
        batch_size=3,
        floor_depth=1,
        budget_bytes=2**30,
    )
    own.attach(model, [1, 0])
    fold = shared.fold(fold_train, fold_val)
    for depth in (0, 1):
        np.testing.assert_allclose(fold.train(depth), own.train(depth), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(fold.val(depth), own.val(depth), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="not cached"):
        own.fold(np.array([1]), fold_val)


def test_a_disk_budget_caches_fewer_views_and_says_so(settings, data, tmp_path, caplog):
    model = _model()
    full = _cache(settings, data)
    full.attach(model, [2])
    per_view, val = full.train(2)[0].nbytes, full.val(2).nbytes
    bounded = _cache(settings, data, budget=1, spill_dir=tmp_path / "spill")
    # floor 2: three boundaries share the budgets; room for one view in each share
    bounded.disk_budget_bytes = 3 * (val + per_view)
    with caplog.at_level("WARNING"):
        bounded.attach(model, [2])
    assert bounded.views == 1 and bounded.train(2).shape[0] == 1
    assert "1 augmented views per image instead of 2" in caplog.text
    assert bounded.report()["activation_cache_views"] == 1
    np.testing.assert_array_equal(np.asarray(bounded.train(2))[0], full.train(2)[0])
    bounded.close()
