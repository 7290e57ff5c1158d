"""The CNN's two networks: a compact residual net (``arch="resnet"``) and the speed record's
net (``arch="airbench"``); :func:`build_net` makes either from a :class:`NetConfig`.

ResNet (ResNet-9 family, after Page's DAWNBench net)
----------------------------------------------------

::

    stem      conv3x3(C -> w0) -> BN -> act                             H x W (C: 3 RGB, 1 gray)
    stage i   conv3x3(w[i-1] -> w[i]) -> maxpool2 -> BN -> act          /2 per stage
              + ``blocks[i]`` residual blocks: x + act(BN(conv(act(BN(conv(x))))))
    head      global max pool -> linear(no bias) -> x ``scale``

Any input size of at least 8x8 works (the global pool takes what the stages leave; 32x32
ends at 4x4, 28x28 at 3x3). Convolutions have no bias (BN follows) and He-normal weights; the last BN of every
residual branch starts at zero, so each block starts as the identity. ``widths`` and
``blocks`` set the size: ``(64, 128, 256, 512)`` with ``(0, 1, 0, 1)`` is ResNet-9.

Airbench (after Keller Jordan's airbench94, 2024)
-------------------------------------------------
::

    whiten    conv2x2(C -> 2*C*4), frozen: +/- the ZCA eigenvectors of the training patches -> GELU
    group i   conv3x3(-> w[i]) -> maxpool2 -> BN -> GELU -> conv3x3 -> BN -> GELU    i = 0, 1, 2
    head      global max pool -> linear(no bias) -> x ``scale`` (1/9)

The first layer is fixed from the data before training (:meth:`AirbenchNet.init_whitening`),
so the net sees decorrelated patches from the first step; only its bias learns, for the first
epochs. Every 3x3 convolution starts as the identity on its first input channels (dirac
initialisation); batch norms learn only their bias. Any input of at least 9x9 works.

References
----------
.. [1] Page, D. "How to train your ResNet", myrtle.ai, 2018.
.. [2] Jordan, K. "94% on CIFAR-10 in 3.29 seconds on a single GPU", arXiv:2404.00498, 2024.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}
ARCHITECTURES = ("resnet", "airbench")
#: Bounds of a :class:`NetConfig` (the widest shipped net is 512 channels, 1 block a stage).
MAX_WIDTH = 4096
MAX_BLOCKS = 16
MAX_CLASSES = 10_000


@dataclass(frozen=True)
class NetConfig:
    """Architecture of :class:`ResNet`; stored in the model's metadata to rebuild it."""

    widths: tuple[int, ...] = (64, 128, 256, 512)
    blocks: tuple[int, ...] = (0, 1, 0, 1)
    activation: str = "relu"
    scale: float = 0.125
    bn_momentum: float = 0.1
    n_classes: int = 10
    in_channels: int = 3
    arch: str = "resnet"

    def __post_init__(self) -> None:
        # bounds first: a config read from a model.json decides how much memory building takes
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {', '.join(ARCHITECTURES)}, not {self.arch!r}")
        if not (1 <= len(self.widths) <= 8 and all(1 <= w <= MAX_WIDTH for w in self.widths)):
            raise ValueError(f"widths: 1 to 8 values between 1 and {MAX_WIDTH}")
        if not (len(self.blocks) <= 8 and all(0 <= b <= MAX_BLOCKS for b in self.blocks)):
            raise ValueError(f"blocks: up to 8 counts between 0 and {MAX_BLOCKS}")
        if not (2 <= self.n_classes <= MAX_CLASSES and 1 <= self.in_channels <= 4):
            raise ValueError(f"n_classes must be 2 to {MAX_CLASSES}, in_channels 1 to 4")
        if not (0 < self.scale <= 100 and 0 <= self.bn_momentum <= 1):
            raise ValueError("scale must be in (0, 100], bn_momentum in [0, 1]")
        if self.arch == "airbench" and len(self.widths) != 3:
            raise ValueError("the airbench net has 3 conv groups: widths needs 3 values")
        if self.arch == "resnet" and (len(self.widths) != len(self.blocks) or len(self.widths) < 2):
            raise ValueError("widths and blocks need the same length (stem + at least one stage)")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NetConfig:
        """From a mapping (a model.json's ``architecture``); a wrong key, type or value is a
        ValueError or TypeError."""
        d = dict(d)
        for key in ("widths", "blocks"):
            if key in d:
                if not isinstance(d[key], (list, tuple)) or len(d[key]) > 8:
                    raise ValueError(f"{key}: a list of at most 8 integers")
                d[key] = tuple(_int(v, key) for v in d[key])
        for key in ("n_classes", "in_channels"):
            if key in d:
                d[key] = _int(d[key], key)
        for key in ("scale", "bn_momentum"):
            if key in d and (isinstance(d[key], bool) or not isinstance(d[key], (int, float))):
                raise ValueError(f"{key}: a number")
        return cls(**d)

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of every tensor of the net's state, computed without allocating it."""
        with torch.device("meta"):
            return {k: tuple(v.shape) for k, v in build_net(self).state_dict().items()}


