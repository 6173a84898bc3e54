"""Credentials never reach a param, tag, artifact, log line or model card.

Storage URLs (``postgresql://user:password@host/db``), tracking URIs and S3 endpoints may carry a
password in their user-info part. Everything the pipeline records passes through here first."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MASK = "***"
#: ``scheme://user:password@`` -> ``scheme://user:***@`` (also for a bare ``scheme://password@``
#: token form, where no user is given).
_USERINFO = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^\s:/@]*)(?::(?P<password>[^\s/]*))?@"
)
#: Keys whose values are secrets whatever they look like.
SECRET_KEY_HINTS = ("SECRET", "PASSWORD", "TOKEN", "ACCESS_KEY", "CREDENTIAL", "API_KEY")


def redact_url(text: str) -> str:
    """``text`` with the password of every URL in it masked (a user name alone is kept)."""

    def mask(match: re.Match[str]) -> str:
        if match.group("password") is None:
            user = match.group("user")
            # ``https://TOKEN@host``: a lone user-info part that is a token, not a name.
            return f"{match.group('scheme')}{MASK}@" if len(user) >= 20 else match.group(0)
        return f"{match.group('scheme')}{match.group('user')}:{MASK}@"

    return _USERINFO.sub(mask, text)


def is_secret_key(key: str) -> bool:
    return any(hint in key.upper() for hint in SECRET_KEY_HINTS)


def redact(value: Any, key: str = "") -> Any:
    """``value`` (nested mappings and lists too) with URL passwords masked and values under
    secret-looking keys replaced."""
    if key and is_secret_key(key) and value not in (None, ""):
        return MASK
    if isinstance(value, str):
        return redact_url(value)
    if isinstance(value, Mapping):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value
