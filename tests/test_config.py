from pathlib import Path

import pytest
import yaml

from osteo_pipeline.config import ConfigError, Settings, cli_overrides, env_overrides, load_settings

ROOT = Path(__file__).resolve().parents[1]


def test_default_yaml_mirrors_the_model_defaults():
    assert yaml.safe_load((ROOT / "configs/default.yaml").read_text()) == Settings().model_dump(mode="json")


@pytest.mark.parametrize("name", ["default.yaml", "knee-binary.yaml", "knee-3class.yaml"])
def test_shipped_configs_load(name):
    load_settings(ROOT / "configs" / name, environ={})


def test_precedence_file_then_env_then_cli(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("validation: {min_width: 300, min_height: 300}\nseed: 1\n")
    env = {"OSTEO_VALIDATION__MIN_WIDTH": "400", "OSTEO_SEED": "7"}
    settings = load_settings(file, overrides=cli_overrides(["validation.min_width=500"]), environ=env)
    assert settings.validation.min_width == 500  # CLI beats env beats file
    assert settings.validation.min_height == 300  # file beats default
    assert settings.seed == 7  # env alias


def test_env_values_keep_their_types():
    overrides = env_overrides({"OSTEO_DATA__CLASSES": "[a, b, c]", "OSTEO_SPLIT__TEST": "0.2", "HOME": "/x"})
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
    assert load_settings(overrides=cli_overrides(["registry.floors={}"]), environ={}).registry.floors == {}
    replaced = load_settings(overrides=cli_overrides(["registry.floors={recall: 0.7}"]), environ={})
    assert replaced.registry.floors == {"recall": 0.7}  # a dict setting given anew replaces the default
