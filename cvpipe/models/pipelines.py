"""The pipeline registry and model loading: every kind of pipeline, behind one interface.

Built-in pipelines are declared in ``cvpipe/pipelines.toml``; a user's TOML file of
``[pipelines.<name>]`` tables adds pipelines or replaces them by name. A table's ``kind``
("classic" unless given) picks the class that reads it.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from cvpipe.classifiers.fitted import ClassicModel
from cvpipe.errors import ArtifactError, ConfigError
from cvpipe.models.artifact import Predictor, read_metadata
from cvpipe.models.base import Pipeline
from cvpipe.models.classic import ClassicPipeline
from cvpipe.models.cnn import CNNPipeline
from cvpipe.models.inputs import ModelInput
from cvpipe.storage import safe_name

BUILTIN_CONFIG = Path(__file__).resolve().parent.parent / "pipelines.toml"
#: kind -> the Pipeline class that trains and loads models of that kind
KINDS: dict[str, type[Pipeline]] = {"classic": ClassicPipeline, "cnn": CNNPipeline}


def register_kind(kind: str, pipeline_class: type[Pipeline]) -> None:
    """Make models of ``kind`` loadable (and tables of that kind declarable) by ``pipeline_class``."""
    KINDS[kind] = pipeline_class


def load_pipeline_config(path: str | os.PathLike[str]) -> dict[str, Pipeline]:
    """Pipelines declared in a TOML file's ``[pipelines.<name>]`` tables."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read pipeline config {path}: {exc}") from exc
    tables = data.get("pipelines")
    if not isinstance(tables, dict) or not tables:
        raise ConfigError(f"{path}: no [pipelines.<name>] tables")
    pipelines = {}
    for name, table in tables.items():
        safe_name(name, f"{path}: pipeline name")
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: pipelines.{name} must be a table")
        table = dict(table)
        kind = table.pop("kind", "classic")
        if kind not in KINDS:
            raise ConfigError(f"{path}: pipeline {name!r} has kind {kind!r}; known kinds: "
                              f"{', '.join(KINDS)}")
        pipelines[name] = KINDS[kind].from_table(name, table)
    return pipelines


def all_pipelines(config: str | os.PathLike[str] | None = None) -> dict[str, Pipeline]:
    """Built-in pipelines, overridden and extended by those of ``config``."""
    pipelines = load_pipeline_config(BUILTIN_CONFIG)
    if config:
        pipelines.update(load_pipeline_config(config))
    return pipelines


def get_pipeline(name: str, config: str | os.PathLike[str] | None = None) -> Pipeline:
    """The pipeline called ``name``; :class:`ConfigError` listing the known ones otherwise."""
    pipelines = all_pipelines(config)
    if name not in pipelines:
        raise ConfigError(f"unknown pipeline {name!r}; known: {', '.join(sorted(pipelines))} "
                          "('cvpipe models pipelines' describes them)")
    return pipelines[name]


def list_pipelines(config: str | os.PathLike[str] | None = None) -> list[tuple[str, str]]:
    """(name, description) of every pipeline, sorted by name."""
    return [(n, p.description) for n, p in sorted(all_pipelines(config).items())]


def load_model(model_dir: str | os.PathLike[str]) -> Predictor:
    """Load any saved cvpipe model, verified, without unpickling anything; its ``input``
    (:class:`~cvpipe.models.inputs.ModelInput`) says what it takes."""
    model_dir = Path(model_dir)
    meta = read_metadata(model_dir)
    kind: Any = meta.get("kind")
    if kind not in KINDS:
        raise ArtifactError(f"{model_dir}: unknown model kind {kind!r}")
    predictor = KINDS[kind].load(model_dir, meta)
    classic = isinstance(predictor, ClassicModel)  # its features are parsed and built already
    try:
        predictor.input = ModelInput.from_metadata(
            meta, predictor.features if classic else None, predictor.extractor if classic else None)
    except ArtifactError as exc:
        raise ArtifactError(f"{model_dir}: {exc}") from None
    return predictor
