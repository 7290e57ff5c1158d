"""Histogram of Oriented Gradients (HOG) for batches of images, on the CPU or a CUDA GPU.

:func:`hog` reproduces :func:`skimage.feature.hog` (same parameters, same numbers within
float rounding) for a whole ``(N, H, W[, C])`` batch at once, vectorised over the batch
instead of looping over images in Python.

Two implementations share the algorithm:

* 8-bit images (the common case, CIFAR-10) without ``transform_sqrt``: every gradient is a
  pair of integers ``(g_row, g_col)`` in ``[-255, 255]``, so its magnitude, orientation bin
  and rank for the strongest-channel choice come from one precomputed table of
  ``511 * 511`` entries, built with the very float64 expressions scikit-image evaluates.
  The orientation binning is therefore bit-identical to scikit-image's, edge cases included.
* Everything else (float images, ``transform_sqrt``): the gradients are computed in the
  image's float type and the angles in float64, as scikit-image does.

Modules, in the order of the algorithm: :mod:`.params` (the parameters, checked once),
:mod:`.compute` (the entry points, the input's preparation, the choice of backend),
:mod:`.tables` (the 8-bit lookup tables and the package's one cache), :mod:`.numpy_backend`
and :mod:`.torch_backend`.

Reference: N. Dalal and B. Triggs, "Histograms of Oriented Gradients for Human Detection",
CVPR 2005, :doi:`10.1109/CVPR.2005.177`.
"""

from cvpipe.features._hog.compute import hog, hog_cells, hog_checked
from cvpipe.features._hog.params import (
    BLOCK_NORMS,
    CONSTRAINTS,
    EPS,
    GRAY_WEIGHTS,
    MAX_ORIENTATIONS,
    HOGParams,
    hog_feature_count,
)

__all__ = ["BLOCK_NORMS", "CONSTRAINTS", "EPS", "GRAY_WEIGHTS", "MAX_ORIENTATIONS", "HOGParams", "hog",
           "hog_cells", "hog_checked", "hog_feature_count"]
