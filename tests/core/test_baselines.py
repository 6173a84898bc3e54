"""The comparison networks: right shapes and sizes, VGG-16 weights by file, partial unfreezing."""

import keras
import numpy as np
import pytest

from osteo_pipeline.core import baselines
from osteo_pipeline.core.model import ModelSpec, WeightsUnavailableError

SPEC = ModelSpec(("normal", "osteoporosis"), 64, 8, 0.2)


def _params(model):
    return sum(int(np.prod(w.shape)) for w in model.weights)


def test_resnet18_is_a_resnet18():
    model = baselines.resnet18(SPEC)
    base = model.get_layer("resnet18")
    blocks = {layer.name.rsplit("_", 1)[0] for layer in base.layers if layer.name.endswith("_add")}
    assert len(blocks) == 8  # two basic blocks in each of four stages
    assert base.output.shape[-1] == 512
    # torchvision's ResNet-18 without its fc layer has 11.18 M parameters (BN statistics
    # included here)
    assert _params(base) == pytest.approx(11.19e6, rel=0.01)
    assert model.predict(np.zeros((2, 64, 64, 3)), verbose=0).shape == (2, 2)


def test_cnn3_has_three_convolutions_and_everything_trains():
    model = baselines.cnn3(SPEC)
    convolutions = [
        layer for layer in model.get_layer("cnn3").layers if isinstance(layer, keras.layers.Conv2D)
    ]
    assert [c.filters for c in convolutions] == [32, 64, 128]
    assert all(layer.trainable for layer in model.layers)


def test_resnet50_scratch_trains_every_layer_and_batch_statistics():
    model = baselines.resnet50_scratch(SPEC)
    assert all(w.trainable for w in model.get_layer("resnet50").weights if "moving" not in w.path)


def test_vgg16_loads_a_local_weights_file_and_unfreezes_by_block(tmp_path):
    source = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "vgg16_notop.weights.h5"
    source.save_weights(path)
    model = baselines.vgg16(SPEC, str(path))
    assert np.allclose(
        model.get_layer("vgg16").get_layer("block1_conv1").get_weights()[0],
        source.get_layer("block1_conv1").get_weights()[0],
    )
    assert not model.get_layer("vgg16").trainable
    baselines.set_trainable_vgg_blocks(model, 1)
    trainable = {
        layer.name for layer in model.get_layer("vgg16").layers if layer.trainable and layer.weights
    }
    assert trainable == {"block5_conv1", "block5_conv2", "block5_conv3"}
    with pytest.raises(ValueError, match="0..5"):
        baselines.set_trainable_vgg_blocks(model, 6)


def test_vgg16_without_weights_is_unavailable_never_random(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="VGG-16 weights file not found"):
        baselines.vgg16(SPEC, str(tmp_path / "missing.h5"))
