"""A trained CNN's weights as ``weights.safetensors``, and the network behind the predictor
interface.

The model's description (``architecture``: the :class:`~cvpipe.cnn.net.NetConfig`,
``normalisation``: per-channel mean and std of the training split on the 0-255 scale,
``tta``) is stored by the artifact layer (:mod:`cvpipe.models`), whose hash check runs
before :func:`load_predictor` reads the weights.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from cvpipe.cnn.infer import logits
from cvpipe.cnn.net import NetConfig, build_net
from cvpipe.device import resolve_device
from cvpipe.errors import ArtifactError

log = logging.getLogger(__name__)

WEIGHTS = "weights.safetensors"


class CNNPredictor:
    """A trained CNN behind the :class:`cvpipe.models.Predictor` interface.

    Parameters
    ----------
    model : torch.nn.Module
        A :mod:`cvpipe.cnn.net` network.
    metadata : dict
        The model's ``model.json``.
    device : str
        Where to run: "cpu" (default), "cuda" or "auto".
    batch_size : int
        Images per forward pass.
    tta : {0, 1, 2} or bool, optional
        Test-time augmentation level (see :func:`cvpipe.cnn.infer.logits`); default: as the
        model was scored.
    """

    def __init__(self, model: nn.Module, metadata: dict[str, Any], device: str = "cpu",
                 batch_size: int = 512, tta: int | bool | None = None) -> None:
        self.metadata = metadata
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        norm = metadata["normalisation"]
        self.mean = torch.tensor(norm["mean"], dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(norm["std"], dtype=torch.float32).view(1, -1, 1, 1)
        self.batch_size = batch_size
        self.tta = int(metadata.get("tta", False)) if tta is None else tta
        self.input_size = tuple(metadata.get("input_size", (32, 32)))
        self.channels = int(metadata.get("channels", 3))

    def to(self, device: str) -> CNNPredictor:
        """Run on another device ("cpu", "cuda", "auto"); returns self."""
        self.device = resolve_device(device)
        self.model.to(self.device)
        return self

    def _check(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        want = (*self.input_size, self.channels)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != want:
            raise ValueError(f"expected uint8 (N, {', '.join(map(str, want))}) images, got "
                             f"{images.dtype} {images.shape}")
        return images

    def logits(self, images: np.ndarray) -> np.ndarray:
        """float32 (N, n_classes) logits."""
        # channels-last (NHWC) inputs, as training feeds them: twice the images per second on a CPU
        z = logits(self.model, self._check(images), self.mean, self.std, batch_size=self.batch_size,
                   tta=self.tta, channels_last=True)
        return z.cpu().numpy()

    def scores(self, images: np.ndarray) -> tuple[np.ndarray, str]:
        """(N, n_classes) class probabilities (softmax) and the kind "probability"."""
        z = torch.from_numpy(self.logits(images))
        return torch.softmax(z, dim=1).numpy(), "probability"

    def predict(self, images: np.ndarray) -> np.ndarray:
        """int64 (N,) class indices into ``metadata["classes"]``."""
        return self.logits(images).argmax(1).astype(np.int64)


def save_weights(model: nn.Module, directory: Path) -> None:
    """Write the model's state (weights and batch-norm statistics) as ``weights.safetensors``."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(Path(directory) / WEIGHTS), metadata={"format": "cvpipe-cnn"})


def load_predictor(weights: str | Path, meta: dict[str, Any], device: str = "cpu") -> CNNPredictor:
    """The network that ``meta`` describes with the ``weights`` file, as a predictor."""
    weights = Path(weights)
    try:
        cfg = NetConfig.from_dict(meta["architecture"])
        wanted = cfg.parameter_shapes()  # bounded config, shapes from a net of no memory
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{weights.parent}: model.json has no valid CNN architecture ({exc})") from exc
    try:
        with safe_open(str(weights), "pt") as f:  # the header only
            declared = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except (OSError, SafetensorError) as exc:
        raise ArtifactError(f"{weights}: unreadable ({exc})") from exc
    if cfg.n_classes != len(meta.get("classes") or ()):
        raise ArtifactError(f"{weights.parent}: model.json lists {len(meta.get('classes') or ())} "
                            f"classes, its network scores {cfg.n_classes}")
    if declared != wanted:
        differ = sorted(set(declared) ^ set(wanted)) or sorted(
            k for k in wanted if declared[k] != wanted[k])
        raise ArtifactError(f"{weights}: the weights do not fit model.json's architecture "
                            f"({len(differ)} tensors differ, e.g. {differ[0]}); nothing was built")
    model = build_net(cfg)
    try:
        state = load_file(str(weights))
        model.load_state_dict(state, strict=True)
    except (OSError, SafetensorError, RuntimeError) as exc:
        raise ArtifactError(f"{weights}: unreadable or does not fit the architecture ({exc})") from exc
    return CNNPredictor(model, meta, device=device)
