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

import copy
import hashlib
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
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
from cvpipe.cnn.data import alternating_flip, augment, channel_stats, normalise, to_device
from cvpipe.cnn.infer import autocast, logits, loss_and_accuracy
from cvpipe.cnn.net import AirbenchNet, build_net
from cvpipe.cnn.schedule import (
    Lookahead,
    lookahead_decay,
    lr_factor,
    make_optimizer,
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
    torch.manual_seed(cfg.seed)

    # Data: the whole split on the device as uint8; normalisation from the training split.
    mean_list, std_list = channel_stats(train[0])
    mean = torch.tensor(mean_list, device=device).view(1, -1, 1, 1)
    std = torch.tensor(std_list, device=device).view(1, -1, 1, 1)
    x_train, y_train = to_device(train[0], device), torch.as_tensor(train[1], device=device)
    x_val, y_val = to_device(val[0], device), torch.as_tensor(val[1], device=device)
    batch_size = min(cfg.batch_size, len(x_train))
    steps_per_epoch = len(x_train) // batch_size
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format

    in_channels = int(train[0].shape[-1])
    model = build_net(cfg.net_config(n_classes, in_channels)).to(device)
    if isinstance(model, AirbenchNet):  # its first layer is fixed from the training images
        if min(x_train.shape[2:]) < 9:
            raise CvpipeError(f"the airbench net needs images of at least 9x9, not "
                              f"{tuple(x_train.shape[2:])}")
        model.init_whitening(normalise(x_train[:5000], mean, std))
    model = model.to(memory_format=memory_format)
    optimizer = make_optimizer(model, cfg)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    # Alternating flips: one random bit per image for the whole run, inverted in odd epochs.
    flip_bits = torch.rand(len(x_train), device=device,
                           generator=torch.Generator(device=device).manual_seed(cfg.seed)) < 0.5

    def batches(epoch: int, steps: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``steps`` augmented batches of a shuffle that depends only on seed and epoch."""
        g = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + epoch)
        order = torch.randperm(len(x_train), generator=g, device=device)
        alternate = cfg.flip and cfg.alternate_flip
        for i in range(steps):
            idx = order[i * batch_size:(i + 1) * batch_size]
            x = augment(normalise(x_train[idx], mean, std), g, cfg.translate, cfg.flip and not alternate,
                        cfg.cutout)
            if alternate:
                x = alternating_flip(x, flip_bits[idx], epoch)
            yield x.contiguous(memory_format=memory_format), y_train[idx]

    def train_step(net: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                   lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        for group in opt.param_groups:
            group["lr"] = lr * group["lr_scale"]
        with autocast(device, cfg.amp):
            out = net(x)
        loss = criterion(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        return loss.detach() * len(y), (out.argmax(1) == y).sum()

    def validate(net: nn.Module) -> tuple[float, float]:
        """Per-epoch validation, without TTA (half the cost; the final scores use TTA if set)."""
        z = logits(net, x_val, mean, std, batch_size=cfg.eval_batch_size, amp=cfg.amp,
                   channels_last=cfg.channels_last)
        return loss_and_accuracy(z, y_val)

    forward = torch.compile(model) if cfg.compile else model
    signature = _signature(cfg, train, val, n_classes)
    state: dict[str, Any] | None = None
    best_weights: dict[str, torch.Tensor] | None = None
    if checkpoint_dir is not None and cfg.resume:
        restored = load_checkpoint(Path(checkpoint_dir), model, optimizer)
        if restored is not None:
            state, best_weights = restored
            if state["signature"] != signature:
                raise CheckpointError(
                    f"{checkpoint_dir}: checkpoint made with other settings or data "
                    f"({_diff(state['signature'], signature)}); drop resume or use the same settings")
            log.info("resuming after epoch %d of %s", state["epoch"], checkpoint_dir)
    if state is None:
        if checkpoint_dir is not None:
            clear_checkpoints(Path(checkpoint_dir))
        started = time.perf_counter()
        plan = _plan(cfg, steps_per_epoch, len(x_val), lambda: _measure_speed(
            model, cfg, lambda net, opt, x, y: train_step(net, opt, x, y, cfg.lr * 0.01),
            _probe_batches(batches, steps_per_epoch), validate, device))
        state = {
            "signature": signature, "epoch": 0, "step": 0, "total_steps": plan["total_steps"],
            "plan": plan, "history": [], "best_epoch": 0, "best_accuracy": -1.0,
            "plateau": {"scale": 1.0, "best": math.inf, "bad": 0}, "stopped": "completed",
            "train_seconds": time.perf_counter() - started, "finished": False,
        }

    total_steps = state["total_steps"]  # None: as many as the time budget allows
    start = time.perf_counter() - state["train_seconds"]
    # With a budget the schedule follows the clock: progress is the share of the budget spent
    # (less the last validation), or of the step limit if that is further on. A machine that
    # slows down or speeds up mid-run still ends its learning-rate decay when the budget ends.
    window = cfg.time_budget - state["plan"].get("val_seconds", 0.0) if cfg.time_budget else None

    def schedule_progress(step: int) -> float:
        p = (step + 1) / total_steps if total_steps else 0.0
        if window:
            p = max(p, (time.perf_counter() - start) / window)
        return min(p, 1.0)

    # After every epoch the model holds the average (see below), so a checkpoint restores it too.
    lookahead = Lookahead(model) if cfg.lookahead else None
    bar = tqdm(total=math.ceil(state["plan"]["epochs"]), initial=state["epoch"], desc="epochs",
               unit="epoch", disable=None if progress else True)
    while not state["finished"]:
        epoch, step = state["epoch"], state["step"]
        steps = steps_per_epoch if total_steps is None else min(steps_per_epoch, total_steps - step)
        set_whiten_bias_rate(optimizer, epoch, cfg)
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen, p = 0, 0.0
        for x, y in batches(epoch, steps):
            p = schedule_progress(step)
            lr = cfg.lr * state["plateau"]["scale"] * lr_factor(cfg.schedule, p, cfg.warmup)
            batch_loss, batch_correct = train_step(forward, optimizer, x, y, lr)
            loss_sum += batch_loss
            correct += batch_correct
            seen += len(y)
            step += 1
            if lookahead is not None and step % 5 == 0:
                lookahead.update(model, lookahead_decay(p))
            if p >= 1:
                break
        last = p >= 1 or (total_steps is not None and step >= total_steps) or (
            window is not None and time.perf_counter() - start >= window)
        if lookahead is not None:
            lookahead.update(model, 1.0 if last else lookahead_decay(p))
        train_loss = loss_sum.item() / seen
        if not math.isfinite(train_loss):
            raise TrainingError(f"training diverged at epoch {epoch + 1} (loss {train_loss}); "
                                "lower the learning rate or set grad_clip")
        val_loss, val_accuracy = validate(model)
        _sync(device)
        record = {"epoch": epoch + 1, "step": step, "lr": lr, "train_loss": train_loss,
                  "train_accuracy": correct.item() / seen, "val_loss": val_loss,
                  "val_accuracy": val_accuracy, "seconds": time.perf_counter() - start}
        state["history"].append(record)
        state["epoch"], state["step"] = epoch + 1, step
        improved = val_accuracy > state["best_accuracy"]
        if improved:
            state["best_epoch"], state["best_accuracy"] = epoch + 1, val_accuracy
            best_weights = model_tensors(model)
        if cfg.schedule == "plateau":
            _plateau_step(state["plateau"], val_loss, cfg)
        if cfg.patience and epoch + 1 - state["best_epoch"] >= cfg.patience:
            state["stopped"] = "early_stopping"
            log.info("early stopping: no better validation accuracy for %d epochs", cfg.patience)
        out_of_time = window is not None and time.perf_counter() - start >= window
        ended = last or out_of_time
        state["finished"] = ended or state["stopped"] != "completed"
        state["train_seconds"] = time.perf_counter() - start
        if checkpoint_dir is not None:
            save_checkpoint(Path(checkpoint_dir), epoch + 1, model, optimizer, state,
                            best=best_weights if improved else None)
        bar.update(1)
        bar.set_postfix(loss=f"{train_loss:.3f}", val_acc=f"{val_accuracy:.4f}")
        log.debug("epoch %d: %s", epoch + 1, record)
        if on_epoch_end is not None:
            on_epoch_end(record)
    bar.close()

    if best_weights is not None:
        model.load_state_dict(best_weights)
    model.eval()
    return TrainResult(
        model=model, config=cfg, device=device, mean=mean_list, std=std_list, history=state["history"],
        best_epoch=state["best_epoch"], total_steps=state["step"], steps_per_epoch=steps_per_epoch,
        stopped=state["stopped"], train_seconds=state["train_seconds"], plan=state["plan"],
    )


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


def _probe_batches(batches: Callable[[int, int], Iterator], steps_per_epoch: int) -> Iterator:
    """Six full batches for the speed probe, from as many throw-away epochs as that takes (a
    split of fewer than six batches, e.g. 2,700 images in 1024s, would otherwise yield empty ones)."""
    epochs = (batches(-1 - e, steps_per_epoch) for e in itertools.count())
    return itertools.islice(itertools.chain.from_iterable(epochs), 6)


def _measure_speed(model: nn.Module, cfg: CNNConfig, step: Callable, batches: Iterator,
                   validate: Callable[[nn.Module], Any], device: torch.device) -> tuple[float, float]:
    """Seconds per training step and per validation pass, on a throw-away copy of ``model``."""
    probe = copy.deepcopy(model)
    opt = make_optimizer(probe, cfg)
    net = torch.compile(probe) if cfg.compile else probe
    times = []
    for x, y in batches:
        _sync(device)
        t = time.perf_counter()
        step(net, opt, x, y)
        _sync(device)
        times.append(time.perf_counter() - t)
    step_seconds = float(np.median(times[2:]))  # the first steps warm up allocators and kernels
    t = time.perf_counter()
    validate(probe)
    _sync(device)
    return step_seconds, time.perf_counter() - t


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


def score(result: TrainResult, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy and cross-entropy of the trained model on a split (un-augmented; TTA as configured)."""
    cfg = result.config
    mean = torch.tensor(result.mean).view(1, -1, 1, 1)
    std = torch.tensor(result.std).view(1, -1, 1, 1)
    z = logits(result.model, images, mean, std, batch_size=cfg.eval_batch_size, tta=cfg.tta, amp=cfg.amp,
               channels_last=cfg.channels_last)
    loss, accuracy = loss_and_accuracy(z, torch.from_numpy(np.array(labels, dtype=np.int64)))
    return {"accuracy": accuracy, "loss": loss, "n": len(labels)}


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
    metrics = {"train": score(result, *_sample(train, result.config.train_score_images, result.config.seed)),
               "val": score(result, *val)}
    metrics["test"] = score(result, *dataset.split("test"))
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
