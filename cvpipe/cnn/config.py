"""Settings of a CNN training run, and the device choice.

Every field has a default; the ones left at ``None`` are filled in by :meth:`CNNConfig.resolved`
from the device (a small, fast net on a CPU; the full-width one on a GPU), the network and the
optimiser, and the resolved values are what a model's metadata records. ``RECIPES`` are named
sets of settings (``recipe = "airbench"``).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from cvpipe.cnn.net import ACTIVATIONS, ARCHITECTURES, NetConfig
from cvpipe.device import cpu_has_bfloat16_units
from cvpipe.errors import ConfigError

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad")
SCHEDULES = ("onecycle", "triangle", "cosine", "plateau", "constant")
DEVICES = ("auto", "cpu", "cuda")

#: Peak learning rate and weight decay per optimiser when ``lr``/``weight_decay`` are None.
DEFAULT_LR = {"sgd": 0.4, "adam": 2e-3, "adamw": 2e-3, "rmsprop": 1e-3, "adagrad": 0.05}
DEFAULT_WEIGHT_DECAY = {"sgd": 5e-4, "adam": 5e-5, "adamw": 0.05, "rmsprop": 5e-5, "adagrad": 5e-5}
#: Per device kind: (width, epochs, batch size, channels_last, mixed precision); the CPU's
#: mixed precision (None) is on where the CPU multiplies bfloat16 itself (:func:`cpu_has_bfloat16_units`).
DEVICE_DEFAULTS = {"cpu": (16, 10.0, 256, True, None), "cuda": (64, 16.0, 512, True, True)}
#: The same for ``arch="airbench"`` (its groups are width, 4 x width, 4 x width wide).
AIRBENCH_DEVICE_DEFAULTS = {"cpu": (32, 9.9, 1024, True, None), "cuda": (64, 9.9, 1024, True, True)}
#: Airbench's peak learning rate for the mean loss of a 1024-image batch (its 11.5 per 1024
#: examples with momentum 0.85, summed loss); other batch sizes scale it linearly.
AIRBENCH_LR_PER_1024 = 1.5


#: Named sets of settings: ``recipe = "airbench"`` in a ``[cnn]`` table or ``--set recipe=airbench``
#: fills every key the user did not give. "airbench" follows Jordan's airbench94 (2024): frozen
#: patch-whitening first layer, dirac initialisation, label smoothing, lookahead (EMA) of the
#: weights, alternating flips, 2-pixel translations, flip + translate test-time augmentation,
#: 1024-image batches, a triangular learning rate and decoupled weight decay on every parameter.
RECIPES: dict[str, dict[str, Any]] = {
    "resnet": {},
    "airbench": {
        "arch": "airbench", "activation": "gelu", "optimizer": "sgd", "momentum": 0.85, "nesterov": True,
        "weight_decay": 1.33e-3, "bias_lr_scale": 64.0, "bias_decay": True, "label_smoothing": 0.2,
        "schedule": "triangle", "warmup": 0.23, "patience": None, "translate": 2, "flip": True,
        "alternate_flip": True, "lookahead": True, "tta": 2, "whiten_bias_epochs": 3.0,
    },
}


def _accepts(hint: Any, value: Any) -> bool:
    """Whether ``value`` is of the field type ``hint`` (bool is no int here, a float is finite)."""
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        return any(_accepts(h, value) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return (isinstance(value, numbers.Real) and not isinstance(value, bool)
                and math.isfinite(value))
    if hint is str:
        return isinstance(value, str)
    if typing.get_origin(hint) is tuple:
        return isinstance(value, tuple) and all(_accepts(typing.get_args(hint)[0], v) for v in value)
    return True  # pragma: no cover - every field's type is one of the above


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    names = {type(None): "absent", bool: "true or false", int: "a whole number",
             float: "a finite number", str: "a string"}
    return names.get(hint, "a list of whole numbers")


@dataclass(frozen=True)
class CNNConfig:
    """How to train the CNN.

    Parameters
    ----------
    epochs : float, optional
        Passes over the training split (fractions allowed). Default: as many as fit in
        ``time_budget`` when one is given, else 10 on a CPU and 16 on a GPU (airbench: 9.9,
        and on a GPU 9.9 even with a budget, which is then only a limit); with a budget, an
        explicit value is the upper limit.
    time_budget : float, optional
        Seconds of training (the loop including per-epoch validation and checkpoints;
        not the final scoring). Throughput is measured on a few steps first and the
        schedule is planned so the learning-rate decay ends inside the budget.
    batch_size : int, optional
        Training batch (default 256 on a CPU, 512 on a GPU).
    optimizer : {"sgd", "adam", "adamw", "rmsprop", "adagrad"}
    lr : float, optional
        Peak learning rate (default per optimiser, see ``DEFAULT_LR``).
    momentum, nesterov : float, bool
        For SGD (momentum also for RMSProp).
    weight_decay : float, optional
        On convolution and linear weights only, not on batch-norm parameters.
    label_smoothing : float
    schedule : {"onecycle", "triangle", "cosine", "plateau", "constant"}
        "onecycle": linear warm-up to the peak over ``warmup`` of training, then linear
        decay to zero; "triangle": airbench's, from 0.2 x peak up to the peak at ``warmup``,
        then down to 0.07 x peak; "cosine": the same warm-up, then cosine decay; "plateau": warm-up,
        then divide by ``1 / plateau_factor`` when validation loss stalls for
        ``plateau_patience`` epochs.
    warmup : float
        Fraction of training spent warming up.
    grad_clip : float, optional
        Clip the gradient's global norm to this value.
    patience : int, optional
        Early stopping: stop after this many epochs without a better validation accuracy.
    translate, flip, cutout : int, bool, int
        Augmentation: random shift by up to ``translate`` pixels (reflect padding),
        horizontal flip, zeroing a random ``cutout`` x ``cutout`` square (0: off).
    alternate_flip : bool
        Derandomised flips: each image gets one random flip bit for the run, used as is in
        even epochs and inverted in odd ones, so every image is seen both ways in two epochs.
    tta : {0, 1, 2} or bool
        Test-time augmentation: 0/False none, 1/True average with the mirror image, 2 also
        with 1-pixel translations (weights 1/2 for the plain pair, 1/4 for each shifted pair).
    arch : {"resnet", "airbench"}
        The network (see :mod:`cvpipe.cnn.net`).
    width : int, optional
        Channels of the first stage: the resnet's stages have 2x, 4x, 8x (default 16 on
        CPU, 64 on GPU); the airbench net's groups 4x, 4x (default 32 on CPU, 64 on GPU).
    blocks : tuple of int
        Residual blocks after the stem and each stage (resnet).
    lookahead : bool
        Every 5 steps (and at each epoch's end) move an exponential moving average of the
        weights towards the weights and copy it back, with a decay that rises as ``0.95**5 *
        progress**3``; at the end of training the weights are that average.
    bias_lr_scale : float
        Learning rate multiplier for biases and batch-norm parameters.
    bias_decay : bool
        Also decay the biases (by the same amount per step as the weights, so their weight
        decay is divided by ``bias_lr_scale``); off: biases are not decayed.
    whiten_bias_epochs : float
        Epochs during which the bias of the frozen whitening layer learns (airbench).
    activation : {"relu", "gelu", "silu"}
    device : {"auto", "cpu", "cuda"} or "cuda:N"
        "auto": CUDA if available, else CPU.
    seed : int
        Seeds initialisation, shuffling and augmentation; CPU runs repeat exactly.
    amp : bool, optional
        bfloat16 autocast (default on for CUDA, and on a CPU with bfloat16 matrix units,
        :func:`cpu_has_bfloat16_units`; off on other CPUs).
    channels_last : bool, optional
        NHWC memory layout (default on; faster on both CPU and GPU).
    compile : bool
        ``torch.compile`` the training step's model (GPU; slow to start).
    eval_batch_size : int
    train_score_images : int, optional
        After training, the train split's accuracy is scored on a seeded, class-stratified
        sample of this many images (None: every image); validation and test are scored whole.
        With flip-and-translate TTA, scoring all 45,000 CIFAR-10 train images takes 90 s on a
        2-core CPU; 10,000 give the train accuracy within about +-0.3 points (95%).
    resume : bool
        Continue from the last checkpoint of the same model and settings if one exists.
    """

    epochs: float | None = None
    time_budget: float | None = None
    batch_size: int | None = None
    optimizer: str = "sgd"
    lr: float | None = None
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float | None = None
    label_smoothing: float = 0.2
    schedule: str = "onecycle"
    warmup: float = 0.2
    plateau_factor: float = 0.2
    plateau_patience: int = 2
    grad_clip: float | None = None
    patience: int | None = 10
    translate: int = 2
    flip: bool = True
    cutout: int = 0
    alternate_flip: bool = False
    tta: int | bool = True
    arch: str = "resnet"
    width: int | None = None
    blocks: tuple[int, ...] = (0, 1, 0, 1)
    activation: str = "relu"
    device: str = "auto"
    seed: int = 0
    amp: bool | None = None
    channels_last: bool | None = None
    compile: bool = False
    eval_batch_size: int = 1024
    train_score_images: int | None = 10_000
    resume: bool = False
    lookahead: bool = False
    bias_lr_scale: float = 1.0
    bias_decay: bool = False
    whiten_bias_epochs: float = 0.0

    def __post_init__(self) -> None:
        def check(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(f"cnn config: {message}")

        # types first: a string "no" for a flag would read as true, 64.5 images per batch
        # or an infinite epoch count would fail (or never end) hours later
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            check(_accepts(hints[f.name], value),
                  f"{f.name} must be {_describe(hints[f.name])}, not {value!r}")

        check(self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}")
        check(self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}")
        check(self.activation in ACTIVATIONS, f"activation must be one of {', '.join(ACTIVATIONS)}")
        check(self.device in DEVICES or self.device.startswith("cuda:"),
              f"device must be one of {', '.join(DEVICES)} or cuda:N, not {self.device!r}")
        check(self.epochs is None or self.epochs > 0, "epochs must be positive")
        check(self.time_budget is None or self.time_budget > 0, "time_budget must be positive seconds")
        check(self.batch_size is None or self.batch_size >= 2, "batch_size must be at least 2")
        check(self.lr is None or self.lr > 0, "lr must be positive")
        check(0 <= self.warmup < 1, "warmup is a fraction of training in [0, 1)")
        check(0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)")
        check(0 < self.plateau_factor < 1, "plateau_factor must be in (0, 1)")
        check(self.grad_clip is None or self.grad_clip > 0, "grad_clip must be positive")
        check(self.patience is None or self.patience >= 1, "patience must be at least 1")
        check(0 <= self.translate <= 8 and 0 <= self.cutout <= 32, "translate in 0..8, cutout in 0..32")
        check(self.width is None or self.width >= 1, "width must be positive")
        check(len(self.blocks) == 4 and all(b >= 0 for b in self.blocks),
              "blocks needs 4 non-negative counts (stem and 3 stages)")
        check(self.eval_batch_size >= 1, "eval_batch_size must be positive")
        check(self.train_score_images is None or self.train_score_images >= 1,
              "train_score_images must be positive (or absent: every train image)")
        check(self.arch in ARCHITECTURES, f"arch must be one of {', '.join(ARCHITECTURES)}")
        check(self.tta in (0, 1, 2), "tta must be 0 (off), 1 (mirror) or 2 (mirror and translate)")
        check(self.seed >= 0, "seed must be a non-negative integer, as a classic pipeline's")
        check(self.bias_lr_scale > 0, "bias_lr_scale must be positive")
        check(self.whiten_bias_epochs >= 0, "whiten_bias_epochs must be >= 0")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CNNConfig:
        """Build from a mapping (a TOML table, JSON); unknown keys are an error.

        Keys may use dashes or underscores (``time-budget`` or ``time_budget``). A ``recipe``
        key (see ``RECIPES``) fills in its settings for every key not given.
        """
        known = {f.name for f in fields(cls)}
        clean = {str(k).replace("-", "_"): v for k, v in d.items()}
        if "recipe" in clean:
            recipe = clean.pop("recipe")
            if recipe not in RECIPES:
                raise ConfigError(f"cnn config: recipe must be one of {', '.join(RECIPES)}, not {recipe!r}")
            clean = {**RECIPES[recipe], **clean}
        unknown = sorted(set(clean) - known)
        if unknown:
            raise ConfigError(f"cnn config: unknown key(s) {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(known))}")
        if isinstance(clean.get("blocks"), list):  # TOML and JSON give a list; each count is checked
            clean["blocks"] = tuple(clean["blocks"])
        return cls(**clean)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["blocks"] = list(self.blocks)
        return d

    def replace(self, **changes: Any) -> CNNConfig:
        """A copy with some fields changed (validated again); ``None`` values are ignored."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def resolved(self, device: torch.device) -> CNNConfig:
        """This config with every ``None`` default filled in for ``device``."""
        table = AIRBENCH_DEVICE_DEFAULTS if self.arch == "airbench" else DEVICE_DEFAULTS
        width, epochs, batch, channels_last, amp = table[device.type]
        batch = self.batch_size or batch
        lr = DEFAULT_LR[self.optimizer]
        if self.arch == "airbench" and self.optimizer == "sgd":
            lr = AIRBENCH_LR_PER_1024 * batch / 1024
        # A budget alone decides the length, except for airbench on a GPU: its 9.9 epochs take
        # seconds there, and more time buys little; the budget is then only a limit.
        budget_decides = self.time_budget and not (self.arch == "airbench" and device.type == "cuda")
        return dataclasses.replace(
            self,
            width=self.width or width,
            epochs=self.epochs if self.epochs is not None or budget_decides else epochs,
            batch_size=batch,
            lr=self.lr or lr,
            weight_decay=DEFAULT_WEIGHT_DECAY[self.optimizer] if self.weight_decay is None
            else self.weight_decay,
            channels_last=channels_last if self.channels_last is None else self.channels_last,
            amp=self.amp if self.amp is not None else (cpu_has_bfloat16_units() if amp is None
                                                       else amp),
        )

    def net_config(self, n_classes: int, in_channels: int = 3) -> NetConfig:
        if self.arch == "airbench":
            w = self.width or AIRBENCH_DEVICE_DEFAULTS["cpu"][0]
            return NetConfig(widths=(w, 4 * w, 4 * w), blocks=(0, 0, 0), activation=self.activation,
                             scale=1 / 9, bn_momentum=0.4, n_classes=n_classes, in_channels=in_channels,
                             arch="airbench")
        w = self.width or DEVICE_DEFAULTS["cpu"][0]
        return NetConfig(widths=(w, 2 * w, 4 * w, 8 * w), blocks=tuple(self.blocks),
                         activation=self.activation, n_classes=n_classes, in_channels=in_channels)
