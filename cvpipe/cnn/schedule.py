"""The CNN's optimiser and schedules: parameter groups, the learning-rate curve, the
whitening bias's short learning, and airbench's lookahead average of the weights."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from cvpipe.cnn.config import CNNConfig
from cvpipe.cnn.net import AirbenchNet


def make_optimizer(model: nn.Module, cfg: CNNConfig) -> torch.optim.Optimizer:
    """The configured optimiser over the parameters that learn.

    Groups: conv/linear weights (weight decay); biases/BN parameters (learning rate x
    ``bias_lr_scale``; decayed only with ``bias_decay``, by the same amount per step); for the
    airbench net a third, its whitening bias. Each group's ``lr_scale`` multiplies the
    scheduled learning rate.
    """
    # Frozen tensors (the whitening filters, BN scales of the airbench net) never get a
    # gradient, so the optimiser skips them. The whitening bias has its own group, whose
    # rate drops to zero after ``whiten_bias_epochs`` (see :func:`set_whiten_bias_rate`);
    # switching requires_grad instead would make torch.compile trace the net again mid-run.
    whiten_bias = [model.whiten.bias] if isinstance(model, AirbenchNet) else []
    decay = [p for p in model.parameters() if p.ndim > 1]
    biases = [p for p in model.parameters() if p.ndim <= 1 and not any(p is b for b in whiten_bias)]
    bias_decay = cfg.weight_decay / cfg.bias_lr_scale if cfg.bias_decay else 0.0
    groups = [{"params": decay, "weight_decay": cfg.weight_decay, "lr_scale": 1.0},
              {"params": biases, "weight_decay": bias_decay, "lr_scale": cfg.bias_lr_scale}]
    if whiten_bias:
        groups.append({"params": whiten_bias, "weight_decay": cfg.weight_decay, "lr_scale": 1.0})
    for group in groups:
        group["lr"] = cfg.lr * group["lr_scale"]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                               nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=cfg.lr)
    return torch.optim.Adagrad(groups, lr=cfg.lr)


def set_whiten_bias_rate(optimizer: torch.optim.Optimizer, epoch: int, cfg: CNNConfig) -> None:
    """The whitening bias (third group, airbench net) learns only for ``whiten_bias_epochs``."""
    if len(optimizer.param_groups) == 3:
        optimizer.param_groups[2]["lr_scale"] = 1.0 if epoch < cfg.whiten_bias_epochs else 0.0


def lr_factor(schedule: str, progress: float, warmup: float) -> float:
    """Learning rate / peak at ``progress`` (0..1] of training."""
    if schedule == "triangle":  # airbench's: 0.2 -> 1 at ``warmup`` -> 0.07
        return float(np.interp(progress, [0.0, warmup, 1.0], [0.2, 1.0, 0.07]))
    if progress < warmup:
        return progress / warmup
    if schedule == "onecycle":
        return max(0.0, (1 - progress) / (1 - warmup))
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / (1 - warmup))))
    return 1.0  # "constant"; "plateau" scales it by its own factor


class Lookahead:
    """An exponential moving average of a model's float state, copied back into the model.

    ``update(model, decay)``: average <- decay * average + (1 - decay) * model, then model <-
    average (airbench's "lookahead"; decay 1 puts the average in the model).
    """

    def __init__(self, model: nn.Module) -> None:
        self.average = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float) -> None:
        state = model.state_dict()
        for key, average in self.average.items():
            average.lerp_(state[key], 1 - decay)
            state[key].copy_(average)


def lookahead_decay(progress: float) -> float:
    """Decay of the lookahead average at ``progress`` of training: none at first, 0.77 at the end."""
    return 0.95**5 * progress**3
