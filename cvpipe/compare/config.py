"""The comparison's declaration (``cvpipe/compare.toml``): pipelines, profiles, run options.

A comparison file holds::

    [compare]
    seed = 0                  # validation split and every pipeline's seed
    val_fraction = 0.1
    pipelines = ["hog-mlp", "cnn", ...]

    [profiles.quick]          # how much data and time a run uses
    limit_per_class = 300
    model_prefix = "quick-"
    options = { cnn = { time_budget = 120 } }   # run options per pipeline name
    add_pipelines = ["my-svm"]                   # run these too, after [compare]'s

    [pipelines.my-svm]        # optional: pipelines of its own (override built-ins by name)
    ...

:meth:`CompareConfig.plan` resolves every pipeline with its run options for a profile, and
:meth:`CompareConfig.check` builds them all for the data they will get, before any training.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvpipe.errors import ConfigError
from cvpipe.models import DataShape, Pipeline, all_pipelines, load_pipeline_config
from cvpipe.storage import safe_name

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "compare.toml"
PROFILE_KEYS = ("limit_per_class", "model_prefix", "options", "add_pipelines")


@dataclass
class Profile:
    """How much data and time one comparison run uses."""

    name: str
    limit_per_class: int | None = None
    model_prefix: str = ""
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # pipeline name -> options
    add_pipelines: list[str] = field(default_factory=list)  # run after [compare]'s pipelines

    def with_overrides(self, limit_per_class: int | None = None,
                       options: dict[str, dict[str, Any]] | None = None) -> Profile:
        """A copy with another image limit and more run options (merged per pipeline)."""
        merged = {k: dict(v) for k, v in self.options.items()}
        for name, opts in (options or {}).items():
            merged.setdefault(name, {}).update(opts)
        return Profile(self.name, limit_per_class or self.limit_per_class, self.model_prefix, merged,
                       list(self.add_pipelines))


@dataclass
class CompareConfig:
    pipelines: list[str]
    profiles: dict[str, Profile]
    seed: int = 0
    val_fraction: float = 0.1
    source_text: str = ""
    path: Path = DEFAULT_CONFIG
    declared: dict[str, Pipeline] = field(default_factory=dict)  # pipelines the file declares

    def profile(self, name: str) -> Profile:
        if name not in self.profiles:
            raise ConfigError(f"unknown profile {name!r}; choose from {', '.join(self.profiles)}")
        return self.profiles[name]

    def plan(self, profile: Profile, names: list[str] | None = None) -> list[Pipeline]:
        """The pipelines of a run (the comparison's and the profile's own, or ``names``),
        configured for ``profile``."""
        known = {**all_pipelines(), **self.declared}
        whole_run = not names
        names = names or [*self.pipelines, *profile.add_pipelines]
        missing = [n for n in names if n not in known]
        if missing:
            raise ConfigError(f"{self.path}: unknown pipeline {', '.join(map(repr, missing))}; known: "
                              f"{', '.join(sorted(known))}")
        extra = sorted(set(profile.options) - set(names))
        if extra and whole_run:
            raise ConfigError(f"{self.path}: profile {profile.name!r} sets options of "
                              f"{', '.join(extra)}, which the comparison does not run")
        return [known[n].configure({"seed": self.seed, **profile.options.get(n, {})}) for n in names]

    def check(self, profile: Profile, shape: DataShape, names: list[str] | None = None
              ) -> list[Pipeline]:
        """:meth:`plan`, then every pipeline built for data of ``shape``; the first problem
        is a :class:`ConfigError` naming its pipeline."""
        pipelines = self.plan(profile, names)
        for p in pipelines:
            p.check(shape)
        return pipelines


def load_compare_config(path: str | os.PathLike[str] | None = None) -> CompareConfig:
    """Read a comparison TOML file (the built-in one by default)."""
    path = Path(path) if path else DEFAULT_CONFIG
    try:
        text = path.read_text()
        data = tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read comparison config {path}: {exc}") from exc
    section = data.get("compare", {})
    pipelines = section.get("pipelines")
    if not isinstance(pipelines, list) or not pipelines or not all(isinstance(p, str) for p in pipelines):
        raise ConfigError(f"{path}: [compare] needs a non-empty list 'pipelines'")
    if len(set(pipelines)) != len(pipelines):
        raise ConfigError(f"{path}: [compare] pipelines lists a pipeline twice")
    profiles = {}
    for name, p in data.get("profiles", {}).items():
        unknown = set(p) - set(PROFILE_KEYS)
        if unknown:
            raise ConfigError(f"{path}: profile {name!r} has unknown keys {sorted(unknown)}; known: "
                              f"{', '.join(PROFILE_KEYS)}")
        limit = p.get("limit_per_class")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 2):
            raise ConfigError(f"{path}: profile {name!r}: limit_per_class must be an integer >= 2")
        options = p.get("options", {})
        if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
            raise ConfigError(f"{path}: profile {name!r}: options must be a table of tables "
                              "(pipeline name -> options)")
        prefix = str(p.get("model_prefix", ""))
        if prefix:
            safe_name(prefix, f"{path}: profile {name!r} model_prefix")
        added = p.get("add_pipelines", [])
        if not isinstance(added, list) or not all(isinstance(n, str) for n in added):
            raise ConfigError(f"{path}: profile {name!r}: add_pipelines must be a list of "
                              "pipeline names")
        listed = [*pipelines, *added]
        twice = sorted({n for n in added if listed.count(n) > 1})
        if twice:
            raise ConfigError(f"{path}: profile {name!r}: add_pipelines lists {', '.join(twice)} "
                              "twice or already in [compare] pipelines")
        profiles[name] = Profile(name, limit, prefix, options, added)
    if not profiles:
        raise ConfigError(f"{path}: no [profiles.<name>] tables")
    declared = load_pipeline_config(path) if "pipelines" in data else {}
    try:
        seed = int(section.get("seed", 0))
        val_fraction = float(section.get("val_fraction", 0.1))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: [compare] seed / val_fraction: {exc}") from None
    if not 0 < val_fraction < 1:
        raise ConfigError(f"{path}: [compare] val_fraction must be between 0 and 1")
    return CompareConfig(pipelines, profiles, seed, val_fraction, text, path, declared)
