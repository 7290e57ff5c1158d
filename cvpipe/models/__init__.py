"""Trained models: the pipelines that make them, their on-disk artifact, loading any of them.

* :class:`Pipeline` -- what every trainable model offers (``configure``, ``check``, ``train``,
  ``card``, ``load``); :class:`ClassicPipeline` and :class:`CNNPipeline` implement it;
* :func:`get_pipeline`, :func:`all_pipelines` -- the declared pipelines (``pipelines.toml``);
* :func:`load_model` -- any saved model folder, verified, as a predictor, with its
  :class:`ModelInput` (size, channels, fit policy, features);
* :func:`read_metadata`, :func:`write_artifact` -- the artifact format itself.
"""

from __future__ import annotations

import lazy_loader

from cvpipe.errors import ArtifactError as ArtifactError  # re-exported

# The names below load their module on first use, so that importing one module of the
# package (e.g. `cvpipe --help` building its parsers) does not import every library.
__getattr__, __dir__, _lazy_names = lazy_loader.attach(__name__, submod_attrs={
    "artifact": ["Predictor", "library_versions", "model_card", "read_metadata", "read_test_scores",
                 "write_artifact", "write_test_scores"],
    "base": ["DataShape", "Pipeline"],
    "classic": ["ClassicPipeline"],
    "cnn": ["CNNPipeline", "checkpoint_dir_for"],
    "inputs": ["ModelInput"],
    "pipelines": ["KINDS", "all_pipelines", "get_pipeline", "list_pipelines", "load_model",
                  "load_pipeline_config", "register_kind"],
})
__all__ = sorted([*_lazy_names, "ArtifactError"])
