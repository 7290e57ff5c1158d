"""The ``models/<name>/`` artifact: ``model.json`` plus data-only files, verified on load.

Layout::

    models/<name>/
        model.json        metadata (below) and the sha256 of every other file
        <files>           data-only: skops (scikit-learn), safetensors (torch), OpenCV YAML

``model.json`` holds at least: ``format`` ("cvpipe-model"), ``format_version``, ``name``,
``kind`` (which loader reads the files), ``classes``, ``input_size`` ([H, W]),
``features`` (feature configuration or null), ``metrics`` (per split), ``selection``
(which split chose which hyperparameters), ``dataset`` (source, checksum), ``versions``,
``fit_seconds``, ``created`` and ``files`` ({name: sha256}).

An artifact is written to a temporary folder and renamed into place, so a crash never
leaves a half-written model; a file whose hash differs from ``model.json`` (tampered or
truncated) is refused before anything is deserialised.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import platform
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cvpipe import __version__
from cvpipe.errors import CvpipeError

FORMAT = "cvpipe-model"
FORMAT_VERSION = 1

#: kind -> "module:function" loading a Predictor from (model_dir, metadata).
_LOADERS: dict[str, str] = {}


class ArtifactError(CvpipeError):
    """A model folder is missing, incomplete, tampered with or of an unknown kind."""


class Predictor(Protocol):
    """What every loaded model offers; images are uint8 (N, H, W, 3) RGB at ``input_size``."""

    metadata: dict[str, Any]

    def predict(self, images: np.ndarray) -> np.ndarray: ...

    def scores(self, images: np.ndarray) -> tuple[np.ndarray, str]:
        """(N, n_classes) scores and their kind: "probability" or "decision"."""
        ...


def register_kind(kind: str, loader: str) -> None:
    """Declare that artifacts of ``kind`` are read by ``loader`` ("module:function")."""
    _LOADERS[kind] = loader


def library_versions() -> dict[str, str]:
    """Versions of the libraries a model's behaviour depends on."""
    versions = {"cvpipe": __version__, "python": platform.python_version()}
    for name in ("numpy", "sklearn", "skimage", "cv2", "torch", "skops", "safetensors"):
        try:
            versions[name] = importlib.import_module(name).__version__
        except Exception:  # noqa: BLE001 - an absent optional library is just not listed
            continue
    return versions


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def write_artifact(
    model_dir: Path, metadata: dict[str, Any], write_files: Callable[[Path], None]
) -> Path:
    """Create ``model_dir`` atomically: ``write_files(tmp)`` writes the data files there.

    ``metadata`` must include ``kind`` and ``classes``; ``format``, ``created``, ``versions``
    and ``files`` are filled in here.
    """
    for key in ("kind", "classes"):
        if key not in metadata:
            raise ValueError(f"model metadata needs {key!r}")
    model_dir = Path(model_dir)
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = model_dir.with_name(f".tmp-{model_dir.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write_files(tmp)
        files = {p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": model_dir.name,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": library_versions(),
            **metadata,
            "files": files,
        }
        (tmp / "model.json").write_text(json.dumps(meta, indent=2, default=_json_default))
        old = model_dir.with_name(f".old-{model_dir.name}-{os.getpid()}")
        if model_dir.exists():
            os.replace(model_dir, old)
        os.replace(tmp, model_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return model_dir


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in model.json")


def read_metadata(model_dir: Path, verify: bool = True) -> dict[str, Any]:
    """``model.json`` of a model folder, after checking every listed file's sha256."""
    model_dir = Path(model_dir)
    meta_path = model_dir / "model.json"
    if not meta_path.is_file():
        raise ArtifactError(f"{model_dir}: not a cvpipe model (no model.json)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{meta_path}: unreadable or truncated ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ArtifactError(f"{meta_path}: not a cvpipe model description")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ArtifactError(f"{meta_path}: written by a newer cvpipe (format {meta['format_version']})")
    if verify:
        for name, digest in meta.get("files", {}).items():
            path = model_dir / name
            if Path(name).name != name or not path.is_file():
                raise ArtifactError(f"{model_dir}: file {name} is missing")
            if _sha256(path) != digest:
                raise ArtifactError(
                    f"{path}: checksum differs from model.json (tampered with or truncated); "
                    "retrain or restore the model"
                )
    return meta


def load_model(model_dir: str | os.PathLike[str]) -> Predictor:
    """Load any saved cvpipe model, verified, without unpickling anything."""
    model_dir = Path(model_dir)
    meta = read_metadata(model_dir)
    kind = meta.get("kind")
    _import_builtin_kinds()
    if kind not in _LOADERS:
        raise ArtifactError(f"{model_dir}: unknown model kind {kind!r}")
    module, func = _LOADERS[kind].split(":")
    return getattr(importlib.import_module(module), func)(model_dir, meta)


def _import_builtin_kinds() -> None:
    # Modules register their kinds on import; import the built-in ones lazily so that
    # loading a classic model does not import torch, and vice versa.
    for module in ("cvpipe.classifiers.persist", "cvpipe.cnn.persist"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # a real missing dependency, not an absent module
                raise
