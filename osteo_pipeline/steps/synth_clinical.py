"""Write a synthetic clinical corpus: a PACS-like export of DICOM files (every encoding of
``io.dicom_files``, and some PNG) in folders named by patient ID, and the manifest the
bone-density system would give with it: one to four images per patient (both knees, a follow-up
visit), T-scores, sex and age, some of them left for the DICOM tags to fill in."""

from __future__ import annotations

import csv
from collections import Counter
from datetime import date, timedelta
from pathlib import Path

import numpy as np

from osteo_pipeline.core.clinical import NORMAL, OSTEOPENIA, OSTEOPOROSIS
from osteo_pipeline.core.synth import generate
from osteo_pipeline.errors import OsteoError
from osteo_pipeline.io.dicom_files import VARIANTS, write_dicom
from osteo_pipeline.steps.synth import save_image

MANIFEST_NAME = "manifest.csv"
#: T-scores drawn for each WHO class (inside its cut-offs, away from their edges).
T_SCORES = {NORMAL: (-0.8, 1.5), OSTEOPENIA: (-2.3, -1.2), OSTEOPOROSIS: (-4.0, -2.7)}
#: A patient's images in the order they are taken: both knees, then both at a follow-up.
VISITS = (("L", 0), ("R", 0), ("L", 1), ("R", 1))
COLUMNS = ("path", "patient_id", "t_score", "label", "side", "view", "study_date", "age", "sex")
COLUMNS += ("label_source", "dxa_date")


def patient_id(seed: int, number: int) -> str:
    """A PACS-style patient ID; distinctive, so a search of the stores can look for it."""
    return f"PAT{seed % 100:02d}X{number:05d}"


def write_clinical_dataset(
    out_dir: str | Path, classes: list[str], patients_per_class: int, size: int, seed: int
) -> dict[str, int]:
    """``OUT_DIR/<patient id>/<study date>/<side>_<n>.dcm|png`` and ``OUT_DIR/manifest.csv``;
    deterministic for ``seed``. Classes named as WHO's get T-scores, any other a ``label``.
    Returns images per class."""
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise OsteoError(f"cannot write a clinical corpus into {root}: it is a file, not a folder")
    rng = np.random.default_rng([seed, 30])
    plan = [
        (label, int(rng.integers(1, len(VISITS) + 1)))
        for label in classes
        for _ in range(patients_per_class)
    ]
    wanted = Counter()
    for label, n_images in plan:
        wanted[label] += n_images
    pool = {label: [] for label in classes}
    for item in generate(classes, max(wanted.values()), size, seed):
        pool[item.label].append(item)
    rows, counts, written = [], Counter(), 0
    for number, (label, n_images) in enumerate(plan):
        pid = patient_id(seed, number)
        sex, age = str(rng.choice(["F", "M"])), int(rng.integers(45, 90))
        first_visit = date(2024, 1, 1) + timedelta(days=int(rng.integers(0, 365)))
        for side, visit in VISITS[:n_images]:
            study = first_visit + timedelta(days=365 * visit)
            gray = np.asarray(pool[label].pop().image.convert("L"))
            variant = VARIANTS[written % len(VARIANTS)] if written % 5 != 4 else "png"
            name = f"{pid}/{study:%Y%m%d}/{side}_{visit + 1}.{'png' if variant == 'png' else 'dcm'}"
            if variant == "png":
                save_image(_image(gray), root / name, "PNG")
            else:
                tags = {
                    "PatientID": pid,
                    "PatientSex": sex,
                    "PatientAge": f"{age + visit:03d}Y",
                    "ImageLaterality": side,
                    "ViewPosition": "AP",
                    "StudyDate": f"{study:%Y%m%d}",
                }
                write_dicom(root / name, gray, variant, tags, f"{seed}/{name}")
            low, high = T_SCORES.get(label, (0.0, 0.0))
            tags_fill = variant != "png" and written % 3 == 0  # sex and age from the tags
            rows.append(
                {
                    "path": name,
                    "patient_id": pid,
                    "t_score": f"{rng.uniform(low, high):.1f}" if label in T_SCORES else "",
                    "label": "" if label in T_SCORES else label,
                    "side": side,
                    "view": "AP",
                    "study_date": f"{study:%Y-%m-%d}",
                    "age": "" if tags_fill else str(age + visit),
                    "sex": "" if tags_fill else sex,
                    "label_source": "DXA",
                    "dxa_date": f"{study + timedelta(days=int(rng.integers(0, 30))):%Y-%m-%d}",
                }
            )
            counts[label] += 1
            written += 1
    with open(root / MANIFEST_NAME, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    return dict(counts)


def _image(gray: np.ndarray):  # noqa: ANN202 - PIL.Image
    from PIL import Image

    return Image.fromarray(gray, mode="L")
