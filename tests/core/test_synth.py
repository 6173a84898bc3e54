import numpy as np

from osteo_pipeline.core.synth import generate


def _pixels(items):
    return [np.asarray(i.image.convert("L"), dtype=np.float32) for i in items]


def test_same_seed_same_images_other_seed_other_images():
    a = _pixels(generate(["normal", "osteoporosis"], 2, 64, seed=3))
    b = _pixels(generate(["normal", "osteoporosis"], 2, 64, seed=3))
    c = _pixels(generate(["normal", "osteoporosis"], 2, 64, seed=4))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_sizes_modes_and_formats_vary_and_respect_the_minimum():
    items = generate(["normal", "osteoporosis"], 6, 64, seed=0)
    assert {i.image.mode for i in items} == {"L", "RGB"}
    assert {i.format for i in items} == {"JPEG", "PNG"}
    assert len({i.image.size for i in items}) > 3
    assert min(min(i.image.size) for i in items) >= 64


def test_osteoporotic_bone_is_darker_on_average():
    items = generate(["normal", "osteoporosis"], 8, 96, seed=1)
    means = {
        label: np.mean([p.mean() for i, p in zip(items, _pixels(items)) if i.label == label])
        for label in ("normal", "osteoporosis")
    }
    assert means["normal"] > means["osteoporosis"]
