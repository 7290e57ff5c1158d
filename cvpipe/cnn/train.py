"""Training the CNN: the whole recipe is :func:`train_cnn`; :func:`fit_cnn` runs it on a
dataset and scores it (the saved model is written by :mod:`cvpipe.models`).

Recipe (defaults; ``recipe = "airbench"`` selects the speed record's, see
:data:`cvpipe.cnn.config.RECIPES`): SGD with Nesterov momentum, weight decay on conv/linear weights, label
smoothing 0.2, one-cycle learning rate (linear warm-up over 20 %, linear decay to 0),
augmentation on the device (translate by 2 px with reflection, flip, optional cutout),
validation every epoch (no TTA), the best epoch's weights kept, early stopping, a checkpoint every
epoch. With a ``time_budget`` the schedule follows the clock (progress = share of the budget
spent), so the learning-rate decay ends with the budget however fast the machine turns out
to be; the speed of a few steps on a throw-away copy of the model, measured first, estimates
the epochs and the cost of validation. Without a budget a run is a pure function of its
settings and seed: resuming an interrupted run repeats it exactly on a CPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from cvpipe.cnn.checkpoint import (
    CheckpointError,
    clear_checkpoints,
    load_checkpoint,
    model_tensors,
    save_checkpoint,
)
from cvpipe.cnn.config import CNNConfig
from cvpipe.cnn.infer import logits, loss_and_accuracy
from cvpipe.cnn.run import Run, measure_speed, setup_run, sync
from cvpipe.cnn.schedule import (
    Lookahead,
    lookahead_decay,
    lr_factor,
    set_whiten_bias_rate,
)
from cvpipe.data.splits import stratified_split
from cvpipe.device import resolve_device
from cvpipe.errors import CvpipeError

log = logging.getLogger(__name__)

class TrainingError(CvpipeError):
    """Training cannot go on (the loss diverged)."""


@dataclass
class TrainResult:
    """A trained network (best epoch's weights) and how it was trained."""

    model: nn.Module
    config: CNNConfig  # resolved: no None defaults left
    device: torch.device
    mean: list[float]
    std: list[float]
    history: list[dict[str, float]]
    best_epoch: int
    total_steps: int  # steps taken
    steps_per_epoch: int
    stopped: str  # "completed" (steps or time budget used up) or "early_stopping"
    train_seconds: float
    plan: dict[str, Any] = field(default_factory=dict)
    # float32 (n_test, n_classes) softmax of the test split, as the saved model gives it: set
    # by fit_cnn, saved with the model so that a report need not score the split again
    test_scores: np.ndarray | None = None


@dataclass
class TrainState:
    """Where a run stands between epochs: with the weights, the optimiser and the RNGs, what a
    checkpoint holds (``last.json``'s ``state``, these fields as JSON) to resume the run."""

    signature: dict[str, Any]  # settings and data a resumed run must match
    plan: dict[str, Any]
    total_steps: int | None  # None: as many as the time budget allows
    epoch: int = 0
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_accuracy: float = -1.0
    plateau: dict[str, float] = field(default_factory=lambda: {"scale": 1.0, "best": math.inf, "bad": 0})
    stopped: str = "completed"  # or "early_stopping"
    train_seconds: float = 0.0
    finished: bool = False

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any], where: Path) -> TrainState:
        names = {f.name for f in fields(cls)}
        if not isinstance(state, dict) or set(state) != names:
            raise CheckpointError(f"{where}: last.json holds no training state of this version; "
                                  f"delete {where} or drop resume")
        return cls(**state)


@dataclass
class Clock:
    """The schedule's progress. With a budget it follows the clock: the share of the budget
    spent (less the last validation), or of the step limit if that is further on, so a machine
    that slows down or speeds up mid-run still ends its learning-rate decay with the budget."""

    start: float
    window: float | None  # seconds of training in the budget; None: no budget
    total_steps: int | None

    def progress(self, step: int) -> float:
        p = (step + 1) / self.total_steps if self.total_steps else 0.0
        if self.window:
            p = max(p, self.elapsed() / self.window)
        return min(p, 1.0)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def out_of_time(self) -> bool:
        return self.window is not None and self.elapsed() >= self.window


