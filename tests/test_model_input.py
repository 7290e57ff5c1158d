"""The typed model input: what model.json declares, read once, one default for the fit policy."""

from __future__ import annotations

import json

import pytest

from cvpipe.data import load_cifar10
from cvpipe.errors import ArtifactError
from cvpipe.images import DEFAULT_FIT
from cvpipe.models import ClassicPipeline, ModelInput, load_model
from tests import synthetic

META = {"input_size": [32, 32], "channels": 3, "fit": "pad", "features": {"name": "hog"}}


def test_declared_input_is_read_whole():
    taken = ModelInput.from_metadata(META)
    assert (taken.size, taken.channels, taken.fit, taken.shape) == ((32, 32), 3, "pad", (32, 32, 3))
    assert taken.features.name == "hog" and taken.extractor is not None
    assert taken.metadata() == {"input_size": [32, 32], "channels": 3, "fit": "pad"}
    cnn = ModelInput.from_metadata({**META, "features": None})
    assert cnn.features is None and cnn.extractor is None


def test_a_model_without_a_fit_policy_reads_the_one_it_was_written_with():
    legacy = {k: v for k, v in META.items() if k != "fit"}
    assert ModelInput.from_metadata(legacy).fit == DEFAULT_FIT == "crop"


@pytest.mark.parametrize("field, value, says", [
    ("input_size", None, "input_size"),
    ("input_size", [32], "input_size"),
    ("input_size", [0, 32], "input_size"),
    ("input_size", [32, 99999], "input_size"),
    ("input_size", [32.0, 32], "input_size"),
    ("channels", 2, "channels"),
    ("channels", True, "channels"),
    ("fit", "zoom", "fit"),
    ("features", {"name": "nope"}, "feature set"),
    ("features", {"name": "patches"}, "fitted extractor is missing"),
])
def test_a_bad_declaration_is_refused_by_name(field, value, says):
    with pytest.raises(ArtifactError, match=says):
        ModelInput.from_metadata({**META, field: value})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("input")
    synthetic.write_image_folder(root / "src", n_train=12, n_test=3)
    ds = load_cifar10(root / "src", root / "data", val_fraction=0.25)
    pipeline = ClassicPipeline.from_table("t", {"features": {"name": "color"},
                                                "classifier": {"type": "linear-svm"}})
    pipeline.train(ds, root / "model", progress=False)
    return root / "model"


def test_the_loader_builds_the_input_once_from_the_models_own_parts(trained):
    model = load_model(trained)
    written = json.loads((trained / "model.json").read_text())
    assert written["fit"] == DEFAULT_FIT  # a dataset at its own size: the default, written out
    assert model.input.metadata() == {k: written[k] for k in ("input_size", "channels", "fit")}
    # the features the classic model parsed and built, not a second copy
    assert model.input.features is model.features and model.input.extractor is model.extractor


def test_a_tampered_declaration_fails_the_load_naming_the_model(trained, tmp_path):
    import shutil

    from cvpipe.storage import sha256_file

    copy = tmp_path / "m"
    shutil.copytree(trained, copy)
    meta = json.loads((copy / "model.json").read_text())
    meta["channels"] = 4  # model.json hashes the other files, not itself
    (copy / "model.json").write_text(json.dumps(meta))
    assert all(sha256_file(copy / f) == d for f, d in meta["files"].items())
    with pytest.raises(ArtifactError, match=r"m: model.json: channels"):
        load_model(copy)


@pytest.mark.parametrize(("field", "value", "says"), [
    ("files", ["classifier.skops"], "files must map each file name to its sha256"),
    ("classes", "abc", "classes must be a list of distinct class names"),
    ("classes", ["cat"] * 10, "classes must be a list of distinct class names"),
    ("classes", ["a", "b", "c"], "lists 3 classes, its classifier scores"),
    ("format_version", "2", "format_version must be a whole number"),
])
def test_an_edited_record_of_the_model_is_refused_naming_what(trained, tmp_path, field, value, says):
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(trained, copy)
    meta = json.loads((copy / "model.json").read_text())
    meta[field] = value
    (copy / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=says):
        load_model(copy)
