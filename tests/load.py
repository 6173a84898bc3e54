"""A bounded load generator for the scoring server: concurrent clients mixing valid images with
bad payloads of many kinds, 127.0.0.1 only. Shared by the CI test and ``bench/serving_load.py``."""

from __future__ import annotations

import base64
import json
import random
import re
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import requests

from tests.corpus import dicom_bytes, jpeg_bytes, png_header_only


def _split(*rows: object) -> str:
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": [[r] for r in rows]}})


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def valid_payloads(images: list[bytes]) -> list[str]:
    """Single images, a batch of several, and a DICOM radiograph."""
    encoded = [_b64(i) for i in images]
    ramp = np.tile(np.linspace(0, 4095, 256).astype(np.uint16), (256, 1))
    return [_split(e) for e in encoded] + [_split(*encoded[:4]), _split(_b64(dicom_bytes(ramp)))]


@dataclass(frozen=True)
class BadPayload:
    """A request the server must refuse with ``status`` and a message matching ``reason``."""

    body: str
    content_type: str
    status: int
    reason: str  # regular expression the response's message must match


def _bad_row(body: str, reason: str) -> BadPayload:
    return BadPayload(body, "application/json", 400, reason)


#: kind -> the bad request and the refusal it must get
BAD_PAYLOADS: dict[str, BadPayload] = {
    "not json": _bad_row("garbage{", r"Ensure that input is a valid JSON formatted string"),
    "json, not a dataframe": _bad_row(
        json.dumps({"hello": 1}),
        r"must be a JSON dictionary with exactly one of the input fields",
    ),
    "wrong column": _bad_row(
        json.dumps({"dataframe_split": {"columns": ["img"], "data": [["x"]]}}),
        r"Model is missing inputs \['image'\]",
    ),
    "not base64": _bad_row(_split("%%% not base64 %%%"), r"row 0: not valid base64"),
    "text, not an image": _bad_row(
        _split(_b64(b"hello, I am not an image")), r"row 0: not an image"
    ),
    "truncated jpeg": _bad_row(
        _split(_b64(jpeg_bytes(256)[:1500])),
        r"row 0: cannot decode image .*image file is truncated",
    ),
    "empty string": _bad_row(_split(""), r"row 0: empty or missing image string"),
    "null image": _bad_row(_split(None), r"row 0: empty or missing image string"),
    "number, not a string": _bad_row(_split(12345), r"row 0: expected a base64 string, got int"),
    "1x1 image, below validation's minimum": _bad_row(
        _split(_b64(jpeg_bytes(1))), r"row 0: 1x1 px is below the \d+x\d+ minimum"
    ),
    "50-megapixel header": _bad_row(
        _split(_b64(png_header_only(10_000, 5_000))),
        r"row 0: image is 10000x5000 = 50,000,000 px, over the [\d,]+ px limit",
    ),
    "empty batch": _bad_row(
        json.dumps({"dataframe_split": {"columns": ["image"], "data": []}}),
        r"empty batch: send at least one row",
    ),
    # Its header names no size: refused by the size check that reads only the header.
    "corrupt dicom": _bad_row(
        _split(_b64(b"\0" * 128 + b"DICM" + b"\x02\x00garbage")),
        r"row 0: 0x0 px is below the \d+x\d+ minimum",
    ),
    "one bad row in a batch": _bad_row(
        _split(_b64(jpeg_bytes(64)), "%%%"),
        r"1 of 2 rows are not usable images: row 1: not valid base64",
    ),
    "wrong content type": BadPayload(
        "image=abc", "text/plain", 415, r"only supports the following content types"
    ),
}


@dataclass
class LoadReport:
    seconds: float
    requests: int = 0
    valid_latencies_ms: list[float] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)  # any 5xx or dropped connection
    valid_failures: list[str] = field(default_factory=list)  # valid payload not answered 200
    # a bad payload not refused with its status and a message naming its problem
    bad_not_rejected: list[str] = field(default_factory=list)
    bad_kinds_seen: set[str] = field(default_factory=set)

    def summary(self) -> dict[str, object]:
        latencies = np.array(self.valid_latencies_ms or [np.nan])
        return {
            "seconds": round(self.seconds, 1),
            "requests": self.requests,
            "throughput_rps": round(self.requests / self.seconds, 2),
            "valid_answered": len(self.valid_latencies_ms),
            "valid_p50_ms": round(float(np.percentile(latencies, 50)), 1),
            "valid_p99_ms": round(float(np.percentile(latencies, 99)), 1),
            "bad_kinds": len(self.bad_kinds_seen),
            "server_errors": len(self.server_errors),
            "valid_failures": len(self.valid_failures),
            "bad_not_rejected": len(self.bad_not_rejected),
        }


def run_load(
    url: str,
    valid: list[str],
    clients: int = 8,
    seconds: float = 30,
    max_requests: int = 100_000,
    seed: int = 0,
) -> LoadReport:
    """``clients`` threads post until ``seconds`` pass or ``max_requests`` are sent: half valid
    payloads, half bad ones (every kind in turn)."""
    report = LoadReport(seconds=seconds)
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    bad_kinds = list(BAD_PAYLOADS)

    def client(index: int) -> None:
        rng = random.Random(seed + index)
        session = requests.Session()
        turn = index
        while time.monotonic() < deadline:
            with lock:
                if report.requests >= max_requests:
                    return
                report.requests += 1
            turn += 1
            if turn % 2:
                kind, body, content_type = "valid", rng.choice(valid), "application/json"
            else:
                kind = bad_kinds[(turn // 2) % len(bad_kinds)]
                body, content_type = BAD_PAYLOADS[kind].body, BAD_PAYLOADS[kind].content_type
            started = time.perf_counter()
            try:
                response = session.post(
                    url, data=body, headers={"Content-Type": content_type}, timeout=120
                )
            except requests.RequestException as exc:
                with lock:
                    report.server_errors.append(f"{kind}: {type(exc).__name__}: {exc}")
                continue
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                if response.status_code >= 500:
                    report.server_errors.append(
                        f"{kind}: HTTP {response.status_code} {response.text[:200]}"
                    )
                elif kind == "valid":
                    if response.status_code == 200 and "predictions" in response.json():
                        report.valid_latencies_ms.append(elapsed)
                    else:
                        report.valid_failures.append(
                            f"HTTP {response.status_code} {response.text[:200]}"
                        )
                else:
                    report.bad_kinds_seen.add(kind)
                    if not refused_as_expected(BAD_PAYLOADS[kind], response):
                        report.bad_not_rejected.append(
                            f"{kind}: HTTP {response.status_code} {response.text[:200]}"
                        )

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report.seconds = time.monotonic() - started
    return report


def refused_as_expected(bad: BadPayload, response: requests.Response) -> bool:
    """The server answered ``bad`` with its status and a message naming its problem."""
    return (
        response.status_code == bad.status and re.search(bad.reason, _message(response)) is not None
    )


def _message(response: requests.Response) -> str:
    try:
        return str(response.json().get("message", ""))
    except ValueError:
        return response.text.strip()
