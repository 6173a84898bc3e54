"""Knee regions of interest: on a synthetic film of two knees, each crop lands on its own knee's
joint line; a single knee is found once (and given twice); serving and training share the crops."""

import numpy as np

from osteo_pipeline.core.preprocess import load_gray_views, load_views, views_per_image
from osteo_pipeline.core.roi import VIEWS, knee_boxes, knee_crops
from osteo_pipeline.core.synth import render, render_bilateral


def _film(seed: int, bilateral: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    draw = render_bilateral if bilateral else render
    return (draw("normal", 0.0, 320, rng) * 255).round().astype(np.uint8)


def _joint_row(gray: np.ndarray, x0: int, x1: int) -> int:
    """The darkest row of the middle of a knee's bone between femur and tibia (synth draws the
    joint gap at 45-48% of the height, the femur above, the tibia below)."""
    height = gray.shape[0]
    band = gray[
        int(0.35 * height) : int(0.6 * height), x0 + (x1 - x0) * 2 // 5 : x0 + (x1 - x0) * 3 // 5
    ].mean(axis=1)
    return int(0.35 * height) + int(np.argmin(band))


def test_two_knees_are_split_at_the_gap_and_each_crop_holds_its_joint():
    for seed in range(4):
        film = _film(seed, bilateral=True)
        height, width = film.shape
        boxes = knee_boxes(film)
        assert len(boxes) == 2
        left, right = boxes
        half = width // 2
        assert left.left + left.side / 2 < half < right.left + right.side / 2  # one box per knee
        for box, (x0, x1) in zip(boxes, ((0, half), (half, width))):
            centre_x = box.left + box.side / 2
            assert x0 + 0.25 * (x1 - x0) < centre_x < x0 + 0.75 * (x1 - x0)
            joint = _joint_row(film, x0, x1)
            assert (
                box.top + 0.2 * box.side < joint < box.top + 0.8 * box.side
            )  # the joint line inside, not at an edge
            assert box.side >= 0.3 * height


def test_a_single_knee_gives_one_box_and_its_crop_twice():
    film = _film(7, bilateral=False)
    boxes = knee_boxes(film)
    assert len(boxes) == 1
    joint = _joint_row(film, 0, film.shape[1])
    assert boxes[0].top < joint < boxes[0].top + boxes[0].side
    crops = knee_crops(film, 64)
    assert crops.shape == (VIEWS, 64, 64) and np.array_equal(crops[0], crops[1])


def test_a_landscape_film_without_a_dark_gap_is_split_in_the_middle():
    flat = np.full((300, 500), 120, np.uint8)
    boxes = knee_boxes(flat)
    assert len(boxes) == 2 and boxes[0].left + boxes[0].side <= 251 and boxes[1].left >= 249


def test_the_one_loading_function_gives_crops_for_knees_and_the_film_for_image(tmp_path):
    from PIL import Image

    path = tmp_path / "film.png"
    Image.fromarray(_film(3, bilateral=True)).save(path)
    knees = load_views(path, 48, 10**8, "knees")
    assert knees.shape == (2, 48, 48, 3) and views_per_image("knees") == 2
    assert not np.array_equal(knees[0], knees[1])  # two different knees
    whole = load_gray_views(path.read_bytes(), 48, 10**8, "image")
    assert whole.shape == (1, 48, 48) and views_per_image("image") == 1
