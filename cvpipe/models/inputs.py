"""What a trained model takes: one typed record of its input, built once when it is loaded.

``model.json`` records the input as ``input_size`` ([H, W]), ``channels`` (3 RGB, 1 gray),
``fit`` (how an image of another size reaches ``input_size``: :data:`cvpipe.images.FIT_POLICIES`)
and ``features`` (the hand-made feature set, null for a CNN). :func:`cvpipe.models.load_model`
reads them into a :class:`ModelInput`, checked, and the API, ``cvpipe predict``,
``cvpipe extract --model`` and the model registry all use that object: none of them reads the
fields, or supplies a default for them, again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cvpipe.errors import ArtifactError, ConfigError
from cvpipe.features import FeatureSpec, fit_to_shape
from cvpipe.images import DEFAULT_FIT, FIT_POLICIES

#: The largest image side a model may declare.
MAX_SIDE = 4096


@dataclass(frozen=True)
class ModelInput:
    """How an image reaches a model and what describes it there.

    Attributes
    ----------
    size : tuple of int
        (H, W) every image is brought to.
    channels : int
        3 (RGB) or 1 (gray): what the model was trained on; images are converted to it.
    fit : str
        How an image of another size reaches ``size``: "crop", "pad" or "stretch"
        (:func:`cvpipe.images.resize`).
    features : FeatureSpec or None
        The hand-made features, parsed; None for a model that learns its own (the CNN).
    extractor : transformer or None
        The fitted extractor of those features (for features learnt from images, the one
        restored from the model's files), or None without features.
    """

    size: tuple[int, int]
    channels: int
    fit: str
    features: FeatureSpec | None = None
    extractor: Any = None

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any], features: FeatureSpec | None = None,
                      extractor: Any = None) -> ModelInput:
        """The input ``model.json`` declares, checked (:class:`ArtifactError` naming the
        field). ``features``: the already-parsed feature set, else parsed here."""
        size = meta.get("input_size")
        if (not isinstance(size, list | tuple) or len(size) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_SIDE
                           for v in size)):
            raise ArtifactError(f"model.json: input_size must be [H, W] with sides from 1 to "
                                f"{MAX_SIDE}, not {size!r}")
        channels = meta.get("channels", 3)
        if channels not in (1, 3) or isinstance(channels, bool):
            raise ArtifactError(f"model.json: channels must be 1 or 3, not {channels!r}")
        fit = meta.get("fit", DEFAULT_FIT)
        if fit not in FIT_POLICIES:
            raise ArtifactError(f"model.json: fit must be one of {', '.join(FIT_POLICIES)}, "
                                f"not {fit!r}")
        if features is None and meta.get("features"):
            try:
                features = FeatureSpec.parse(meta["features"])
            except ConfigError as exc:
                raise ArtifactError(f"model.json: invalid feature set ({exc})") from None
        if features is not None and extractor is None:
            if features.stateful:
                raise ArtifactError(f"model.json: features {features.name!r} learn from images; "
                                    "their fitted extractor is missing")
            extractor = features.build()
        taken = cls((int(size[0]), int(size[1])), int(channels), str(fit), features, extractor)
        if features is not None and not features.stateful:
            # Fitted to the one image shape the model takes: its parameters are checked here,
            # once, not on every request, and a wrongly shaped batch is refused.
            fit_to_shape(extractor, taken.shape)
        return taken

    def metadata(self) -> dict[str, Any]:
        """The ``model.json`` fields of the image conversion."""
        return {"input_size": list(self.size), "channels": self.channels, "fit": self.fit}

    @property
    def shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image as the model takes it."""
        return (*self.size, self.channels)
