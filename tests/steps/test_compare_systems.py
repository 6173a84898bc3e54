"""``osteo compare``'s systems behind one registry (``core.compare_systems``): the config and the
report accept exactly its keys, its names and descriptions load without TensorFlow, each built-in
entry plans systems that follow the ``System`` protocol, and a system registered here (a class and
an entry, nothing else) runs through ``compare()`` end to end."""

import subprocess
import sys

import numpy as np
import pytest

from osteo_pipeline.config import ConfigError, Settings, cli_overrides, load_settings
from osteo_pipeline.core.compare_systems import SYSTEMS, System, SystemDescription
from osteo_pipeline.core.model import WeightsUnavailableError
from osteo_pipeline.steps.compare.systems import Setup, SystemBase, plan


def test_the_config_accepts_every_registered_system_and_runs_them_all_by_default():
    assert Settings().compare.systems == list(SYSTEMS)
    chosen = load_settings(
        overrides=cli_overrides([f"compare.systems=[{', '.join(reversed(SYSTEMS))}]"]), environ={}
    )
    assert chosen.compare.systems == list(reversed(SYSTEMS))


def test_an_unknown_system_is_refused_by_the_config_naming_it_and_the_choices():
    with pytest.raises(ConfigError) as refused:
        load_settings(overrides=cli_overrides(["compare.systems=[cnn3, resnet99]"]), environ={})
    message = str(refused.value)
    assert "compare" in message and "unknown compare systems ['resnet99']" in message
    assert all(name in message for name in SYSTEMS)  # the choices


def test_the_report_refuses_a_system_the_registry_does_not_know(train_settings):
    """The report describes systems from the registry: a name it lacks is an error, not a row
    or footnote silently left out."""
    from types import SimpleNamespace

    import pandas as pd

    from osteo_pipeline.core.compare_report import markdown_report

    data = SimpleNamespace(
        frame=pd.DataFrame({"label": ["normal", "osteoporosis"]}), excluded=[], identity="0" * 16
    )
    unknown = train_settings.model_copy(
        update={"compare": train_settings.compare.model_copy(update={"systems": ["resnet99"]})}
    )
    with pytest.raises(ValueError, match=r"unknown compare systems \['resnet99'\]"):
        markdown_report([], data, [], unknown, "osteo compare", 1.0)


