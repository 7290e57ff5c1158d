"""The comparison's declared pipelines and profiles (``cvpipe/compare.toml``)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvpipe.errors import ConfigError

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "compare.toml"


@dataclass
class Profile:
    """How much data and time one comparison run uses."""

    name: str
    limit_per_class: int | None = None
    model_prefix: str = ""
    cnn: dict[str, Any] = field(default_factory=dict)


@dataclass
class CompareConfig:
    pipelines: list[str]
    profiles: dict[str, Profile]
    seed: int = 0
    val_fraction: float = 0.1
    source_text: str = ""
    path: Path = DEFAULT_CONFIG

    def profile(self, name: str) -> Profile:
        if name not in self.profiles:
            raise ConfigError(f"unknown profile {name!r}; choose from {', '.join(self.profiles)}")
        return self.profiles[name]


def load_compare_config(path: str | Path | None = None) -> CompareConfig:
    """Read a comparison TOML file (the built-in one by default)."""
    path = Path(path) if path else DEFAULT_CONFIG
    try:
        text = path.read_text()
        data = tomllib.loads(text)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read comparison config {path}: {exc}") from exc
    section = data.get("compare", {})
    pipelines = section.get("pipelines")
    if not isinstance(pipelines, list) or not pipelines or not all(isinstance(p, str) for p in pipelines):
        raise ConfigError(f"{path}: [compare] needs a non-empty list 'pipelines'")
    profiles = {}
    for name, p in data.get("profiles", {}).items():
        unknown = set(p) - {"limit_per_class", "model_prefix", "cnn"}
        if unknown:
            raise ConfigError(f"{path}: profile {name!r} has unknown keys {sorted(unknown)}")
        profiles[name] = Profile(name, p.get("limit_per_class"), p.get("model_prefix", ""), p.get("cnn", {}))
    if not profiles:
        raise ConfigError(f"{path}: no [profiles.<name>] tables")
    return CompareConfig(pipelines, profiles, int(section.get("seed", 0)),
                         float(section.get("val_fraction", 0.1)), text, path)
