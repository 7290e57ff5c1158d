"""Trained models: the shared on-disk artifact format and loading any saved model."""

from cvpipe.models.artifact import (
    ArtifactError,
    Predictor,
    library_versions,
    load_model,
    read_metadata,
    register_kind,
    write_artifact,
)

__all__ = [
    "ArtifactError",
    "Predictor",
    "library_versions",
    "load_model",
    "read_metadata",
    "register_kind",
    "write_artifact",
]
