"""``osteo serve``: `mlflow models serve` on whichever version a registry alias points at.

The scoring server loads one model at start. A promotion or a rollback moves the ``production``
alias, which that server never sees, and before the first promotion ``models:/NAME@production``
does not resolve, so a server started on it fails (and a container restarts it in a loop). This
supervisor resolves the alias itself: while it points nowhere it waits (no server, no restart
loop); when it points at a version it runs the scoring server on that exact version; when it
moves, it stops that server and starts one on the new version. The choice: a restart, not a hot
swap, so for the few seconds a model takes to load, requests are refused and clients retry;
the served model and the alias never disagree for longer than one poll."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from mlflow.pyfunc.scoring_server import SERVING_MODEL_CONFIG

from osteo_pipeline.config import Settings
from osteo_pipeline.io.registry import Registry
from osteo_pipeline.serving import served_as
from osteo_pipeline.steps.registry import open_registry

log = logging.getLogger(__name__)


@dataclass
class Served:
    version: str | None
    process: subprocess.Popen | None


def scoring_server(registry: Registry, version: str, settings: Settings) -> subprocess.Popen:
    """`mlflow models serve` on exactly ``version``, told which registered version it serves
    (MLflow's ``SERVING_MODEL_CONFIG`` reaches the model's ``load_context``), so every answer's
    ``model_version`` names it."""
    s = settings.serving
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        registry.uri(version),
        "--env-manager",
        "local",
        "-h",
        s.host,
        "-p",
        str(s.port),
        "--workers",
        str(s.workers),
    ]
    # MLflow starts `uvicorn` from PATH: the one installed beside this Python, venv activated
    # or not.
    env = os.environ | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        SERVING_MODEL_CONFIG: json.dumps(served_as(registry.name, version)),
    }
    return subprocess.Popen(command, env=env)


def _stop(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def follow_alias(settings: Settings, stop: threading.Event | None = None) -> None:
    """Serve the version the alias points at until ``stop`` is set (or SIGTERM/SIGINT)."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
    registry = open_registry(settings)
    alias = settings.serving.alias
    served = Served(None, None)
    waiting_logged = False
    try:
        while not stop.is_set():
            try:
                version = registry.aliases().get(alias)
            except Exception as exc:  # noqa: BLE001 - a tracking server that blips must not stop serving
                log.warning(
                    "cannot read the registry (%s); still serving version %s", exc, served.version
                )
                version = served.version
            if version != served.version:
                _stop(served.process)
                served = Served(
                    version, scoring_server(registry, version, settings) if version else None
                )
                if version:
                    log.info(
                        "%s -> version %s: scoring server on %s:%d",
                        alias,
                        version,
                        settings.serving.host,
                        settings.serving.port,
                    )
                else:
                    log.info("%s points nowhere now: server stopped", alias)
            elif version is None and not waiting_logged:
                log.info(
                    "waiting for a version with alias %r of %s (checking every %.0f s)",
                    alias,
                    registry.name,
                    settings.serving.poll_s,
                )
                waiting_logged = True
            if served.process is not None and served.process.poll() is not None:
                log.warning(
                    "scoring server for version %s exited with %s: starting it again",
                    served.version,
                    served.process.returncode,
                )
                time.sleep(min(settings.serving.poll_s, 5))
                served = Served(served.version, scoring_server(registry, served.version, settings))
            stop.wait(settings.serving.poll_s)
    finally:
        _stop(served.process)
