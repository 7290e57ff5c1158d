"""One training run's fixed parts on the device (:class:`Run`: data, network, optimiser, loss,
the batches and the training step) and the speed probe that plans a time budget."""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cvpipe.cnn.config import CNNConfig
from cvpipe.cnn.data import alternating_flip, augment, channel_stats, normalise, to_device
from cvpipe.cnn.infer import autocast, logits, loss_and_accuracy
from cvpipe.cnn.net import AirbenchNet, build_net
from cvpipe.cnn.schedule import make_optimizer
from cvpipe.errors import CvpipeError


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (timings)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Run:
    """A run's fixed parts, on the device: the data (uint8, normalised per batch), the network,
    its optimiser and loss, and the per-image flip bits."""

    cfg: CNNConfig
    device: torch.device
    model: nn.Module
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    stats: tuple[list[float], list[float]]  # channel mean and std of the training split
    flip_bits: torch.Tensor

    def __post_init__(self) -> None:
        self.mean = torch.tensor(self.stats[0], device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(self.stats[1], device=self.device).view(1, -1, 1, 1)

    @property
    def batch_size(self) -> int:
        return min(self.cfg.batch_size, len(self.train[0]))

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train[0]) // self.batch_size

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.cfg.channels_last else torch.contiguous_format

    def batches(self, epoch: int, steps: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``steps`` augmented batches of a shuffle that depends only on seed and epoch."""
        cfg, (x_train, y_train), size = self.cfg, self.train, self.batch_size
        g = torch.Generator(device=self.device).manual_seed(cfg.seed * 1_000_003 + epoch)
        order = torch.randperm(len(x_train), generator=g, device=self.device)
        alternate = cfg.flip and cfg.alternate_flip
        for i in range(steps):
            idx = order[i * size:(i + 1) * size]
            x = augment(normalise(x_train[idx], self.mean, self.std), g, cfg.translate,
                        cfg.flip and not alternate, cfg.cutout)
            if alternate:
                x = alternating_flip(x, self.flip_bits[idx], epoch)
            yield x.contiguous(memory_format=self.memory_format), y_train[idx]

    def train_step(self, net: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
                   y: torch.Tensor, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step; (summed loss, correct predictions) of the batch, on the device."""
        for group in opt.param_groups:
            group["lr"] = lr * group["lr_scale"]
        with autocast(self.device, self.cfg.amp):
            out = net(x)
        loss = self.criterion(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip:
            nn.utils.clip_grad_norm_(net.parameters(), self.cfg.grad_clip)
        opt.step()
        return loss.detach() * len(y), (out.argmax(1) == y).sum()

    def validate(self, net: nn.Module) -> tuple[float, float]:
        """Per-epoch validation, without TTA (half the cost; the final scores use TTA if set)."""
        z = logits(net, self.val[0], self.mean, self.std, batch_size=self.cfg.eval_batch_size,
                   amp=self.cfg.amp, channels_last=self.cfg.channels_last)
        return loss_and_accuracy(z, self.val[1])


def setup_run(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
              cfg: CNNConfig, n_classes: int, device: torch.device) -> Run:
    """The data on the device as uint8 (normalisation from the training split), the network
    (seeded), its optimiser and loss."""
    torch.manual_seed(cfg.seed)
    mean_list, std_list = channel_stats(train[0])
    mean = torch.tensor(mean_list, device=device).view(1, -1, 1, 1)
    std = torch.tensor(std_list, device=device).view(1, -1, 1, 1)
    x_train = to_device(train[0], device)
    model = build_net(cfg.net_config(n_classes, int(train[0].shape[-1]))).to(device)
    if isinstance(model, AirbenchNet):  # its first layer is fixed from the training images
        if min(x_train.shape[2:]) < 9:
            raise CvpipeError(f"the airbench net needs images of at least 9x9, not "
                              f"{tuple(x_train.shape[2:])}")
        model.init_whitening(normalise(x_train[:5000], mean, std))
    model = model.to(memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
    # Alternating flips: one random bit per image for the whole run, inverted in odd epochs.
    flip_bits = torch.rand(len(x_train), device=device,
                           generator=torch.Generator(device=device).manual_seed(cfg.seed)) < 0.5
    return Run(cfg, device, model, make_optimizer(model, cfg),
               nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
               (x_train, torch.as_tensor(train[1], device=device)),
               (to_device(val[0], device), torch.as_tensor(val[1], device=device)),
               (mean_list, std_list), flip_bits)


def _probe_batches(batches: Callable[[int, int], Iterator], steps_per_epoch: int) -> Iterator:
    """Six full batches for the speed probe, from as many throw-away epochs as that takes (a
    split of fewer than six batches, e.g. 2,700 images in 1024s, would otherwise yield empty ones)."""
    epochs = (batches(-1 - e, steps_per_epoch) for e in itertools.count())
    return itertools.islice(itertools.chain.from_iterable(epochs), 6)


def measure_speed(run: Run) -> tuple[float, float]:
    """Seconds per training step and per validation pass, on a throw-away copy of the model."""
    probe = copy.deepcopy(run.model)
    opt = make_optimizer(probe, run.cfg)
    net = torch.compile(probe) if run.cfg.compile else probe
    times = []
    for x, y in _probe_batches(run.batches, run.steps_per_epoch):
        sync(run.device)
        t = time.perf_counter()
        run.train_step(net, opt, x, y, run.cfg.lr * 0.01)
        sync(run.device)
        times.append(time.perf_counter() - t)
    step_seconds = float(np.median(times[2:]))  # the first steps warm up allocators and kernels
    t = time.perf_counter()
    run.validate(probe)
    sync(run.device)
    return step_seconds, time.perf_counter() - t


