"""Training checkpoints as safetensors + JSON (never pickles), written atomically.

A checkpoint folder holds::

    last.json                  the commit point: training state, optimiser hyperparameters,
                               which tensor files belong to it and their sha256
    last-<epoch>.safetensors   model (incl. batch-norm statistics), optimiser buffers, RNG states
    best-<epoch>.safetensors   model of the best epoch on validation
    history.json               per-epoch loss and accuracy curves (a copy, for plotting)

Tensor files carry the epoch in their name and are written (:func:`cvpipe.storage.atomic_write`)
before ``last.json`` is replaced, so an interruption at any point leaves either the old
or the new checkpoint complete; files no longer referenced are removed afterwards.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from cvpipe.errors import CvpipeError
from cvpipe.storage import atomic_write, write_json

FORMAT = "cvpipe-cnn-checkpoint"
VERSION = 1


class CheckpointError(CvpipeError):
    """A checkpoint is unreadable, incomplete or from other settings."""


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> str:
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(cpu, str(tmp)))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _load_tensors(directory: Path, entry: Any) -> dict[str, torch.Tensor]:
    """The tensors of a file ``last.json`` lists as ``[name, sha256]``: a plain name in the
    checkpoint's folder (no other path is read) whose bytes match the hash."""
    name, digest = entry if isinstance(entry, list) and len(entry) == 2 else (None, None)
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
        raise CheckpointError(f"{directory / 'last.json'}: lists {entry!r}, not a file of its own "
                              f"folder; delete {directory} to start afresh")
    path = directory / name
    if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
        raise CheckpointError(f"{path}: missing or does not match last.json; delete {path.parent} "
                              "to start afresh")
    return load_file(str(path))


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as plain CPU tensors."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}


def save_checkpoint(directory: Path, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any], best: dict[str, torch.Tensor] | None = None) -> None:
    """Write the checkpoint after ``epoch``; ``best``: new best weights, if this epoch improved.

    ``state`` is JSON-serialisable training state (epoch, history, schedule, ...).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    previous = _read_index(directory)
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    extra: dict[str, dict[str, Any]] = {}
    for idx, param_state in opt["state"].items():
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{idx}/{key}"] = value
            else:
                extra.setdefault(str(idx), {})[key] = value
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng/cuda"] = torch.cuda.get_rng_state()

    files = {}
    last_name = f"last-{epoch:04d}.safetensors"
    files["last"] = (last_name, _save_tensors(directory / last_name, tensors))
    if best is not None:
        best_name = f"best-{epoch:04d}.safetensors"
        files["best"] = (best_name, _save_tensors(directory / best_name, best))
    elif previous and "best" in previous["files"]:
        files["best"] = previous["files"]["best"]
    index = {
        "format": FORMAT, "version": VERSION, "epoch": epoch, "files": files, "state": state,
        "optimizer": {"param_groups": opt["param_groups"], "state": extra},
    }
    write_json(directory / "last.json", index)
    write_json(directory / "history.json", state.get("history", []))
    keep = {name for name, _ in files.values()}
    for stale in directory.glob("*.safetensors"):
        if stale.name not in keep:
            stale.unlink(missing_ok=True)


def _read_index(directory: Path) -> dict[str, Any] | None:
    path = Path(directory) / "last.json"
    if not path.is_file():
        return None
    try:
        index = json.loads(path.read_text())
    except ValueError as exc:
        raise CheckpointError(f"{path}: unreadable ({exc}); delete {directory} to start afresh") from exc
    if (not isinstance(index, dict) or index.get("format") != FORMAT
            or not isinstance(index.get("version", 0), int) or index.get("version", 0) > VERSION):
        raise CheckpointError(f"{path}: not a cvpipe CNN checkpoint of a known version; "
                              f"delete {directory} to start afresh")
    return index


def load_checkpoint(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer
                    ) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None] | None:
    """Restore model, optimiser and RNG states in place; return (state, best weights).

    None when ``directory`` holds no checkpoint.
    """
    directory = Path(directory)
    index = _read_index(directory)
    if index is None:
        return None
    try:
        return _restore(directory, index, model, optimizer)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:  # a record edited or cut
        raise CheckpointError(f"{directory / 'last.json'}: incomplete ({type(exc).__name__}: {exc}); "
                              f"delete {directory} to start afresh") from exc


def _restore(directory: Path, index: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer
             ) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    tensors = _load_tensors(directory, index["files"]["last"])
    model.load_state_dict({k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")})
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, idx, name = key.split("/", 2)
            opt_state.setdefault(int(idx), {})[name] = value
    for idx, values in index["optimizer"]["state"].items():
        opt_state.setdefault(int(idx), {}).update(values)
    optimizer.load_state_dict({"state": opt_state, "param_groups": index["optimizer"]["param_groups"]})
    torch.set_rng_state(tensors["rng/torch"])
    if "rng/cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng/cuda"])
    best = None
    if "best" in index["files"]:
        best = _load_tensors(directory, index["files"]["best"])
    return index["state"], best


def clear_checkpoints(directory: Path) -> None:
    """Remove a checkpoint folder (a fresh run does not mix with an old one)."""
    shutil.rmtree(directory, ignore_errors=True)
