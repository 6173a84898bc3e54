"""Start and stop real servers on 127.0.0.1 for tests and benchmarks (bounded waits, always
stopped)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent  # the checkout: prefect.yaml, flows/


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(
    command: list[str],
    url: str,
    env: dict[str, str] | None = None,
    timeout: float = 180,
    log: Path | None = None,
) -> Iterator[subprocess.Popen]:
    """Run ``command`` in its own process group until ``url`` answers 200; stop it on exit."""
    environment = (
        os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"} | (env or {})
    )
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(
        command, env=environment, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{command[0]} exited with {process.returncode}"
                    + (f"; see {log}" if log else "")
                )
            try:
                if requests.get(url, timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer within {timeout} s")
            time.sleep(0.5)
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if log:
            out.close()


def model_server(
    model_uri: str, port: int, tracking_uri: str, log: Path | None = None, workers: int = 1
):  # noqa: ANN201
    command = [
        str(BIN / "mlflow"),
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "--workers",
        str(workers),
    ]
    return running(
        command, f"http://127.0.0.1:{port}/ping", env={"MLFLOW_TRACKING_URI": tracking_uri}, log=log
    )
