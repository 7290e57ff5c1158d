"""The pipeline registry: built-in pipelines (``pipelines.toml``) plus a user's config file."""

from __future__ import annotations

from pathlib import Path

from cvpipe.classifiers.specs import PipelineSpec, load_pipeline_config
from cvpipe.errors import ConfigError

BUILTIN_CONFIG = Path(__file__).with_name("pipelines.toml")
CNN = "cnn"


def all_pipelines(config: str | Path | None = None) -> dict[str, PipelineSpec]:
    """Built-in pipelines, overridden and extended by those of ``config``."""
    specs = load_pipeline_config(BUILTIN_CONFIG)
    if config:
        specs.update(load_pipeline_config(config))
    return specs


def get_pipeline(name: str, config: str | Path | None = None) -> PipelineSpec | str:
    """The spec called ``name``, or the string "cnn" for the CNN baseline."""
    if name == CNN:
        return CNN
    specs = all_pipelines(config)
    if name not in specs:
        raise ConfigError(f"unknown pipeline {name!r}; known: {', '.join(sorted(specs))}, {CNN}")
    return specs[name]


def list_pipelines(config: str | Path | None = None) -> list[tuple[str, str]]:
    rows = [(n, s.description) for n, s in sorted(all_pipelines(config).items())]
    return rows + [(CNN, "residual CNN baseline (PyTorch), see 'cvpipe train --pipeline cnn'")]
