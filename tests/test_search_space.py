"""The one search space: it refuses spaces trials could not be drawn from (and config validation
refuses them through it), draws every trial within its bounds, and admits only what lies in it."""

import math

import optuna
import pytest
from optuna.samplers import RandomSampler

from osteo_pipeline.config import ConfigError, cli_overrides, load_settings
from osteo_pipeline.core.search_space import SearchSpace, SearchSpaceError

USABLE = SearchSpace(
    learning_rate=(1e-5, 1e-3),
    unfreeze_depth=(0, 6),
    head_units=(0, 64),
    dropout=(0.1, 0.5),
)
SEARCHES_ALL = SearchSpace(
    learning_rate=(1e-4, 1e-2),
    unfreeze_depth=(2, 4),
    head_units=(0, 32, 128),
    dropout=(0.0, 0.4),
    l2=(1e-6, 1e-2),
    input_sizes=(64, 96),
    rois=("image", "knees"),
)
MODEL = {"l2": 0.0, "input_size": 224, "roi": "image"}


def _with(**changes) -> SearchSpace:
    return SearchSpace(**{**USABLE.__dict__, **changes})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"learning_rate": (0.0, 1e-3)}, r"tune\.learning_rate must be a range 0 < low <= high"),
        ({"learning_rate": (1e-3, 1e-5)}, r"tune\.learning_rate must be a range"),
        ({"l2": (1e-2, 1e-6)}, r"tune\.l2 must be a range 0 < low <= high"),
        (
            {"unfreeze_depth": (0, 17)},
            r"tune\.unfreeze_depth must be a range 0 <= low <= high <= 16",
        ),
        ({"unfreeze_depth": (3, 2)}, r"tune\.unfreeze_depth must be a range"),
        ({"head_units": ()}, r"tune\.head_units must list sizes of 0 \(a linear head\) to 8192"),
        ({"head_units": (-1, 64)}, r"tune\.head_units must list sizes"),
        ({"head_units": (8193,)}, r"tune\.head_units must list sizes"),
        ({"dropout": (0.5, 0.1)}, r"tune\.dropout must be a range 0 <= low <= high < 1"),
        ({"dropout": (0.1, 1.0)}, r"tune\.dropout must be a range"),
        ({"input_sizes": ()}, r"tune\.input_sizes must list sizes of 32 to 1024 px"),
        ({"input_sizes": (224, 2048)}, r"tune\.input_sizes must list sizes of 32 to 1024 px"),
        ({"rois": ()}, r"tune\.rois must list some of image, knees"),
        ({"rois": ("image", "feet")}, r"tune\.rois must list some of image, knees"),
    ],
)
def test_a_space_trials_could_not_be_drawn_from_is_refused_naming_the_field(changes, message):
    space = _with(**changes)
    assert len(space.problems()) == 1
    with pytest.raises(SearchSpaceError, match=message):
        space.check()


def test_usable_spaces_pass_and_every_problem_is_named_at_once():
    assert USABLE.problems() == [] and USABLE.check() is USABLE
    assert SEARCHES_ALL.check() is SEARCHES_ALL
    broken = _with(learning_rate=(1.0, 0.1), dropout=(0.9, 0.1), input_sizes=(8,))
    with pytest.raises(SearchSpaceError) as refused:
        broken.check()
    assert [p.split(" ")[0] for p in broken.problems()] == [
        "tune.learning_rate",
        "tune.dropout",
        "tune.input_sizes",
    ]
    assert str(refused.value) == "; ".join(broken.problems())


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("tune.dropout=[0.6, 0.2]", r"tune\.dropout must be a range 0 <= low <= high < 1"),
        ("tune.learning_rate=[0, 0.1]", r"tune\.learning_rate must be a range 0 < low"),
        ("tune.head_units=[16, 9000]", r"tune\.head_units must list sizes"),
        ("tune.input_sizes=[]", r"tune\.input_sizes must list sizes of 32 to 1024 px"),
    ],
)
def test_config_validation_refuses_a_bad_space_with_the_search_space_message(override, message):
    with pytest.raises(ConfigError, match=rf"tune: Value error, {message}"):
        load_settings(overrides=cli_overrides([override]), environ={})


def test_config_validation_asks_the_search_space(monkeypatch):
    """Whatever the search space refuses, loading the config refuses: the check is not copied."""
    monkeypatch.setattr(SearchSpace, "problems", lambda self: ["tune.sentinel is refused"])
    with pytest.raises(ConfigError, match=r"tune\.sentinel is refused"):
        load_settings(overrides={"tune": {"trials": 3}}, environ={})


