"""PostgreSQL (Debian's server), an S3 endpoint (moto_server) and `mlflow server`, all on
127.0.0.1, started and always stopped by the team-mode integration test."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.servers import BIN, free_port, running


def pg_bin() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(versions[-1]).parent if versions else None


def _as_postgres(command: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root: run its binaries as the `postgres` system user.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextmanager
def postgres() -> Iterator[str]:
    """A throw-away cluster; yields a postgresql:// URI for database `mlflow`."""
    binaries = pg_bin()
    if binaries is None:
        raise RuntimeError("PostgreSQL server binaries not found (apt-get install postgresql)")
    # Its own folder under /tmp: pytest's tmp_path sits below a root-only (0700) directory the
    # `postgres` user cannot enter.
    workdir = Path(tempfile.mkdtemp(prefix="osteo-pg-"))
    data = workdir / "pgdata"
    socket_dir = workdir / "pgsock"
    for folder in (data, socket_dir):
        folder.mkdir(parents=True)
        if os.geteuid() == 0:
            shutil.chown(folder, "postgres", "postgres")
    if os.geteuid() == 0:
        os.chmod(workdir, 0o755)
    port = free_port()
    subprocess.run(
        _as_postgres(
            [
                str(binaries / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ]
        ),
        check=True,
        capture_output=True,
    )
    options = f"-h 127.0.0.1 -p {port} -k {socket_dir} -c fsync=off"
    subprocess.run(
        _as_postgres(
            [
                str(binaries / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(data / "server.log"),
                "-w",
                "start",
            ]
        ),
        check=True,
        capture_output=True,
    )
    try:
        subprocess.run(
            _as_postgres(
                [
                    str(binaries / "createdb"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-U",
                    "postgres",
                    "mlflow",
                ]
            ),
            check=True,
            capture_output=True,
        )
        yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(
            _as_postgres([str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def s3_endpoint(workdir: Path) -> Iterator[str]:
    port = free_port()
    with running(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        f"http://127.0.0.1:{port}/moto-api/",
        log=workdir / "moto.log",
        timeout=60,
    ):
        yield f"http://127.0.0.1:{port}"


@contextmanager
def mlflow_server(
    workdir: Path, backend: str, artifacts: str, env: dict[str, str]
) -> Iterator[str]:
    port = free_port()
    command = [
        str(BIN / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        backend,
        "--artifacts-destination",
        artifacts,
        "--workers",
        "1",
    ]
    with running(
        command,
        f"http://127.0.0.1:{port}/health",
        env=env,
        log=workdir / "mlflow-server.log",
        timeout=180,
    ):
        time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
