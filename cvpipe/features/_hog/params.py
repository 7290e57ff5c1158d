"""HOG's parameters, checked once: :class:`HOGParams`, and the vector length they give."""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral
from typing import Any

from sklearn.utils._param_validation import Interval, Options, StrOptions

from cvpipe.errors import ConfigError
from cvpipe.features._common import as_pair, check_constraints

BLOCK_NORMS = ("L1", "L1-sqrt", "L2", "L2-Hys")
#: The small constant of scikit-image's block normalisation.
EPS = 1e-5
#: Luminance weights of :func:`skimage.color.rgb2gray` (ITU-R BT.709).
GRAY_WEIGHTS = (0.2125, 0.7154, 0.0721)



#: Most orientation bins (half a degree each): beyond, bins hold single gradients.
MAX_ORIENTATIONS = 360

#: What each HOG parameter may be, declared once: :meth:`HOGParams.make` and
#: :class:`~cvpipe.features.HOGTransformer` both check against it.
CONSTRAINTS: dict[str, list[Any]] = {
    "orientations": [Interval(Integral, 1, MAX_ORIENTATIONS, closed="both")],
    "pixels_per_cell": [Interval(Integral, 1, None, closed="left"), "array-like"],
    "cells_per_block": [Interval(Integral, 1, None, closed="left"), "array-like"],
    "block_norm": [StrOptions(set(BLOCK_NORMS))],
    "transform_sqrt": ["boolean"],
    "channel_axis": [None, Options(Integral, {-1, 2})],
}

@dataclass(frozen=True)
class HOGParams:
    """Validated HOG parameters (see :func:`hog`)."""

    orientations: int = 9
    pixels_per_cell: tuple[int, int] = (8, 8)
    cells_per_block: tuple[int, int] = (2, 2)
    block_norm: str = "L2-Hys"
    transform_sqrt: bool = False
    channel_axis: int | None = -1

    @classmethod
    def make(
        cls,
        orientations: Any = 9,
        pixels_per_cell: Any = (8, 8),
        cells_per_block: Any = (2, 2),
        block_norm: Any = "L2-Hys",
        transform_sqrt: Any = False,
        channel_axis: Any = -1,
    ) -> HOGParams:
        """Check raw values against :data:`CONSTRAINTS` and normalise them; raise
        :class:`ConfigError` if one is invalid."""
        values = {"orientations": orientations, "pixels_per_cell": pixels_per_cell,
                  "cells_per_block": cells_per_block, "block_norm": block_norm,
                  "transform_sqrt": transform_sqrt, "channel_axis": channel_axis}
        check_constraints(CONSTRAINTS, values, "hog")
        return cls.from_checked(**values)

    @classmethod
    def from_checked(cls, orientations: Any, pixels_per_cell: Any, cells_per_block: Any,
                     block_norm: Any, transform_sqrt: Any, channel_axis: Any) -> HOGParams:
        """The parameters from values that meet :data:`CONSTRAINTS`: cell and block sizes as
        pairs, plain Python types."""
        if isinstance(orientations, bool):  # an Integral to scikit-learn, not a count here
            raise ConfigError(f"orientations must be an integer from 1 to {MAX_ORIENTATIONS}, "
                              f"not {orientations!r}")
        return cls(
            int(orientations),
            as_pair(pixels_per_cell, "pixels_per_cell"),
            as_pair(cells_per_block, "cells_per_block"),
            str(block_norm),
            bool(transform_sqrt),
            None if channel_axis is None else -1,
        )

    def layout(self, height: int, width: int) -> tuple[int, int, int, int, int]:
        """``(n_cells_row, n_cells_col, n_blocks_row, n_blocks_col, n_features)`` for an image
        of ``height`` x ``width`` pixels; :class:`ConfigError` if the image is too small."""
        (cr, cc), (br, bc) = self.pixels_per_cell, self.cells_per_block
        ncr, ncc = height // cr, width // cc
        nbr, nbc = ncr - br + 1, ncc - bc + 1
        if nbr <= 0 or nbc <= 0:
            raise ConfigError(
                f"images of {height}x{width} pixels are too small for HOG with "
                f"pixels_per_cell={self.pixels_per_cell} and cells_per_block="
                f"{self.cells_per_block}: they need at least {br * cr}x{bc * cc} pixels"
            )
        return ncr, ncc, nbr, nbc, nbr * nbc * br * bc * self.orientations


def hog_feature_count(image_shape: tuple[int, ...], **params: Any) -> int:
    """Length of the HOG vector of one image of shape ``(H, W[, C])`` for ``params``."""
    p = HOGParams.make(**params)
    return p.layout(int(image_shape[0]), int(image_shape[1]))[4]