def train_epoch(run: Run, state: TrainState, clock: Clock, net: nn.Module,
                lookahead: Lookahead | None) -> tuple[dict[str, float], bool]:
    """One epoch: its batches until the epoch, the plan or the budget ends, then validation.
    Advances ``state.epoch`` and ``state.step``; returns the epoch's record and whether the
    schedule has ended."""
    cfg, step = run.cfg, state.step
    steps = run.steps_per_epoch if state.total_steps is None else min(run.steps_per_epoch,
                                                                      state.total_steps - step)
    set_whiten_bias_rate(run.optimizer, state.epoch, cfg)
    run.model.train()
    loss_sum = torch.zeros((), device=run.device)
    correct = torch.zeros((), device=run.device, dtype=torch.long)
    seen, p = 0, 0.0
    for x, y in run.batches(state.epoch, steps):
        p = clock.progress(step)
        lr = cfg.lr * state.plateau["scale"] * lr_factor(cfg.schedule, p, cfg.warmup)
        batch_loss, batch_correct = run.train_step(net, run.optimizer, x, y, lr)
        loss_sum += batch_loss
        correct += batch_correct
        seen += len(y)
        step += 1
        if lookahead is not None and step % 5 == 0:
            lookahead.update(run.model, lookahead_decay(p))
        if p >= 1:
            break
    last = p >= 1 or (state.total_steps is not None and step >= state.total_steps) or clock.out_of_time()
    if lookahead is not None:  # the model holds the average after every epoch (and checkpoint)
        lookahead.update(run.model, 1.0 if last else lookahead_decay(p))
    train_loss = loss_sum.item() / seen
    if not math.isfinite(train_loss):
        raise TrainingError(f"training diverged at epoch {state.epoch + 1} (loss {train_loss}); "
                            "lower the learning rate or set grad_clip")
    val_loss, val_accuracy = run.validate(run.model)
    sync(run.device)
    state.epoch, state.step = state.epoch + 1, step
    return {"epoch": state.epoch, "step": step, "lr": lr, "train_loss": train_loss,
            "train_accuracy": correct.item() / seen, "val_loss": val_loss,
            "val_accuracy": val_accuracy, "seconds": clock.elapsed()}, last


