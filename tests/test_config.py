import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.samplers import RandomSampler

from osteo_pipeline.config import (
    ConfigError,
    Settings,
    TuneSettings,
    cli_overrides,
    env_overrides,
    load_settings,
    packaged_configs,
)

ROOT = Path(__file__).resolve().parents[1]
#: Every example config the package ships; a new one must be added here (and checked below).
PACKAGED = ("default", "demo", "knee-3class", "knee-binary")


def test_default_yaml_mirrors_the_model_defaults():
    assert yaml.safe_load((ROOT / "configs/default.yaml").read_text()) == Settings().model_dump(
        mode="json"
    )


def _leaves(tree, prefix=()):
    """(dotted path, value) of every scalar or list in a nested mapping."""
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, (*prefix, key))
        else:
            yield ".".join((*prefix, key)), value


def test_every_packaged_config_is_listed_here():
    assert sorted(packaged_configs()) == sorted(PACKAGED)
    assert (ROOT / "configs").resolve() == (ROOT / "osteo_pipeline" / "configs").resolve()


@pytest.mark.parametrize("name", PACKAGED)
def test_packaged_configs_load_with_every_value_they_set_and_a_usable_search_space(name):
    file = packaged_configs()[name]
    settings = load_settings(file, environ={})
    assert settings.tune.search_space.problems() == []
    assert settings.tune.search_space.check() == settings.tune.search_space
    loaded = settings.model_dump(mode="json")
    written = yaml.safe_load(file.read_text())
    assert written, f"{file} sets nothing"
    for dotted, value in _leaves(written):
        got = loaded
        for key in dotted.split("."):
            got = got[key]
        assert got == value, f"{name}: {dotted} is {got!r}, the file says {value!r}"
    # Every trial the space proposes is one it admits (as a warm start would check it).
    space, study = settings.tune.search_space, optuna.create_study(sampler=RandomSampler(seed=0))
    for _ in range(20):
        drawn = space.suggest(study.ask())
        assert space.admits(drawn, settings.model.model_dump()), drawn


def test_the_packaged_configs_say_what_their_comments_promise():
    default = load_settings("default", environ={})
    assert default == Settings()
    demo = load_settings("demo", environ={})
    assert (demo.model.input_size, demo.model.allow_random_init_fallback) == (64, True)
    assert (demo.tune.cv, demo.tune.unfreeze_depth, demo.tune.trials) == ("off", (0, 0), 3)
    assert demo.tune.study_name == "demo" and demo.output_dir == Path("outputs/demo")
    assert demo.tracking.log_image_grids is True  # synthetic images only
    three = load_settings("knee-3class", environ={})
    binary = load_settings("knee-binary", environ={})
    assert three.data.classes == ["normal", "osteopenia", "osteoporosis"]
    assert binary.data.classes == ["normal", "osteoporosis"] and binary.data.positive == (
        "osteoporosis"
    )
    assert binary.data.ignore_unlisted_classes and not three.data.ignore_unlisted_classes
    for knee in (three, binary):
        assert knee.validation.fail_on_label_conflicts is False
        space = knee.tune.search_space
        assert (space.input_sizes, space.rois, space.l2) == (
            (224, 384),
            ("image", "knees"),
            (1e-6, 0.1),
        )
        assert (space.head_units, space.unfreeze_depth, knee.tune.cv) == (
            (0, 64, 256),
            (0, 2),
            "auto",
        )
    # One registered model per task: no two configs gate against each other's models.
    names = {load_settings(n, environ={}).registry.model_name for n in PACKAGED}
    assert names == {"osteo-knee", "osteo-knee-3class", "osteo-knee-binary"}


def test_field_docstrings_are_the_settings_descriptions():
    described = TuneSettings.model_fields["trials"].description
    assert described == "New trials each `osteo tune` call (and each retrain) adds to its study."
    assert Settings.model_fields["output_dir"].description == "Reports and split manifests go here."


def test_loading_the_config_imports_neither_tensorflow_nor_optuna():
    code = (
        "import sys; from osteo_pipeline.config import load_settings; load_settings(environ={}); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras', 'optuna'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_precedence_file_then_env_then_cli(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("validation: {min_width: 300, min_height: 300}\nseed: 1\n")
    env = {"OSTEO_VALIDATION__MIN_WIDTH": "400", "OSTEO_SEED": "7"}
    settings = load_settings(
        file, overrides=cli_overrides(["validation.min_width=500"]), environ=env
    )
    assert settings.validation.min_width == 500  # CLI beats env beats file
    assert settings.validation.min_height == 300  # file beats default
    assert settings.seed == 7  # env alias


def test_env_values_keep_their_types():
    overrides = env_overrides(
        {"OSTEO_DATA__CLASSES": "[a, b, c]", "OSTEO_SPLIT__TEST": "0.2", "HOME": "/x"}
    )
    assert overrides == {"data": {"classes": ["a", "b", "c"]}, "split": {"test": 0.2}}


def test_config_file_from_environment(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("seed: 99\n")
    assert load_settings(environ={"OSTEO_CONFIG": str(file)}).seed == 99


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"validation": {"min_width": "wide"}}, "validation.min_width"),
        ({"split": {"train": 0.9}}, "split"),
        ({"data": {"classes": ["a", "a"]}}, "data"),
        ({"validation": {"typo_key": 1}}, "validation.typo_key"),
    ],
)
def test_invalid_values_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_settings(overrides=overrides, environ={})


