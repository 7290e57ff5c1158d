"""The CNN baseline as a :class:`Pipeline`: its run options are :class:`CNNConfig` fields."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cvpipe.cnn.config import CNNConfig
from cvpipe.cnn.persist import WEIGHTS, CNNPredictor, load_predictor, save_weights
from cvpipe.cnn.train import fit_cnn, plot_curves
from cvpipe.data.dataset import Dataset
from cvpipe.errors import ConfigError
from cvpipe.featurestore.dataset import StoreSettings
from cvpipe.models.artifact import listed_file, write_artifact, write_test_scores
from cvpipe.models.base import DataShape, Pipeline

CURVES = "curves.png"


def checkpoint_dir_for(model_dir: str | Path) -> Path:
    """Where the checkpoints of ``models/<name>`` live: ``models/.checkpoints/<name>``."""
    model_dir = Path(model_dir)
    return model_dir.parent / ".checkpoints" / model_dir.name


class CNNPipeline(Pipeline):
    """The CNN trained on the images themselves (the airbench or the residual net, see :mod:`cvpipe.cnn`).

    A ``pipelines.toml`` table ``{kind = "cnn", description = ..., options = {...}}`` declares
    one; ``options`` and :meth:`configure` take any :class:`~cvpipe.cnn.config.CNNConfig`
    field (``time_budget``, ``epochs``, ``optimizer``, ``seed``, ...).
    """

    kind = "cnn"

    def __init__(self, name: str, config: CNNConfig | None = None, description: str = "",
                 options: dict[str, Any] | None = None) -> None:
        super().__init__(name, description)
        self.config = config or CNNConfig()
        # The settings as chosen (a ``recipe`` and what overrides it); run options merge into
        # these, so a later recipe fills in every setting nobody chose, whichever came first.
        defaults = CNNConfig().to_dict()
        chosen = options if options is not None else {
            k: v for k, v in self.config.to_dict().items() if v != defaults[k]}
        self.options = {str(k).replace("-", "_"): v for k, v in chosen.items()}  # TOML may use dashes

    @classmethod
    def from_table(cls, name: str, table: Mapping[str, Any]) -> CNNPipeline:
        unknown = set(table) - {"description", "options"}
        if unknown:
            raise ConfigError(f"pipeline {name!r} (cnn): unknown keys {sorted(unknown)}; "
                              "known: description, options")
        options = dict(table.get("options") or {})
        try:
            config = CNNConfig.from_dict(options)
        except ConfigError as exc:
            raise ConfigError(f"pipeline {name!r}: {exc}") from None
        return cls(name, config, str(table.get("description", "")), options)

    @property
    def seed(self) -> int:
        return self.config.seed

    def option_names(self) -> tuple[str, ...]:
        return (*self.config.to_dict(), "recipe")

    def _with_options(self, options: dict[str, Any]) -> CNNPipeline:
        merged = {**self.options, **options}  # configure() passes underscore keys
        return CNNPipeline(self.name, CNNConfig.from_dict(merged), self.description, merged)

    def definition(self) -> dict[str, Any]:
        return {"kind": self.kind, "config": self.config.to_dict()}

    def card(self) -> dict[str, Any]:
        return {"family": "cnn", "features": None, "classifier": "cnn", "description": self.description}

    def check(self, shape: DataShape) -> None:
        h, w, *rest = shape.image_shape
        if (rest or [1])[0] not in (1, 3):
            raise ConfigError(f"pipeline {self.name!r}: the CNN takes RGB or gray images, not "
                              f"images of shape {shape.image_shape}")
        smallest = 9 if self.config.arch == "airbench" else 8  # its 2x2 whitening drops a pixel
        if min(h, w) < smallest:
            raise ConfigError(f"pipeline {self.name!r}: {h}x{w} images are too small for the CNN "
                              f"(it halves them three times; at least {smallest}x{smallest})")
        shape.require_splits(self.name)

    def train(self, dataset: Dataset, model_dir: Path, *, progress: bool = True,
              store: StoreSettings | None = None) -> dict[str, Any]:
        result, description = fit_cnn(dataset, self.config, checkpoint_dir=checkpoint_dir_for(model_dir),
                                      progress=progress)
        metadata = {**self.common_metadata(dataset), **description, "features": None}

        def write_files(tmp: Path) -> dict[str, Any]:
            save_weights(result.model, tmp)
            plot_curves(result.history, tmp / CURVES)
            return write_test_scores(tmp, result.test_scores)

        return write_artifact(model_dir, metadata, write_files)

    @classmethod
    def load(cls, model_dir: Path, meta: dict[str, Any]) -> CNNPredictor:
        return load_predictor(listed_file(model_dir, meta, WEIGHTS), meta)