def test_the_registry_and_the_config_load_without_tensorflow():
    code = (
        "import sys\n"
        "from osteo_pipeline.core.compare_systems import SYSTEMS\n"
        "from osteo_pipeline.config import Settings\n"
        "assert Settings().compare.systems == list(SYSTEMS)\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))\n"
        "print(loaded)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout


@pytest.mark.parametrize(
    ("name", "labels"),
    [
        ("cnn3", ["cnn3@32", "cnn3@64"]),  # one per compare.sizes
        ("vgg16-frozen", ["vgg16-frozen@32", "vgg16-frozen@64"]),
        ("resnet50-tl", ["resnet50-tl@32 knees", "resnet50-tl@64 knees"]),  # model.roi
        ("resnet50-probe", ["resnet50-probe@32", "resnet50-probe@64"]),
        ("texture-probe", ["texture-probe"]),  # size-free: one row
        ("metadata-probe", ["metadata-probe"]),
    ],
)
def test_each_registered_system_plans_protocol_systems_one_per_size(train_settings, name, labels):
    settings = train_settings.model_copy(
        update={
            "compare": train_settings.compare.model_copy(update={"sizes": [32, 64]}),
            "model": train_settings.model.model_copy(update={"roi": "knees"}),
        }
    )
    systems = plan(name, Setup(None, settings, jit=False))  # planning reads no data
    assert [system.label for system in systems] == labels
    assert all(isinstance(system, System) and system.name == name for system in systems)
    assert all(system.description is SYSTEMS[name] for system in systems)
    assert [system.size for system in systems] == ([None] if SYSTEMS[name].size_free else [32, 64])


def test_a_class_that_does_not_follow_the_protocol_is_refused(monkeypatch, train_settings):
    monkeypatch.setitem(
        SYSTEMS, "broken", SystemDescription("no protocol", "probe", f"{__name__}:NotASystem")
    )
    with pytest.raises(TypeError, match="compare system 'broken'.*is not a System"):
        plan("broken", Setup(None, train_settings, jit=False))


class NotASystem:
    @classmethod
    def plan(cls, name, setup):
        return [object()]


# A system registered by a test: one class and one registry entry -------------------------------

EVENTS: list[tuple[str, str]] = []


class ToySystem(SystemBase):
    """Predicts each image's label perfectly: a toy that checks its pixels were decoded for it
    and fits nothing."""

    def prepare(self):
        assert (self.size, self.roi) in self.setup.data.pixels  # compare() decoded its pixels
        EVENTS.append(("prepare", self.label))

    def fold_predictions(self, fold):
        EVENTS.append(("fold", fold.name))
        labels = self.setup.data.labels
        return {"": (np.eye(2)[labels[fold.val]], labels[fold.val], np.eye(2)[labels[fold.test]])}

    def close(self):
        EVENTS.append(("close", self.label))
        return {"toy_closed": 1.0}


class MissingWeights(SystemBase):
    def prepare(self):
        raise WeightsUnavailableError("toy weights file not found: /nowhere.h5")

    def fold_predictions(self, fold):
        raise AssertionError("a system whose prepare failed runs no fold")

    def close(self):
        EVENTS.append(("close", self.label))
        return {}


def test_a_registered_system_runs_through_compare_end_to_end(
    synth_dir, train_settings, tmp_path, monkeypatch
):
    """Registered here, not in the package: ``compare()`` plans it, decodes its pixels, runs
    ``prepare`` once, ``fold_predictions`` on every fold and ``close``; the report describes it
    from its entry (footnote, family) and its weights error becomes an 'unavailable' row."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from osteo_pipeline.steps.compare import compare

    monkeypatch.setitem(
        SYSTEMS,
        "toy",
        SystemDescription("a toy registered by a test", "scratch", f"{__name__}:ToySystem"),
    )
    monkeypatch.setitem(
        SYSTEMS,
        "toy-missing",
        SystemDescription("a toy without weights", "probe", f"{__name__}:MissingWeights", True),
    )
    EVENTS.clear()
    compare_settings = train_settings.compare.model_validate(
        train_settings.compare.model_dump()
        | {"systems": ["toy", "toy-missing"], "folds": 3, "repeats": 1, "sizes": [32]}
    )  # validated: the config accepts what the registry holds now
    settings = train_settings.model_copy(update={"compare": compare_settings})

    result = compare(synth_dir(per_class=8), settings, out_dir=tmp_path / "cmp")

    assert EVENTS == [
        ("prepare", "toy@32"),
        ("fold", "r0f0"),
        ("fold", "r0f1"),
        ("fold", "r0f2"),
        ("close", "toy@32"),
        ("close", "toy-missing"),
    ]
    toy, missing = result.rows
    assert (toy["system"], toy["name"], toy["size"], toy["available"]) == (
        "toy@32",
        "toy",
        32,
        True,
    )
    assert toy["note"] == "a toy registered by a test" and toy["seen"] is None
    assert toy["roc_auc"]["mean"] == pytest.approx(1.0)  # scored from its own predictions
    assert [f["fold"] for f in result.folds] == ["r0f0", "r0f1", "r0f2"]
    assert not missing["available"] and "toy weights file not found" in missing["note"]
    assert "scratch 1" in result.markdown  # its family, from the registry entry
    assert "- `toy`: a toy registered by a test" in result.markdown
    assert "| toy@32 |" in result.markdown and "| toy-missing | unavailable" in result.markdown

    mlflow.set_tracking_uri(settings.tracking.uri)
    client = MlflowClient()
    experiment = mlflow.get_experiment_by_name(settings.tracking.experiment)
    runs = client.search_runs(
        [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{result.parent_run_id}'"
    )
    run = next(r for r in runs if r.info.run_name == "toy@32")
    assert run.data.params["description"] == "a toy registered by a test"
    assert run.data.metrics["toy_closed"] == 1.0  # what close() gave, logged on its run