def test_missing_or_malformed_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.yaml", environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(bad, environ={})


def test_override_syntax_error():
    with pytest.raises(ConfigError, match="key.sub=value"):
        cli_overrides(["no-equals-sign"])


def test_empty_mapping_override_clears_a_dict_setting():
    assert (
        load_settings(overrides=cli_overrides(["registry.floors={}"]), environ={}).registry.floors
        == {}
    )
    replaced = load_settings(overrides=cli_overrides(["registry.floors={recall: 0.7}"]), environ={})
    assert replaced.registry.floors == {
        "recall": 0.7
    }  # a dict setting given anew replaces the default


@pytest.mark.parametrize(
    "override",
    [
        "model.input_size=100000",
        "train.batch_size=1000000",
        "train.finetune_epochs=100000",
        "tune.trials=10000000",
        "tune.workers=100000",
        "compare.folds=1000",
        "synth.per_class=10000000",
    ],
)
def test_sizes_and_counts_have_upper_bounds(override):
    field = re.escape(override.partition("=")[0])
    with pytest.raises(ConfigError, match=rf"{field}: Input should be less than or equal to"):
        load_settings(overrides=cli_overrides([override]), environ={})


def test_the_searched_unfreeze_depth_stays_within_the_backbone():
    with pytest.raises(
        ConfigError, match=r"tune\.unfreeze_depth must be a range 0 <= low <= high <= 16"
    ):
        load_settings(overrides=cli_overrides(["tune.unfreeze_depth=[0, 60]"]), environ={})


@pytest.mark.parametrize("field", ["tune.input_sizes", "compare.sizes"])
def test_searched_and_compared_sizes_have_the_input_size_bounds(field):
    with pytest.raises(
        ConfigError, match=rf"{re.escape(field)} must (list sizes of|be) 32 to 1024 px"
    ):
        load_settings(overrides=cli_overrides([f"{field}=[224, 5000]"]), environ={})


def test_overrides_of_text_fields_keep_the_words_yaml_would_turn_into_booleans():
    overrides = [
        "tune.cv=off",
        "train.xla=on",
        "data.classes=[no, yes]",
        "model.weights=none",
        "tune.rois=[knees]",
        "tracking.experiment=yes",
    ]
    settings = load_settings(overrides=cli_overrides(overrides), environ={})
    assert (settings.tune.cv, settings.train.xla, settings.data.classes) == (
        "off",
        "on",
        ["no", "yes"],
    )
    assert (settings.model.weights, settings.tune.rois, settings.tracking.experiment) == (
        "none",
        ["knees"],
        "yes",
    )
    from_env = load_settings(
        environ={
            "OSTEO_TUNE__CV": "off",
            "OSTEO_TRAIN__MIXED_PRECISION": "on",
            "OSTEO_VGG16_WEIGHTS": "none",
        }
    )
    assert (from_env.tune.cv, from_env.train.mixed_precision, from_env.compare.vgg16_weights) == (
        "off",
        "on",
        "none",
    )


def test_overrides_of_other_fields_keep_their_yaml_types_and_null_clears_optional_text():
    overrides = [
        "train.augment.enabled=off",
        "tune.timeout_s=60",
        "data.positive_class=null",
        "tune.l2=[0.001, 0.1]",
    ]
    settings = load_settings(overrides=cli_overrides(overrides), environ={})
    assert settings.train.augment.enabled is False and settings.tune.timeout_s == 60
    assert settings.data.positive_class is None and settings.tune.l2 == (0.001, 0.1)


def test_a_packaged_example_config_loads_by_name_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here: the names come from the package
    assert load_settings("knee-3class", environ={}).registry.model_name == "osteo-knee-3class"
    assert load_settings("knee-binary.yaml", environ={}).data.ignore_unlisted_classes is True
    assert load_settings(environ={"OSTEO_CONFIG": "demo"}).model.input_size == 64
    (tmp_path / "knee-3class").write_text("seed: 3\n")  # a file of that name wins
    assert load_settings("knee-3class", environ={}).seed == 3
    with pytest.raises(
        ConfigError,
        match=r"config file not found: nope \(packaged configs by name: "
        r"default, demo, knee-3class, knee-binary\)",
    ):
        load_settings("nope", environ={})
