"""The ``models/<name>/`` artifact: ``model.json`` plus data-only files, verified on load.

Layout::

    models/<name>/
        model.json        metadata (below) and the sha256 of every other file
        <files>           data-only: skops (scikit-learn), safetensors (torch), OpenCV YAML, PNG

``model.json`` holds at least: ``format`` ("cvpipe-model"), ``format_version``, ``name``,
``pipeline`` (the pipeline's name), ``kind`` (which pipeline class reads the files), ``card``
(what the model is, for people: family, features, classifier, description), ``classes``,
``input_size`` ([H, W]), ``channels`` (3 RGB, 1 gray), ``fit`` (how another size is
reached: crop, pad or stretch, :func:`cvpipe.images.resize`), ``features`` (the feature
set, or null), ``metrics`` (per split),
``selection`` (which split chose which hyperparameters), ``dataset`` (source, checksum),
``versions``, ``fit_seconds``, ``created`` and ``files`` ({name: sha256}); optionally
``test_scores`` (the file of the model's scores of the test split, recorded when it was
trained: :func:`write_test_scores`).

An artifact is built in a temporary folder and swapped in whole, so a crash never leaves a
half-written model; a file whose hash differs from ``model.json`` (tampered or truncated) is
refused before anything is deserialised.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from cvpipe import __version__
from cvpipe.errors import ArtifactError
from cvpipe.models.inputs import ModelInput
from cvpipe.storage import holds, json_dumps, replace_dir, safe_name, sha256_file

FORMAT = "cvpipe-model"
FORMAT_VERSION = 2
CARD_KEYS = ("family", "features", "classifier", "description")
TEST_SCORES = "test_scores.safetensors"


class Predictor(Protocol):
    """What every loaded model offers; images are uint8 (N, H, W, C) of ``input.shape``."""

    metadata: dict[str, Any]
    input: ModelInput  # set by :func:`cvpipe.models.load_model`

    def predict(self, images: np.ndarray) -> np.ndarray: ...

    def scores(self, images: np.ndarray) -> tuple[np.ndarray, str]:
        """(N, n_classes) scores and their kind: "probability" or "decision"."""
        ...


def library_versions() -> dict[str, str]:
    """Versions of the libraries a model's behaviour depends on."""
    versions = {"cvpipe": __version__, "python": platform.python_version()}
    for name in ("numpy", "sklearn", "skimage", "cv2", "torch", "skops", "safetensors"):
        try:
            versions[name] = importlib.import_module(name).__version__
        except Exception:  # noqa: BLE001 - an absent optional library is just not listed
            continue
    return versions


def write_artifact(model_dir: str | os.PathLike[str], metadata: dict[str, Any],
                   write_files: Callable[[Path], dict[str, Any] | None]) -> dict[str, Any]:
    """Create ``model_dir`` whole: ``write_files(tmp)`` writes the data files there.

    ``write_files`` may return more metadata (what the files are) to merge in. ``metadata``
    must include ``kind``, ``classes`` and ``card``; ``format``, ``name``, ``created``,
    ``versions`` and ``files`` are filled in here.

    Returns
    -------
    dict
        The ``model.json`` written.
    """
    for key in ("kind", "classes", "card"):
        if key not in metadata:
            raise ValueError(f"model metadata needs {key!r}")
    model_dir = Path(model_dir)
    safe_name(model_dir.name, "model name")
    with replace_dir(model_dir, owned=holds("model.json")) as tmp:
        more = write_files(tmp)
        more = more if isinstance(more, dict) else {}
        written = [p for p in sorted(tmp.iterdir()) if p.is_file()]
        for path in written:  # safetensors writes 0600; the service may read as another user
            path.chmod(0o644)
        files = {p.name: sha256_file(p) for p in written}
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": model_dir.name,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": library_versions(),
            **metadata,
            **more,
            "files": files,
        }
        (tmp / "model.json").write_text(json_dumps(meta))
    return json.loads(json_dumps(meta))


