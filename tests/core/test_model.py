"""Behavioural tests of the ResNet-50 model (random init, tiny input: no download)."""

import keras
import numpy as np
import pytest

from osteo_pipeline.core.model import (
    MAX_UNFREEZE_DEPTH,
    RESIDUAL_BLOCKS,
    ModelSpec,
    WeightsUnavailableError,
    backbone,
    build_model,
    get_backbone,
    inference_copy,
    set_unfrozen_blocks,
)

pytestmark = pytest.mark.slow
SPEC = ModelSpec(("normal", "osteoporosis"), 32, 8, 0.2)


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return build_model(SPEC, None)


def _blocks_of(names):
    return {
        n.split("_")[0] + "_" + n.split("_")[1]
        for n in names
        if n.startswith("conv") and "_block" in n
    }


def test_head_shape_and_softmax(model):
    out = model.predict(np.zeros((2, 32, 32, 3), np.float32), verbose=0)
    assert out.shape == (2, 2) and np.allclose(out.sum(axis=1), 1, atol=1e-5)
    assert [layer.name for layer in model.layers[-4:]] == [
        "gap",
        "head_dense",
        "head_dropout",
        "probabilities",
    ]


@pytest.mark.parametrize("depth", [0, 1, 3, 7, MAX_UNFREEZE_DEPTH])
def test_unfreeze_depth_changes_exactly_the_top_blocks(model, depth):
    names = set_unfrozen_blocks(model, depth)
    expected = set(RESIDUAL_BLOCKS[len(RESIDUAL_BLOCKS) - depth :]) if depth else set()
    assert _blocks_of(names) == expected
    assert ("conv1_conv" in names) == (depth == MAX_UNFREEZE_DEPTH)
    head = {"head_dense", "probabilities"}
    trainable_layers = {layer.name for layer in model.layers if layer.trainable and layer.weights}
    assert head <= trainable_layers


def test_depth_out_of_range(model):
    with pytest.raises(ValueError, match="0..16"):
        set_unfrozen_blocks(model, 17)


def test_batchnorm_stays_frozen_while_training(model):
    set_unfrozen_blocks(model, MAX_UNFREEZE_DEPTH)
    bns = [
        layer
        for layer in get_backbone(model).layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert bns and not any(layer.trainable for layer in bns)
    before = [np.array(v) for layer in bns for v in layer.weights]
    conv_before = np.array(get_backbone(model).get_layer("conv5_block3_3_conv").kernel)
    model.compile(keras.optimizers.SGD(0.1), "categorical_crossentropy")
    x = np.random.default_rng(0).normal(0, 50, (4, 32, 32, 3)).astype(np.float32)
    model.fit(x, np.eye(2)[[0, 1, 0, 1]], epochs=1, verbose=0)
    after = [np.array(v) for layer in bns for v in layer.weights]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))  # moving stats and gamma/beta
    assert not np.array_equal(
        conv_before, np.array(get_backbone(model).get_layer("conv5_block3_3_conv").kernel)
    )


def test_inference_copy_predicts_the_same_and_saves_small(model, tmp_path):
    copy = inference_copy(model)
    x = np.random.default_rng(1).normal(0, 50, (2, 32, 32, 3)).astype(np.float32)
    assert np.allclose(copy.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    copy.save(tmp_path / "m.keras")
    assert (tmp_path / "m.keras").stat().st_size < 110e6  # ~95 MB of float32 weights, no optimizer


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="not found"):
        backbone(str(tmp_path / "nope.h5"), 32)
