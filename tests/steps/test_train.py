"""Where `osteo train`'s parameters come from (``steps.train.choose_params``)."""

from __future__ import annotations

import pytest

from osteo_pipeline.steps.train import ParamsError, choose_params

DATASET = "0" * 64


def test_a_params_file_fills_in_the_configs_and_a_bad_one_is_named(tiny_settings, tmp_path):
    defaults = choose_params("config", tiny_settings, DATASET)
    assert defaults.params["learning_rate"] == tiny_settings.train.learning_rate
    assert defaults.tags == {} and defaults.cv is None
    file = tmp_path / "params.yaml"
    file.write_text("learning_rate: 0.01\ndropout: 0.3\n")
    chosen = choose_params(str(file), tiny_settings, DATASET)
    assert chosen.params == defaults.params | {"learning_rate": 0.01, "dropout": 0.3}
    for text, message in (("- a list", "must hold a mapping"), ("a: [", "not valid YAML/JSON")):
        file.write_text(text)
        with pytest.raises(ParamsError, match=message):
            choose_params(str(file), tiny_settings, DATASET)
    with pytest.raises(ParamsError, match=r"no such file .*nope\.yaml.*'best', 'study:NAME'"):
        choose_params(str(tmp_path / "nope.yaml"), tiny_settings, DATASET)


def test_best_without_a_study_of_this_data_says_to_tune_first(train_settings):
    from osteo_pipeline.steps.tune import TuneError

    with pytest.raises(TuneError, match="no study .* run `osteo tune`"):
        choose_params("best", train_settings, DATASET)
