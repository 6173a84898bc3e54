"""What a comparison network says about where it can be cut: the deepest part any phase trains,
and whether a frozen prefix is left for an activation cache."""

import pytest

from osteo_pipeline.core.baselines import VGG16_LAYOUT
from osteo_pipeline.core.model import RESNET50_LAYOUT
from osteo_pipeline.training.fit import TrainParams
from osteo_pipeline.training.zoo import KerasSystem


@pytest.mark.parametrize(
    ("layout", "unfreeze", "epochs", "depth", "frozen_prefix"),
    [
        (VGG16_LAYOUT, 1, (4, 8), 1, True),  # head, then the top conv block
        (VGG16_LAYOUT, 1, (4, 0), 0, True),  # head only: fine-tuning depth never used
        (VGG16_LAYOUT, 5, (4, 8), 5, False),  # every block trains: nothing to cache
        (RESNET50_LAYOUT, 15, (1, 1), 15, True),
        (RESNET50_LAYOUT, 16, (1, 1), 16, False),
        (None, 0, (4, 8), 0, False),  # from scratch
    ],
)
def test_a_system_knows_its_deepest_trained_block_and_whether_a_frozen_prefix_is_left(
    layout, unfreeze, epochs, depth, frozen_prefix
):
    system = KerasSystem(
        None, TrainParams(1e-3, unfreeze, 0, 0.0), epochs, lambda model, d: None, layout
    )
    assert (system.depth, system.frozen_prefix) == (depth, frozen_prefix)


def test_a_network_from_scratch_trains_every_layer_for_the_scratch_epochs(train_settings):
    """``compare.scratch_*`` set its learning rate and epochs, all in the fine-tuning phase
    (nothing is frozen, so nothing can be cached); the head is the config's."""
    from osteo_pipeline.core.baselines import cnn3
    from osteo_pipeline.training.zoo import from_scratch

    c = train_settings.compare.model_copy(update={"scratch_epochs": 7})
    settings = train_settings.model_copy(update={"compare": c})
    system = from_scratch(cnn3, settings, 32)
    assert system.epochs == (0, 7) and system.layout is None and not system.frozen_prefix
    assert system.params.learning_rate == c.scratch_learning_rate
    assert system.params.head_units == settings.model.head_units
    assert system.model.input_shape == (None, 32, 32, 3)
