"""Where the on-disk caches live (decoded pixels, derived-copy features): one rule for all."""

from __future__ import annotations

import os
from pathlib import Path


def cache_folder(setting: Path | str | None, name: str) -> Path | None:
    """The folder a cache setting names: the setting itself, ``none`` for memory only, or by
    default ``$XDG_CACHE_HOME/osteo/<name>`` (``~/.cache`` when the variable is unset or not an
    absolute path, as the XDG spec says)."""
    if setting is not None:
        return None if str(setting).lower() == "none" else Path(setting)
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "osteo" / name
