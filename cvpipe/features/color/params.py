"""Colour histogram parameters, checked once: :class:`ColorHistParams`, and the vector length they give."""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral
from typing import Any

import numpy as np
from sklearn.utils._param_validation import Hidden, Interval, StrOptions

from cvpipe.errors import ConfigError
from cvpipe.features._common import as_pair, check_constraints, is_tensor, torch_module

SPACES = ("rgb", "hsv", "lab", "gray")
NORMS = ("l1", "l2", None)
#: Default value range [lo, hi) of each channel of each space.
DEFAULT_RANGES: dict[str, tuple[tuple[float, float], ...]] = {
    "rgb": ((0, 256), (0, 256), (0, 256)),
    "hsv": ((0, 180), (0, 256), (0, 256)),
    "lab": ((0, 256), (0, 256), (0, 256)),
    "gray": ((0, 256),),
}
CHANNEL_NAMES = {
    "rgb": ("R", "G", "B"),
    "hsv": ("H", "S", "V"),
    "lab": ("L", "a", "b"),
    "gray": ("Y",),
}
MAX_BINS = 1 << 24  # bins of one cell histogram
MAX_GRID = 64  # cells a side of the spatial grid

#: What each colour-histogram parameter may be, declared once: :meth:`ColorHistParams.make`
#: and :class:`~cvpipe.features.ColorHistogramTransformer` both check against it (names are
#: case-insensitive: "HSV" is "hsv").
CONSTRAINTS: dict[str, list[Any]] = {
    "space": [StrOptions(set(SPACES)), Hidden(StrOptions({s.upper() for s in SPACES}))],
    "bins": [Interval(Integral, 1, 256, closed="both"), "array-like"],
    "joint": ["boolean"],
    "grid": [Interval(Integral, 1, MAX_GRID, closed="both"), "array-like"],
    "norm": [StrOptions({"l1", "l2"}), None, Hidden(StrOptions({"L1", "L2", "none"}))],
    "ranges": [None, "array-like"],
}


@dataclass(frozen=True)
class ColorHistParams:
    """Validated colour-histogram parameters (see :func:`color_histogram`)."""

    space: str = "hsv"
    bins: tuple[int, ...] = (8, 4, 4)
    joint: bool = True
    grid: tuple[int, int] = (1, 1)
    norm: str | None = "l1"
    ranges: tuple[tuple[float, float], ...] = DEFAULT_RANGES["hsv"]

    @classmethod
    def make(
        cls,
        space: Any = "hsv",
        bins: Any = (8, 4, 4),
        joint: Any = True,
        grid: Any = (1, 1),
        norm: Any = "l1",
        ranges: Any = None,
    ) -> ColorHistParams:
        """Check raw values against :data:`CONSTRAINTS` and normalise them; raise
        :class:`ConfigError` if one is invalid."""
        values = {"space": space, "bins": bins, "joint": joint, "grid": grid, "norm": norm,
                  "ranges": ranges}
        check_constraints(CONSTRAINTS, values, "color_histogram")
        return cls.from_checked(**values)

    @classmethod
    def from_checked(cls, space: Any, bins: Any, joint: Any, grid: Any, norm: Any,
                     ranges: Any) -> ColorHistParams:
        """The parameters from values that meet :data:`CONSTRAINTS`: names lower-cased, one
        bin count and one range per channel, plain Python types; raise :class:`ConfigError`
        where the values do not fit together."""
        space = space.lower()
        nch = len(DEFAULT_RANGES[space])
        if isinstance(bins, (int, np.integer)) and not isinstance(bins, bool):
            bins = (bins,) * nch
        bins = tuple(bins)
        if len(bins) != nch:
            raise ConfigError(
                f"bins {bins!r}: the {space} space has {nch} channel(s), so give {nch} value(s)"
            )
        for b in bins:
            if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1:
                raise ConfigError(f"bins must be positive integers, not {bins!r}")
            if b > 256:
                raise ConfigError(f"bins {bins!r}: at most 256 per channel (8-bit channels have "
                                  "256 values)")
        grid = as_pair(grid, "grid")
        if max(grid) > MAX_GRID:
            raise ConfigError(f"grid {grid!r}: at most {MAX_GRID} cells a side")
        norm = None if norm is None or norm.lower() == "none" else norm.lower()
        if ranges is None:
            ranges = DEFAULT_RANGES[space]
        try:
            ranges = tuple((float(lo), float(hi)) for lo, hi in ranges)
        except (TypeError, ValueError):
            raise ConfigError(
                f"ranges must be one (low, high) pair per channel, not {ranges!r}"
            ) from None
        if len(ranges) != nch or any(not lo < hi for lo, hi in ranges):
            raise ConfigError(
                f"ranges must be {nch} (low, high) pair(s) with low < high, not {ranges!r}"
            )
        return cls(space, tuple(int(b) for b in bins), bool(joint), grid, norm, ranges)

    def __post_init__(self) -> None:
        if self.n_bins > MAX_BINS:
            raise ConfigError(
                f"bins {self.bins} make {self.n_bins} bins per histogram; at most {MAX_BINS}"
            )

    @property
    def n_bins(self) -> int:
        """Bins of one cell's histogram (all channels)."""
        return int(np.prod(self.bins)) if self.joint else int(sum(self.bins))

    def n_features(self) -> int:
        """Length of the feature vector of one image."""
        return self.grid[0] * self.grid[1] * self.n_bins

    def for_channels(self, channels: int) -> ColorHistParams:
        """The parameters for images of ``channels`` channels: single-channel (gray) images
        have no colour, so any space becomes an intensity histogram (the gray space) with as
        many bins as one cell's histogram here (at most 256); same grid and norm."""
        if channels != 1 or self.space == "gray":
            return self
        return ColorHistParams.make("gray", min(256, self.n_bins), True, self.grid, self.norm)

    def check_size(self, height: int, width: int) -> None:
        if self.grid[0] > height or self.grid[1] > width:
            raise ConfigError(
                f"grid {self.grid} has more cells than the {height}x{width} image has pixels"
            )


def color_histogram_size(
    space: str = "hsv",
    bins: Any = (8, 4, 4),
    joint: bool = True,
    grid: Any = (1, 1),
) -> int:
    """Length of the colour-histogram vector of one image for these parameters."""
    return ColorHistParams.make(space, bins, joint, grid).n_features()


# the values every backend counts: 8-bit, whatever the input type
def _to_uint8(x: Any) -> Any:
    """8-bit version of an (N, H, W, C) batch: uint8 as is, floats as [0, 1] quantised,
    other integers checked to lie in [0, 255]."""
    if is_tensor(x):
        torch = torch_module()
        if x.dtype == torch.uint8:
            return x
        if x.dtype.is_floating_point:
            return torch.round(x.double().clamp(0, 1) * 255).to(torch.uint8)
        if x.dtype == torch.bool:
            return x.to(torch.uint8) * 255
        if x.numel() and (int(x.min()) < 0 or int(x.max()) > 255):
            raise ConfigError("integer images must hold 8-bit values in [0, 255]")
        return x.to(torch.uint8)
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.floating):
        out = np.clip(x, 0, 1, dtype=np.float64) * 255.0
        return np.rint(out, out=out).astype(np.uint8)
    if x.dtype == np.bool_:
        return x.astype(np.uint8) * np.uint8(255)
    if x.size and (x.min() < 0 or x.max() > 255):
        raise ConfigError("integer images must hold 8-bit values in [0, 255]")
    return x.astype(np.uint8)