def test_the_configured_space_is_the_tune_section():
    settings = load_settings(
        overrides=cli_overrides(["tune.input_sizes=[64, 96]", "tune.rois=[knees]"]), environ={}
    )
    space, tune = settings.tune.search_space, settings.tune
    assert (space.learning_rate, space.unfreeze_depth, space.dropout, space.l2) == (
        tune.learning_rate,
        tune.unfreeze_depth,
        tune.dropout,
        None,
    )
    assert (space.head_units, space.input_sizes, space.rois) == (
        (0, 64, 128, 256),
        (64, 96),
        ("knees",),
    )


@pytest.mark.parametrize("space", [USABLE, SEARCHES_ALL], ids=["four", "all"])
def test_every_draw_lies_within_the_bounds_on_the_configured_scale(space):
    study = optuna.create_study(sampler=RandomSampler(seed=11))
    draws = []
    for _ in range(200):
        trial = study.ask()
        drawn = space.suggest(trial)
        draws.append(drawn)
        assert space.learning_rate[0] <= drawn["learning_rate"] <= space.learning_rate[1]
        assert space.unfreeze_depth[0] <= drawn["unfreeze_depth"] <= space.unfreeze_depth[1]
        assert isinstance(drawn["unfreeze_depth"], int)
        assert drawn["head_units"] in space.head_units
        assert space.dropout[0] <= drawn["dropout"] <= space.dropout[1]
        assert trial.distributions["learning_rate"].log
        if space.l2 is None:
            assert {"l2", "input_size", "roi"}.isdisjoint(drawn)  # the model's, not drawn
        else:
            assert space.l2[0] <= drawn["l2"] <= space.l2[1] and trial.distributions["l2"].log
            assert drawn["input_size"] in space.input_sizes and drawn["roi"] in space.rois
        assert space.admits(drawn, MODEL)
        study.tell(trial, 0.0)
    # Log scale: about half the learning rates fall below the geometric middle of the range.
    middle = math.sqrt(space.learning_rate[0] * space.learning_rate[1])
    assert 0.3 < sum(d["learning_rate"] < middle for d in draws) / len(draws) < 0.7
    assert {d["head_units"] for d in draws} == set(space.head_units)


def test_a_trial_is_admitted_only_where_it_lies_in_the_space():
    inside = {"learning_rate": 1e-3, "unfreeze_depth": 3, "head_units": 32, "dropout": 0.2}
    full = inside | {"l2": 1e-4, "input_size": 96, "roi": "knees"}
    assert SEARCHES_ALL.admits(full, MODEL)
    for name, outside in [
        ("learning_rate", 0.5),
        ("unfreeze_depth", 5),
        ("head_units", 64),
        ("dropout", 0.45),
        ("l2", 0.5),
        ("input_size", 224),
        ("roi", "feet"),
    ]:
        assert not SEARCHES_ALL.admits(full | {name: outside}, MODEL), name
    for always_searched in ("learning_rate", "unfreeze_depth", "head_units", "dropout"):
        assert not SEARCHES_ALL.admits(
            {k: v for k, v in full.items() if k != always_searched}, MODEL
        )
    # A searched L2 the trial lacks is drawn; an input it lacks is the model's, which must fit.
    assert SEARCHES_ALL.admits({k: v for k, v in full.items() if k != "l2"}, MODEL)
    assert not SEARCHES_ALL.admits({k: v for k, v in full.items() if k != "input_size"}, MODEL)
    assert SEARCHES_ALL.admits(
        {k: v for k, v in full.items() if k != "input_size"}, MODEL | {"input_size": 64}
    )
    # Where the space searches no input, the trial must have run at the model's; L2 is ignored.
    fits_usable = inside | {"head_units": 64}
    assert USABLE.admits(fits_usable, MODEL)
    assert USABLE.admits(fits_usable | {"l2": 0.9, "input_size": 224, "roi": "image"}, MODEL)
    assert not USABLE.admits(fits_usable | {"input_size": 96}, MODEL)
    assert not USABLE.admits(fits_usable | {"roi": "knees"}, MODEL)


def test_the_deepest_unfreeze_depth_is_the_backbones_block_count():
    """The search space's bound (no TensorFlow to import) is the model's count of blocks."""
    from osteo_pipeline.core import model, search_space

    assert search_space.MAX_UNFREEZE_DEPTH == model.MAX_UNFREEZE_DEPTH == 16
