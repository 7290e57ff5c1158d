"""A compact residual CNN for 32x32 images (ResNet-9 family, after Page's DAWNBench net).

::

    stem      conv3x3(C -> w0) -> BN -> act                             H x W (C: 3 RGB, 1 gray)
    stage i   conv3x3(w[i-1] -> w[i]) -> maxpool2 -> BN -> act          /2 per stage
              + ``blocks[i]`` residual blocks: x + act(BN(conv(act(BN(conv(x))))))
    head      global max pool -> linear(no bias) -> x ``scale``

Any input size of at least 8x8 works (the global pool takes what the stages leave; 32x32
ends at 4x4, 28x28 at 3x3). Convolutions have no bias (BN follows) and He-normal weights; the last BN of every
residual branch starts at zero, so each block starts as the identity. ``widths`` and
``blocks`` set the size: ``(64, 128, 256, 512)`` with ``(0, 1, 0, 1)`` is ResNet-9.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


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

    def __post_init__(self) -> None:
        if len(self.widths) != len(self.blocks) or len(self.widths) < 2:
            raise ValueError("widths and blocks need the same length (stem + at least one stage)")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NetConfig:
        d = dict(d)
        for key in ("widths", "blocks"):
            if key in d:
                d[key] = tuple(int(v) for v in d[key])
        return cls(**d)


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
        x = torch.amax(x, dim=(2, 3))  # global max pool
        return self.head(x) * self.cfg.scale
