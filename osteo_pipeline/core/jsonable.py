"""The one JSON serializer for every ``--json`` output and JSON artifact.

Results carry NumPy and pandas scalars (GX reports ``numpy.bool_`` values, metrics are
``float64``, manifests hold ``pd.NA``); ``json.dumps`` rejects some and writes ``NaN`` for others,
which is not JSON. Here every value becomes a plain JSON type, and a missing or non-finite
number becomes ``null``."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

import numpy as np
import pandas as pd


def plain(value: Any) -> Any:
    """``value`` with every container, scalar and missing value turned into plain JSON types."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | np.integer) and not isinstance(value, np.bool_):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Mapping):
        return {str(plain(k)) if not isinstance(k, str) else k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return [plain(v) for v in items]
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()]
    if isinstance(value, pd.DataFrame):
        return [plain(row) for row in value.to_dict(orient="records")]
    if isinstance(value, pd.Series):
        return [plain(v) for v in value.tolist()]
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, pd.Timestamp | dt.datetime | dt.date):
        return None if value is pd.NaT else value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain(dataclasses.asdict(value))
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return str(value)


def dumps(value: Any, indent: int | None = 2) -> str:
    """Strict JSON text (no NaN or Infinity) for ``value``. ASCII only: a file name with
    undecodable bytes round-trips as an escape and prints under any locale, also into a pipe."""
    return json.dumps(plain(value), indent=indent, allow_nan=False)