def _upgrade_v1(meta: dict[str, Any]) -> dict[str, Any]:
    """A format-1 ``model.json`` (no ``card``) in today's form."""
    classifier = meta.get("classifier")
    if isinstance(classifier, dict):
        card = {"family": "classic", "features": (meta.get("features") or {}).get("name"),
                "classifier": classifier.get("type"), "description": ""}
    else:
        card = {"family": meta.get("kind"), "features": None, "classifier": meta.get("kind"),
                "description": ""}
    return {**meta, "card": card, "pipeline": meta.get("pipeline") or meta.get("name")}


def read_metadata(model_dir: str | os.PathLike[str], verify: bool = True) -> dict[str, Any]:
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
    version = meta.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise ArtifactError(f"{meta_path}: format_version must be a whole number, not {version!r}")
    if version > FORMAT_VERSION:
        raise ArtifactError(f"{meta_path}: written by a newer cvpipe (format {version})")
    if version < 2:
        meta = _upgrade_v1(meta)
    files = meta.get("files") or {}
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise ArtifactError(f"{meta_path}: files must map each file name to its sha256")
    classes = meta.get("classes")
    if (not isinstance(classes, list) or not classes or len(set(map(str, classes))) != len(classes)
            or not all(isinstance(c, str) and c for c in classes)):
        raise ArtifactError(f"{meta_path}: classes must be a list of distinct class names")
    if verify:
        for name, digest in files.items():
            path = model_dir / name
            if Path(name).name != name or not path.is_file():
                raise ArtifactError(f"{model_dir}: file {name} is missing")
            if sha256_file(path) != digest:
                raise ArtifactError(
                    f"{path}: checksum differs from model.json (tampered with or truncated); "
                    "retrain or restore the model"
                )
    return meta


def model_card(meta: dict[str, Any]) -> dict[str, Any]:
    """What a model is, for people and reports: family, features, classifier, description."""
    card = meta.get("card") if isinstance(meta.get("card"), dict) else {}
    return {key: card.get(key) for key in CARD_KEYS}


def write_test_scores(directory: Path, scores: np.ndarray) -> dict[str, Any]:
    """Save a model's (n_test, n_classes) scores of the test split in ``directory`` (an artifact
    being written) as ``test_scores.safetensors``; returns the metadata that names the file.

    A report reads them back (:func:`read_test_scores`) rather than scoring the split again,
    after checking that the loaded model gives the same scores on the first test images.
    """
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    save_file({"scores": scores}, str(Path(directory) / TEST_SCORES))
    return {"test_scores": {"file": TEST_SCORES, "shape": list(scores.shape)}}


def read_test_scores(model_dir: str | os.PathLike[str], meta: dict[str, Any],
                     shape: tuple[int, int]) -> np.ndarray | None:
    """The test scores a model recorded when trained (float32 ``shape``), or None where it
    recorded none or scores of another shape (another test split)."""
    recorded = meta.get("test_scores")
    if not isinstance(recorded, dict) or recorded.get("shape") != list(shape):
        return None
    path = listed_file(model_dir, meta, recorded.get("file"))
    try:
        with safe_open(str(path), "np") as f:
            if list(f.keys()) != ["scores"] or tuple(f.get_slice("scores").get_shape()) != shape:
                raise ArtifactError(f"{path}: not the {shape} test scores model.json declares")
            return f.get_tensor("scores").astype(np.float32, copy=False)
    except (OSError, SafetensorError) as exc:
        raise ArtifactError(f"{path}: unreadable ({exc})") from exc


def listed_file(model_dir: str | os.PathLike[str], meta: dict[str, Any], name: Any) -> Path:
    """The path of a file ``model.json`` lists (and so hashes); any other name is refused.

    Loaders open model files only through this, so a description cannot point them at a file
    outside the model folder, or at one whose content was never verified.
    """
    files = meta.get("files") or {}
    if not isinstance(name, str) or Path(name).name != name or name not in files:
        raise ArtifactError(f"{model_dir}: model.json names {name!r}, which is not one of its "
                            "listed and hashed files")
    return Path(model_dir) / name