def train_cnn(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    config: CNNConfig | None = None,
    *,
    n_classes: int | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train the CNN (``config.arch``) on ``train``, validating on ``val`` after every epoch.

    Parameters
    ----------
    train, val : (uint8 (N, H, W, C) images, int labels)
    config : CNNConfig
    n_classes : int, optional
        Default: largest label + 1.
    checkpoint_dir : path, optional
        Checkpoint after every epoch there; with ``config.resume`` continue from it.
    progress : bool
        Show a progress bar of epochs (hidden when not on a terminal).
    on_epoch_end : callable, optional
        Called with each epoch's record after its checkpoint is written.

    Returns
    -------
    TrainResult
        With the weights of the epoch with the best validation accuracy.
    """
    cfg0 = config or CNNConfig()
    device = resolve_device(cfg0.device)
    cfg = cfg0.resolved(device)
    n_classes = n_classes or int(max(train[1].max(), val[1].max())) + 1
    # One class teaches nothing (the loss is 0, or NaN in bf16): a sliced, class-sorted split.
    if len(np.unique(train[1])) < 2:
        raise TrainingError(f"the training images hold {len(np.unique(train[1]))} class; at least 2 are "
                            "needed (is the split sorted by class and cut short?)")
    run = setup_run(train, val, cfg, n_classes, device)
    net = torch.compile(run.model) if cfg.compile else run.model
    state, best_weights = _start(run, _signature(cfg, train, val, n_classes), checkpoint_dir)
    window = cfg.time_budget - state.plan.get("val_seconds", 0.0) if cfg.time_budget else None
    clock = Clock(time.perf_counter() - state.train_seconds, window, state.total_steps)
    lookahead = Lookahead(run.model) if cfg.lookahead else None
    bar = tqdm(total=math.ceil(state.plan["epochs"]), initial=state.epoch, desc="epochs",
               unit="epoch", disable=None if progress else True)
    while not state.finished:
        record, last = train_epoch(run, state, clock, net, lookahead)
        state.history.append(record)
        improved = record["val_accuracy"] > state.best_accuracy
        if improved:
            state.best_epoch, state.best_accuracy = state.epoch, record["val_accuracy"]
            best_weights = model_tensors(run.model)
        if cfg.schedule == "plateau":
            _plateau_step(state.plateau, record["val_loss"], cfg)
        if cfg.patience and state.epoch - state.best_epoch >= cfg.patience:
            state.stopped = "early_stopping"
            log.info("early stopping: no better validation accuracy for %d epochs", cfg.patience)
        state.finished = last or clock.out_of_time() or state.stopped != "completed"
        state.train_seconds = clock.elapsed()
        if checkpoint_dir is not None:
            save_checkpoint(Path(checkpoint_dir), state.epoch, run.model, run.optimizer,
                            dataclasses.asdict(state), best=best_weights if improved else None)
        bar.update(1)
        bar.set_postfix(loss=f"{record['train_loss']:.3f}", val_acc=f"{record['val_accuracy']:.4f}")
        log.debug("epoch %d: %s", state.epoch, record)
        if on_epoch_end is not None:
            on_epoch_end(record)
    bar.close()

    if best_weights is not None:
        run.model.load_state_dict(best_weights)
    run.model.eval()
    return TrainResult(
        model=run.model, config=cfg, device=device, mean=run.stats[0], std=run.stats[1],
        history=state.history, best_epoch=state.best_epoch, total_steps=state.step,
        steps_per_epoch=run.steps_per_epoch, stopped=state.stopped,
        train_seconds=state.train_seconds, plan=state.plan,
    )


def _start(run: Run, signature: dict[str, Any], checkpoint_dir: str | Path | None
           ) -> tuple[TrainState, dict[str, torch.Tensor] | None]:
    """The state to start from: the checkpoint's with ``resume`` (its settings and data must
    match), else a new plan (which measures the speed when there is a time budget)."""
    cfg = run.cfg
    if checkpoint_dir is not None and cfg.resume:
        restored = load_checkpoint(Path(checkpoint_dir), run.model, run.optimizer)
        if restored is not None:
            state = TrainState.from_checkpoint(restored[0], Path(checkpoint_dir))
            if state.signature != signature:
                raise CheckpointError(
                    f"{checkpoint_dir}: checkpoint made with other settings or data "
                    f"({_diff(state.signature, signature)}); drop resume or use the same settings")
            log.info("resuming after epoch %d of %s", state.epoch, checkpoint_dir)
            return state, restored[1]
    if checkpoint_dir is not None:
        clear_checkpoints(Path(checkpoint_dir))
    started = time.perf_counter()
    plan = _plan(cfg, run.steps_per_epoch, len(run.val[0]), lambda: measure_speed(run))
    state = TrainState(signature, plan, plan["total_steps"])
    state.train_seconds = time.perf_counter() - started
    return state, None


def _plateau_step(plateau: dict[str, float], val_loss: float, cfg: CNNConfig) -> None:
    """Reduce-on-plateau: scale the learning rate down when validation loss stalls."""
    if val_loss < plateau["best"] * (1 - 1e-4):
        plateau["best"], plateau["bad"] = val_loss, 0
        return
    plateau["bad"] += 1
    if plateau["bad"] > cfg.plateau_patience:
        plateau["scale"] *= cfg.plateau_factor
        plateau["bad"] = 0
        log.info("validation loss stalled: learning rate x %.3g", plateau["scale"])


def _plan(cfg: CNNConfig, steps_per_epoch: int, n_val: int,
          measure: Callable[[], tuple[float, float]]) -> dict[str, Any]:
    """Steps to train: ``epochs`` worth, or with a budget, the clock decides and the steps that
    fit at the measured speed are an estimate (``total_steps`` is then the ``epochs`` limit or None).
    """
    cap = round(cfg.epochs * steps_per_epoch) if cfg.epochs else None
    if not cfg.time_budget:
        return {"total_steps": max(1, cap), "epochs": cap / steps_per_epoch}
    started = time.perf_counter()
    step_seconds, val_seconds = measure()
    left = cfg.time_budget - val_seconds - (time.perf_counter() - started)
    fit = max(1, int(left / (step_seconds + val_seconds / steps_per_epoch)))
    estimate = min(fit, cap) if cap else fit
    log.info("time budget %.0f s: %.3f s/step, %.1f s/validation -> about %d steps (%.2f epochs) at "
             "this speed", cfg.time_budget, step_seconds, val_seconds, estimate, estimate / steps_per_epoch)
    return {"total_steps": cap, "estimated_steps": estimate, "epochs": estimate / steps_per_epoch,
            "step_seconds": step_seconds, "val_seconds": val_seconds, "time_budget": cfg.time_budget}


def _signature(cfg: CNNConfig, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
               n_classes: int) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: settings and a fingerprint of the data."""
    settings = {k: v for k, v in cfg.to_dict().items()
                if k not in ("resume", "device", "compile", "eval_batch_size")}
    h = hashlib.sha256()
    for images, labels in (train, val):
        h.update(np.ascontiguousarray(labels).tobytes())
        h.update(np.ascontiguousarray(images[:: max(1, len(images) // 64)]).tobytes())
    return {"settings": settings, "n_train": len(train[1]), "n_val": len(val[1]), "n_classes": n_classes,
            "data": h.hexdigest()[:16]}


def _diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    flat_old = {**old["settings"], **{k: v for k, v in old.items() if k != "settings"}}
    flat_new = {**new["settings"], **{k: v for k, v in new.items() if k != "settings"}}
    keys = sorted(set(flat_old) | set(flat_new))
    changed = [f"{k}: {flat_old.get(k)!r} -> {flat_new.get(k)!r}" for k in keys
               if flat_old.get(k) != flat_new.get(k)]
    return "; ".join(changed) or "unknown difference"


def final_logits(result: TrainResult, images: np.ndarray) -> torch.Tensor:
    """float32 (N, n_classes) logits of the trained model (un-augmented images; TTA as
    configured), in float32 whatever the training's precision: as the saved model predicts
    (:class:`cvpipe.cnn.persist.CNNPredictor`), so the recorded figures are the served model's."""
    cfg = result.config
    mean = torch.tensor(result.mean).view(1, -1, 1, 1)
    std = torch.tensor(result.std).view(1, -1, 1, 1)
    return logits(result.model, images, mean, std, batch_size=cfg.eval_batch_size, tta=cfg.tta, amp=False,
                  channels_last=cfg.channels_last)


def _metrics(z: torch.Tensor, labels: np.ndarray) -> dict[str, float]:
    loss, accuracy = loss_and_accuracy(z, torch.from_numpy(np.array(labels, dtype=np.int64)))
    return {"accuracy": accuracy, "loss": loss, "n": len(labels)}


def score(result: TrainResult, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy and cross-entropy of the trained model on a split, scored as
    :func:`final_logits` scores it."""
    return _metrics(final_logits(result, images), labels)


def _sample(split: tuple[np.ndarray, np.ndarray], size: int | None, seed: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """A seeded, class-stratified sample of ``size`` images of a split (all of them when
    ``size`` is None or not smaller)."""
    images, labels = split
    labels = np.asarray(labels)
    if size is None or size >= len(labels):
        return images, labels
    _, keep = stratified_split(labels, size / len(labels), seed)
    return np.asarray(images[keep]), labels[keep]


def fit_cnn(dataset: Any, config: CNNConfig | None = None, *, checkpoint_dir: str | Path | None = None,
            progress: bool = True) -> tuple[TrainResult, dict[str, Any]]:
    """Train on ``dataset``'s "train" split, select on "val", score train/val/test.

    Parameters
    ----------
    dataset : cvpipe.data.Dataset
        Its test split is used once, after training.
    config : CNNConfig
    checkpoint_dir : path, optional
        Checkpoints go there and are kept (``config.resume`` continues from them).
    progress : bool
        Progress bar of epochs.

    Returns
    -------
    (TrainResult, dict)
        The trained network and its description for ``model.json`` (architecture,
        normalisation, metrics, selection, training plan, history, timings).
    """
    config = config or CNNConfig()
    classes = list(dataset.classes)
    train, val = dataset.split("train"), dataset.split("val")
    result = train_cnn(train, val, config, n_classes=len(classes), checkpoint_dir=checkpoint_dir,
                       progress=progress)
    started = time.perf_counter()
    train_sample = _sample(train, result.config.train_score_images, result.config.seed)
    metrics = {"train": score(result, *train_sample), "val": score(result, *val)}
    test_images, test_labels = dataset.split("test")
    test_logits = final_logits(result, test_images)
    metrics["test"] = _metrics(test_logits, test_labels)
    result.test_scores = torch.softmax(test_logits, dim=1).cpu().numpy()
    eval_seconds = time.perf_counter() - started
    log.info("cnn: train %.4f, val %.4f, test %.4f accuracy (trained %.0f s)",
             metrics["train"]["accuracy"], metrics["val"]["accuracy"], metrics["test"]["accuracy"],
             result.train_seconds)
    cfg = result.config
    description = {
        "classes": classes,
        "input_size": list(train[0].shape[1:3]),
        "architecture": result.model.cfg.to_dict(),
        "normalisation": {"mean": result.mean, "std": result.std, "scale": "0-255",
                          "computed_on": "train"},
        "tta": cfg.tta,
        "metrics": metrics,
        "selection": {
            "split": "val", "criterion": "accuracy", "best_epoch": result.best_epoch,
            "best_val_accuracy": max(r["val_accuracy"] for r in result.history),
            "epochs_run": len(result.history), "epochs_trained": result.total_steps / result.steps_per_epoch,
            "stopped": result.stopped, "patience": cfg.patience,
        },
        "hyperparameters": cfg.to_dict(),
        "training": {"steps": result.total_steps, "steps_per_epoch": result.steps_per_epoch,
                     "plan": result.plan, "time_budget_counts": "training loop incl. per-epoch "
                     "validation and checkpoints; not the final scoring"},
        "history": result.history,
        "fit_seconds": result.train_seconds,
        "eval_seconds": eval_seconds,
        "device": str(result.device),
        "params": sum(p.numel() for p in result.model.parameters()),
    }
    return result, description


def plot_curves(history: list[dict[str, float]], path: Path) -> None:
    """Loss and accuracy per epoch (train on augmented batches, validation) as a PNG."""
    from matplotlib.figure import Figure  # no pyplot: leaves the user's backend alone

    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(9, 3.5))
    ax_loss, ax_acc = fig.subplots(1, 2)
    for split in ("train", "val"):
        ax_loss.plot(epochs, [r[f"{split}_loss"] for r in history], marker=".", label=split)
        ax_acc.plot(epochs, [r[f"{split}_accuracy"] for r in history], marker=".", label=split)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss (train: with label smoothing)")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy (train: augmented)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
