import hashlib
import shutil

import keras
import pytest

from osteo_pipeline.core.model import WeightsUnavailableError
from osteo_pipeline.io.weights import (
    WeightsInstallError,
    install,
    keras_cache_file,
    resolve,
    weights_digest,
)


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    return tmp_path / "keras-home"


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """ResNet-50 no-top weights in Keras's HDF5 format, the one Keras's cache holds (a random
    init: what matters is that they load as ResNet-50)."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    path = tmp_path_factory.mktemp("built-elsewhere") / "resnet50-notop.h5"
    keras.utils.set_random_seed(3)
    with h5py.File(path, "w") as stream:
        legacy_h5_format.save_weights_to_hdf5_group(
            stream, keras.applications.ResNet50(include_top=False, weights=None)
        )
    keras.backend.clear_session()
    return path


def test_install_checks_the_hash_and_that_the_file_loads_then_imagenet_means_it(
    keras_home, weights_file, tmp_path
):
    sha = hashlib.sha256(weights_file.read_bytes()).hexdigest()
    with pytest.raises(WeightsInstallError, match=f"sha256 is {sha}, expected {'0' * 64}"):
        install(str(weights_file), "0" * 64)
    with pytest.raises(WeightsInstallError, match="not Keras's own ResNet-50 no-top file"):
        install(str(weights_file))
    not_weights = tmp_path / "page.h5"
    not_weights.write_text("<html>proxy error</html>")
    with pytest.raises(WeightsInstallError, match="does not load as ResNet-50 no-top weights"):
        install(str(not_weights), hashlib.sha256(not_weights.read_bytes()).hexdigest())
    with pytest.raises(WeightsInstallError, match="weights file not found"):
        install(str(tmp_path / "missing.h5"))
    assert not keras_cache_file().exists()  # nothing refused was left in Keras's cache

    assert (
        install(weights_file.as_uri(), sha)
        == keras_cache_file()
        == keras_home / "models" / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    )
    resolved = resolve("imagenet", allow_random_init_fallback=False)
    assert (
        resolved.path == keras_cache_file()
        and resolved.identity == f"sha256:{weights_digest(weights_file)}"
    )
    assert resolved.described == f"imagenet (weights sha256 {weights_digest(weights_file)[:12]})"


def test_a_backbone_is_named_by_its_weights_not_its_path(keras_home, weights_file, tmp_path):
    moved = tmp_path / "elsewhere" / "w.h5"
    moved.parent.mkdir()
    shutil.copyfile(weights_file, moved)
    assert resolve(str(moved), False).identity == resolve(str(weights_file), False).identity
    assert str(tmp_path) not in resolve(str(moved), False).described
    assert resolve("none", False).identity == "random-init"
    with pytest.raises(WeightsUnavailableError, match="weights file not found"):
        resolve(str(tmp_path / "nope.h5"), False)
