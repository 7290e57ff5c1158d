"""Classic pipelines (hand-made features -> preprocessing -> classifier) as :class:`Pipeline`."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from cvpipe.classifiers.fitted import ClassicModel
from cvpipe.classifiers.persist import load_parts, save_parts
from cvpipe.classifiers.row_stats import LOCAL
from cvpipe.classifiers.specs import CLASSIFIERS, ClassicSpec
from cvpipe.classifiers.training import fit_classic
from cvpipe.data.dataset import Dataset
from cvpipe.errors import ArtifactError, ConfigError
from cvpipe.features import FeatureSpec, extractor_state, restore_extractor
from cvpipe.featurestore.dataset import StoreSettings
from cvpipe.models.artifact import listed_file, write_artifact
from cvpipe.models.base import DataShape, Pipeline

FEATURES_FILE = "features.safetensors"


class ClassicPipeline(Pipeline):
    """A :class:`~cvpipe.classifiers.specs.ClassicSpec` trained and saved as a model.

    Run options: ``seed`` (the classifier's ``random_state``, where it has one; default 0),
    ``refit`` (refit the chosen candidate on train + validation; default: the pipeline
    table's ``refit``, else true) and
    ``feature_params`` ({component name: {parameter: value}}, merged into the feature set's
    declared parameters, e.g. a cheaper dictionary for a quick run).
    """

    kind = "classic"

    def __init__(self, spec: ClassicSpec, *, seed: int = 0, refit: bool = True) -> None:
        super().__init__(spec.name, spec.description)
        self.spec = spec
        self.seed = seed
        self.refit = refit

    @classmethod
    def from_table(cls, name: str, table: Mapping[str, Any]) -> ClassicPipeline:
        """The spec's keys, and ``refit`` (the pipeline's default for the run option)."""
        table = dict(table)
        defaults = {"refit": table.pop("refit")} if "refit" in table else {}
        return cls(ClassicSpec.from_dict(name, table)).configure(defaults)  # checked there

    def option_names(self) -> tuple[str, ...]:
        return (*self.COMMON_OPTIONS, "refit", "feature_params")

    def _with_options(self, options: dict[str, Any]) -> ClassicPipeline:
        seed, refit = options.get("seed", self.seed), options.get("refit", self.refit)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, not {seed!r}")
        if not isinstance(refit, bool):
            raise ConfigError(f"refit must be true or false, not {refit!r}")
        spec = self.spec
        if "feature_params" in options:
            spec = dataclasses.replace(spec, features=spec.features.with_params(options["feature_params"]))
        return ClassicPipeline(spec, seed=seed, refit=refit)

    def seeded_spec(self) -> ClassicSpec:
        """The spec with ``seed`` as the classifier's ``random_state`` unless the spec sets one."""
        cls, fixed = CLASSIFIERS[self.spec.classifier["type"]]
        params = self.spec.classifier.get("params") or {}
        if "random_state" not in cls._get_param_names() or "random_state" in params:
            return self.spec
        spec = copy.deepcopy(self.spec)
        spec.classifier.setdefault("params", {})["random_state"] = self.seed
        return spec

    def definition(self) -> dict[str, Any]:
        return {"kind": self.kind, "spec": self.seeded_spec().to_dict(), "refit": self.refit}

    def card(self) -> dict[str, Any]:
        return {"family": "classic", "features": self.spec.features.name,
                "classifier": self.spec.classifier["type"], "description": self.description}

    def check(self, shape: DataShape) -> None:
        shape.require_splits(self.name)
        factor = len(self.spec.training_variants())
        self.spec.check(shape.n_train * factor, shape.image_shape)
        if self.refit:
            self.spec.check((shape.n_train + shape.n_val) * factor, shape.image_shape)

    def train(self, dataset: Dataset, model_dir: Path, *, progress: bool = True,
              store: StoreSettings | None = None) -> dict[str, Any]:
        store = store or StoreSettings(progress=progress)
        fit = fit_classic(dataset, self.seeded_spec(), refit=self.refit, progress=progress,
                          store=store, runner=store.runner() or LOCAL)
        metadata = {
            **self.common_metadata(dataset),
            "spec": self.spec.to_dict(),
            "features": self.spec.features.to_dict(),
            "feature_dim": fit.feature_dim,
            "metrics": fit.metrics,
            "selection": fit.selection,
            "hyperparameters": {**fit.chosen.classifier.get("params", {}),
                                "preprocess": fit.chosen.preprocess},
            "fit_seconds": round(fit.fit_seconds, 3),
            "feature_fit_seconds": round(fit.feature_fit_seconds, 3),
            "train_seconds": round(fit.train_seconds, 3),
            "selection_seconds": round(fit.selection_seconds, 3),
            "extraction_images_per_second": round(fit.extraction_images_per_second, 1),
            "feature_store": fit.features,
            "history": fit.history,
        }
        image_shape = list(dataset.images("train").shape[1:])

        def write_files(tmp: Path) -> dict[str, Any]:
            described = save_parts(tmp, fit.model.preprocess, fit.model.classifier,
                                   self.spec.classifier["type"])
            state = extractor_state(fit.model.extractor, self.spec.features)
            if state:  # what the features learnt (the patch dictionary), as data
                save_file(state, str(tmp / FEATURES_FILE))
                described["features_state"] = {"file": FEATURES_FILE, "image_shape": image_shape}
            return described

        return write_artifact(model_dir, metadata, write_files)

    @classmethod
    def load(cls, model_dir: Path, meta: dict[str, Any]) -> ClassicModel:
        try:
            features = FeatureSpec.parse(meta["features"])
        except (KeyError, ConfigError) as exc:
            raise ArtifactError(f"{model_dir}: model.json has no valid feature set ({exc})") from exc
        preprocess, classifier = load_parts(meta, lambda name: listed_file(model_dir, meta, name))
        scored = len(getattr(classifier, "classes_", meta["classes"]))
        if scored != len(meta["classes"]):
            raise ArtifactError(f"{model_dir}: model.json lists {len(meta['classes'])} classes, "
                                f"its classifier scores {scored}")
        extractor = None
        if features.stateful:
            stored = meta.get("features_state") or {}
            try:
                state = load_file(str(listed_file(model_dir, meta, stored.get("file"))))
                extractor = restore_extractor(features.build(), features, state,
                                              tuple(stored["image_shape"]))
            except (KeyError, TypeError, ValueError, OSError, SafetensorError) as exc:
                raise ArtifactError(f"{model_dir}: cannot restore the learned features ({exc})") from exc
        try:
            return ClassicModel(features, preprocess, classifier, meta, extractor=extractor,
                                test_time_shifts=(meta.get("spec") or {}).get("test_time_shifts", 0))
        except ConfigError as exc:
            raise ArtifactError(f"{model_dir}: model.json: {exc}") from exc
