"""The one JSON serializer: NumPy and pandas values in, strict JSON out."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from osteo_pipeline.core.jsonable import dumps, plain


def test_numpy_and_pandas_values_become_plain_json_and_missing_numbers_null():
    payload = {
        "passed": np.bool_(False),
        "count": np.int64(3),
        "share": np.float32(0.25),
        "nan": float("nan"),
        "inf": np.float64("inf"),
        "na": pd.NA,
        "nat": pd.NaT,
        "when": pd.Timestamp("2026-12-02T03:00:00"),
        "array": np.array([[1, 2], [3, 4]], dtype=np.uint8),
        "frame": pd.DataFrame({"a": [1, None]}),
        "path": Path("/data/x.png"),
        "set": {"b", "a"},
        np.int64(7): "a NumPy key",
    }
    text = dumps(payload)
    loaded = json.loads(text)  # strict: json.loads would accept NaN, so check the text too
    assert "NaN" not in text and "Infinity" not in text
    assert loaded == {
        "passed": False,
        "count": 3,
        "share": 0.25,
        "nan": None,
        "inf": None,
        "na": None,
        "nat": None,
        "when": "2026-12-02T03:00:00",
        "array": [[1, 2], [3, 4]],
        "frame": [{"a": 1.0}, {"a": None}],
        "path": "/data/x.png",
        "set": ["a", "b"],
        "7": "a NumPy key",
    }
    assert isinstance(plain(np.bool_(True)), bool) and isinstance(plain(np.int32(1)), int)


def test_an_undecodable_file_name_round_trips_as_ascii():
    name = b"normal/\xff.png".decode("utf-8", "surrogateescape")
    text = dumps({"path": name})
    assert text.isascii() and json.loads(text)["path"] == name
    assert not math.isnan(json.loads(dumps({"x": 1.5}))["x"])
