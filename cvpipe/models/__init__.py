"""Trained models: the pipelines that make them, their on-disk artifact, loading any of them.

* :class:`Pipeline` -- what every trainable model offers (``configure``, ``check``, ``train``,
  ``card``, ``load``); :class:`ClassicPipeline` and :class:`CNNPipeline` implement it;
* :func:`get_pipeline`, :func:`all_pipelines` -- the declared pipelines (``pipelines.toml``);
* :func:`load_model` -- any saved model folder, verified, as a predictor, with its
  :class:`ModelInput` (size, channels, fit policy, features);
* :func:`read_metadata`, :func:`write_artifact` -- the artifact format itself.
"""

from cvpipe.errors import ArtifactError
from cvpipe.models.artifact import (
    Predictor,
    library_versions,
    model_card,
    read_metadata,
    read_test_scores,
    write_artifact,
    write_test_scores,
)
from cvpipe.models.base import DataShape, Pipeline
from cvpipe.models.classic import ClassicPipeline
from cvpipe.models.cnn import CNNPipeline, checkpoint_dir_for
from cvpipe.models.inputs import ModelInput
from cvpipe.models.pipelines import (
    KINDS,
    all_pipelines,
    get_pipeline,
    list_pipelines,
    load_model,
    load_pipeline_config,
    register_kind,
)

__all__ = [
    "KINDS",
    "ArtifactError",
    "CNNPipeline",
    "ClassicPipeline",
    "DataShape",
    "ModelInput",
    "Pipeline",
    "Predictor",
    "all_pipelines",
    "checkpoint_dir_for",
    "get_pipeline",
    "library_versions",
    "list_pipelines",
    "load_model",
    "load_pipeline_config",
    "model_card",
    "read_metadata",
    "read_test_scores",
    "register_kind",
    "write_artifact",
    "write_test_scores",
]
