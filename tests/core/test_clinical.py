import numpy as np
import pandas as pd
import pytest

from osteo_pipeline.core.clinical import (
    PatientOverlapError,
    group_strata,
    joint_groups,
    overlap_check,
    pseudonym,
    who_label,
)
from osteo_pipeline.core.exams import age_band, by_exam
from osteo_pipeline.core.metrics import bootstrap_ci


@pytest.mark.parametrize(
    ("t_score", "label"),
    [
        (1.2, "normal"),
        (-1.0, "normal"),
        (-1.01, "osteopenia"),
        (-2.49, "osteopenia"),
        (-2.5, "osteoporosis"),
        (-4.1, "osteoporosis"),
    ],
)
def test_who_cutoffs_at_their_boundaries(t_score, label):
    assert who_label(t_score) == label


def test_cutoffs_come_from_the_caller():
    assert who_label(-1.5, normal_min=-1.5, osteoporosis_max=-3.0) == "normal"
    assert who_label(-2.6, normal_min=-1.5, osteoporosis_max=-3.0) == "osteopenia"


def test_pseudonyms_are_keyed_and_stable():
    assert pseudonym(b"k", "PAT1") == pseudonym(b"k", " PAT1 ")
    assert pseudonym(b"k", "PAT1") != pseudonym(b"other", "PAT1")
    assert "PAT1" not in pseudonym(b"k", "PAT1")


def test_a_patient_and_a_copy_join_images_into_one_group():
    # rows 0, 1: one patient's two knees; row 2: a copy of row 1 filed under another patient;
    # row 3: someone else; rows 4, 5: no patient, copies of each other
    groups = joint_groups([0, 1, 1, 2, 3, 3], ["a", "a", "b", "c", None, None])
    assert groups[0] == groups[1] == groups[2]
    assert len({groups[0], groups[3], groups[4]}) == 3 and groups[4] == groups[5]


def test_strata_are_the_groups_most_severe_label():
    strata = group_strata(
        ["normal", "osteoporosis", "normal"], [0, 0, 1], ["normal", "osteopenia", "osteoporosis"]
    )
    assert list(strata) == ["osteoporosis", "osteoporosis", "normal"]


def test_overlap_check_fails_on_a_leaky_split_and_names_no_one():
    passed = overlap_check({"train": ["p1", "p2"], "test": ["p3"]}, "the split")
    assert passed["shared"] == 0 and passed["patients"] == 3
    with pytest.raises(PatientOverlapError, match="train and test share 1") as caught:
        overlap_check({"train": ["p1", "p2"], "val": ["p4"], "test": ["p2"]}, "the split")
    assert "p2" not in str(caught.value)


def test_bootstrap_resamples_whole_patients():
    # Two patients of 50 identical images each: resampling images would make the mean vary by a
    # few points; resampling patients can only give 0, 0.5 or 1.
    values = np.array([0.0] * 50 + [1.0] * 50)
    patients = np.array([0] * 50 + [1] * 50)
    seen = set()

    def mean(index):
        seen.add(round(float(values[index].mean()), 6))
        return {"mean": float(values[index].mean())}

    bootstrap_ci(100, mean, n_resamples=200, seed=0, groups=patients)
    assert seen <= {0.0, 0.5, 1.0}


def test_exams_average_their_images_and_take_the_worse_knee():
    frame = pd.DataFrame({"exam": ["e1", "e1", "e2"], "patient": ["p", "p", "q"]})
    proba = np.array([[0.2, 0.8], [0.4, 0.6], [0.9, 0.1]])
    exams, labels, mean = by_exam(frame, np.array([0, 1, 0]), proba)
    assert list(exams["exam"]) == ["e1", "e2"] and list(labels) == [1, 0]
    assert np.allclose(mean, [[0.3, 0.7], [0.9, 0.1]])


def test_age_bands():
    edges = [50, 65, 80]
    assert [age_band(a, edges) for a in (40, 50, 64.5, 65, 80, 91)] == [
        "<50",
        "50-64",
        "50-64",
        "65-79",
        ">=80",
        ">=80",
    ]
    assert age_band(float("nan"), edges) is None
