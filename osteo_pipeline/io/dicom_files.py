"""DICOM files beyond their pixels: the tags a clinical manifest may leave blank, and a gray
radiograph written in the encodings PACS exports use, each one decoding
(``core.preprocess.dicom_to_gray``) back to the same pixels: what the synthetic clinical corpus and
the decoder's tests are made of."""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: The encodings: 8-bit MONOCHROME2 and MONOCHROME1 (inverted) with a window, 12-bit stored
#: values with a rescale slope and intercept, and 12-bit values through a VOI LUT Sequence.
VARIANTS = ("mono2-8bit", "mono1-8bit", "12bit-rescaled", "voi-lut")
#: Where a DICOM file keeps what a row may leave blank (the first tag present wins).
TAGS = {
    "patient_id": ("PatientID",),
    "sex": ("PatientSex",),
    "age": ("PatientAge",),
    "side": ("ImageLaterality", "Laterality"),
    "view": ("ViewPosition",),
    "study_date": ("StudyDate", "AcquisitionDate"),
}
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage, for presentation


def dicom_dataset(gray: np.ndarray, variant: str, tags: dict[str, str], uid_seed: str):  # noqa: ANN201
    """A pydicom Dataset of ``gray`` (uint8 H x W) encoded as ``variant``, with ``tags``
    (PatientID, PatientSex, PatientAge, ImageLaterality, ViewPosition, StudyDate, ...)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    x = np.asarray(gray, dtype=np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[uid_seed])
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    for name, value in tags.items():
        setattr(ds, name, value)
    ds.Rows, ds.Columns = x.shape
    ds.SamplesPerPixel = 1
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = "MONOCHROME1" if variant == "mono1-8bit" else "MONOCHROME2"
    if variant in ("mono2-8bit", "mono1-8bit"):
        stored = (255 - x if variant == "mono1-8bit" else x).astype(np.uint8)
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.WindowCenter, ds.WindowWidth = 128, 256  # PS3.3 C.11.2.1.2: y = x / 255
    elif variant == "12bit-rescaled":
        stored = x * 16  # 0..4080
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.RescaleSlope, ds.RescaleIntercept = "0.5", "-100"  # modality value 8x - 100
        ds.WindowCenter, ds.WindowWidth = "920.5", 2041  # maps 8x - 100 back to x / 255
    elif variant == "voi-lut":
        stored = x * 4 + 1000
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        item = Dataset()
        entries = 1021  # inputs 1000..2020: x = (input - 1000) / 4
        item.add_new(0x00283002, "US", [entries, 1000, 16])  # LUT Descriptor
        item.add_new(0x00283006, "US", [round(i * 65535 / (entries - 1)) for i in range(entries)])
        ds.VOILUTSequence = Sequence([item])
    else:
        raise ValueError(f"unknown DICOM variant {variant!r}; one of {', '.join(VARIANTS)}")
    ds.PixelData = stored.astype(np.uint8 if ds.BitsAllocated == 8 else "<u2").tobytes()
    return ds


def write_dicom(
    path: Path, gray: np.ndarray, variant: str, tags: dict[str, str], uid_seed: str
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    dicom_dataset(gray, variant, tags, uid_seed).save_as(path, enforce_file_format=True)


def dicom_tags(file: Path) -> dict[str, str]:
    """The manifest columns a DICOM file's header can fill (blank when absent or unreadable);
    the header is read without its pixels and kept nowhere."""
    import pydicom

    try:
        header = pydicom.dcmread(file, stop_before_pixels=True)
    except Exception:  # unreadable: the image check reports it
        return {}
    found = {}
    for column, names in TAGS.items():
        value = next((str(header.get(n)) for n in names if header.get(n) not in (None, "")), "")
        found[column] = value
    return found