def _int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key}: integers, not {value!r}")
    return value


def conv_bn(c_in: int, c_out: int, cfg: NetConfig, pool: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.BatchNorm2d(c_out, momentum=cfg.bn_momentum), ACTIVATIONS[cfg.activation]()]
    return nn.Sequential(*layers)


class Residual(nn.Module):
    """x + f(x), f = two conv-BN-act layers."""

    def __init__(self, width: int, cfg: NetConfig) -> None:
        super().__init__()
        self.f = nn.Sequential(conv_bn(width, width, cfg), conv_bn(width, width, cfg))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.f(x)


class ResNet(nn.Module):
    """The network of the module docstring; input is normalised float (N, C, H, W)."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w, b = cfg.widths, cfg.blocks
        layers: list[nn.Module] = [conv_bn(cfg.in_channels, w[0], cfg)]
        layers += [Residual(w[0], cfg) for _ in range(b[0])]
        for i in range(1, len(w)):
            layers.append(conv_bn(w[i - 1], w[i], cfg, pool=True))
            layers += [Residual(w[i], cfg) for _ in range(b[i])]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(w[-1], cfg.n_classes, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-normal convolutions, unit BN, zero last BN of each residual branch."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, Residual):
                nn.init.zeros_(m.f[-1][-2].weight)  # conv_bn(...)[-2] is its BatchNorm2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        # Global max pool through max's indices: amax's backward splits the gradient among
        # ties, and compiled under bf16 autocast it divided by zero ties (NaN, torch 2.11).
        x = x.flatten(2).max(dim=2).values
        return self.head(x) * self.cfg.scale


class _FrozenScaleBN(nn.BatchNorm2d):
    """Batch norm whose scale stays 1 (only the bias learns), with a tiny epsilon."""

    def __init__(self, width: int, momentum: float) -> None:
        super().__init__(width, eps=1e-12, momentum=momentum)
        self.weight.requires_grad_(False)


def _dirac_conv(c_in: int, c_out: int) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[: min(c_in, c_out)])  # identity on the first channels
    return conv


class ConvGroup(nn.Sequential):
    """conv -> maxpool2 -> BN -> act -> conv -> BN -> act."""

    def __init__(self, c_in: int, c_out: int, cfg: NetConfig) -> None:
        act = ACTIVATIONS[cfg.activation]
        super().__init__(_dirac_conv(c_in, c_out), nn.MaxPool2d(2), _FrozenScaleBN(c_out, cfg.bn_momentum),
                         act(), _dirac_conv(c_out, c_out), _FrozenScaleBN(c_out, cfg.bn_momentum), act())


class AirbenchNet(nn.Module):
    """The airbench network of the module docstring; input is normalised float (N, C, H, W)."""

    whiten_size = 2

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        k, c = self.whiten_size, cfg.in_channels
        self.whiten = nn.Conv2d(c, 2 * c * k * k, k, bias=True)
        self.whiten.weight.requires_grad_(False)
        nn.init.zeros_(self.whiten.bias)
        widths = (2 * c * k * k, *cfg.widths)
        self.groups = nn.Sequential(*[ConvGroup(widths[i], widths[i + 1], cfg) for i in range(3)])
        self.act = ACTIVATIONS[cfg.activation]()
        self.head = nn.Linear(cfg.widths[-1], cfg.n_classes, bias=False)

    @torch.no_grad()
    def init_whitening(self, x: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the frozen first layer from normalised images ``x`` (N, C, H, W).

        Its filters are the eigenvectors of the covariance of all ``k`` x ``k`` patches, each
        divided by the square root of its eigenvalue (+ ``eps``), and their negatives (the
        GELU that follows keeps both signs of each whitened component).
        """
        k, c = self.whiten_size, x.shape[1]
        patches = x.float().unfold(2, k, 1).unfold(3, k, 1)  # (N, C, H', W', k, k)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k).double()
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        filters = (eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + eps)[:, None]).flip(0)
        filters = filters.reshape(c * k * k, c, k, k).to(self.whiten.weight)
        self.whiten.weight.copy_(torch.cat([filters, -filters]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.groups(self.act(self.whiten(x)))
        # Global max pool through max's indices: amax's backward splits the gradient among
        # ties, and compiled under bf16 autocast it divided by zero ties (NaN, torch 2.11).
        x = x.flatten(2).max(dim=2).values
        return self.head(x) * self.cfg.scale


def build_net(cfg: NetConfig) -> nn.Module:
    """The network ``cfg`` describes (its ``arch``), freshly initialised."""
    return AirbenchNet(cfg) if cfg.arch == "airbench" else ResNet(cfg)
