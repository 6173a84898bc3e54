"""Loading the settings: defaults, a YAML file (or a packaged example config by name),
``OSTEO_*`` environment variables, then CLI overrides, each layer over the one before."""

from __future__ import annotations

import os
import types
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import ValidationError

from osteo_pipeline.config.base import ConfigError
from osteo_pipeline.config.settings import Settings

ENV_PREFIX = "OSTEO_"
CONFIGS_PACKAGE = "osteo_pipeline.configs"  # the example configs, shipped as package data
#: Short environment names documented for users, mapped onto their nested keys.
ENV_ALIASES = {
    "OSTEO_BACKBONE_WEIGHTS": "model.weights",
    "OSTEO_SEED": "seed",
    "OSTEO_VGG16_WEIGHTS": "compare.vgg16_weights",
}


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        # An empty mapping replaces (``--set registry.floors={}`` clears the floors).
        if isinstance(value, Mapping) and value and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _nest(dotted_key: str, value: Any) -> dict[str, Any]:
    parts = [p for p in dotted_key.split(".") if p]
    if not parts:
        raise ConfigError(f"empty config key in override {dotted_key!r}")
    nested: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        nested = {part: nested}
    return nested


def _parse_scalar(raw: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _field_type(dotted_key: str) -> Any:
    """The declared type of the settings field ``dotted_key`` names, or None for an unknown key."""
    section: Any = Settings
    annotation = None
    for part in dotted_key.split("."):
        fields = getattr(section, "model_fields", None)
        if not isinstance(section, type) or fields is None or part not in fields:
            return None
        annotation = section = fields[part].annotation
    return annotation


def _holds_text(annotation: Any) -> bool:
    """Whether a field of this type takes words as typed: text, a path, a Literal of strings, a
    list of those, or one of them or None."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation in (str, Path):
        return True
    if origin is Literal:
        return all(isinstance(arg, str) for arg in args)
    if origin is list:
        return _holds_text(args[0])
    if origin in (Union, types.UnionType):
        options = [arg for arg in args if arg is not type(None)]
        return bool(options) and all(_holds_text(arg) for arg in options)
    return False


def _parse_value(dotted_key: str, raw: str) -> Any:
    """``raw`` parsed as YAML, except that a field expecting text keeps words YAML would turn into
    booleans or numbers (``tune.cv=off``, ``model.weights=none``, ``data.classes=[no, yes]``);
    ``null`` still clears a field that may be None."""
    value = _parse_scalar(raw)
    annotation = _field_type(dotted_key)
    if not _holds_text(annotation) or (value is None and type(None) in get_args(annotation)):
        return value
    try:
        return yaml.load(raw, Loader=yaml.BaseLoader)  # YAML's structure, every scalar a string
    except yaml.YAMLError:
        return raw


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Nested overrides from ``OSTEO_*`` variables (``OSTEO_SPLIT__TEST=0.2``)."""
    environ = os.environ if environ is None else environ
    result: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == "OSTEO_CONFIG":
            continue
        dotted = ENV_ALIASES.get(name) or name[len(ENV_PREFIX) :].lower().replace("__", ".")
        result = _deep_merge(result, _nest(dotted, _parse_value(dotted, raw)))
    return result


def cli_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """Nested overrides from ``key.sub=value`` strings."""
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise ConfigError(f"override {pair!r} is not of the form key.sub=value")
        result = _deep_merge(result, _nest(key.strip(), _parse_value(key.strip(), raw)))
    return result


def merge_overrides(base: dict[str, Any], dotted: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``{"section.key": value}`` pairs merged in (values keep their Python types)."""
    for key, value in dotted.items():
        base = _deep_merge(base, _nest(key, value))
    return base


def _known_top_level(overrides: dict[str, Any]) -> dict[str, Any]:
    # Unknown OSTEO_* variables (e.g. OSTEO_HOME of another tool) must not break loading.
    return {k: v for k, v in overrides.items() if k in Settings.model_fields}


def packaged_configs() -> dict[str, Path]:
    """The example configs shipped in the package, by name (``knee-3class``: its file)."""
    folder = resources.files(CONFIGS_PACKAGE)
    return {
        Path(entry.name).stem: Path(str(entry))
        for entry in folder.iterdir()
        if entry.name.endswith(".yaml")
    }


def config_file(path: str | Path) -> Path:
    """The config file ``path`` names: a file, else a packaged example config by name
    (``--config knee-3class``), so a message can name one that works from an installed wheel."""
    file = Path(path)
    if file.is_file():
        return file
    packaged = packaged_configs()
    found = packaged.get(file.name.removesuffix(".yaml")) if file.name == str(path) else None
    if found is None:
        names = ", ".join(sorted(packaged))
        raise ConfigError(f"config file not found: {file} (packaged configs by name: {names})")
    return found


def load_settings(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings from defaults, ``path`` (or ``$OSTEO_CONFIG``), environment and
    overrides."""
    environ = os.environ if environ is None else environ
    path = path or environ.get("OSTEO_CONFIG")
    data: dict[str, Any] = {}
    if path:
        file = config_file(path)
        try:
            loaded = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {file} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {file} must hold a mapping at the top level")
        data = loaded
    data = _deep_merge(data, _known_top_level(env_overrides(environ)))
    data = _deep_merge(data, overrides or {})
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        source = f" (from {path})" if path else ""
        raise ConfigError(f"invalid configuration{source}: {problems}") from exc
