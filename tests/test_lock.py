"""`make install` installs exactly what requirements.lock pins (what CI passed with), and the lock
satisfies pyproject's own ranges (which stay honest lower bounds for library users)."""

import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _locked() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate(default_environment()):
            pins[canonicalize_name(requirement.name)] = str(requirement.specifier).removeprefix(
                "=="
            )
    return pins


def test_every_locked_package_is_installed_at_its_locked_version():
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    wrong = {
        name: (version, installed.get(name))
        for name, version in _locked().items()
        if installed.get(name) != version
    }
    assert wrong == {}, (
        f"installed versions differ from requirements.lock (run `make install`): {wrong}"
    )


def test_the_lock_satisfies_pyproject_and_pins_every_direct_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    locked = _locked()
    for line in [*project["dependencies"], *project["optional-dependencies"]["dev"]]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is not in requirements.lock: run `make lock`"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"{name}=={locked[name]} breaks pyproject's {requirement}"
        )
