"""Colour histograms of batches of images: RGB, HSV, Lab or gray, joint or per channel,
over an optional spatial grid, on the CPU or a CUDA GPU.

Colour conversions follow OpenCV's 8-bit conventions exactly, so a histogram here equals
``cv2.calcHist`` (and ``np.histogramdd``) of ``cv2.cvtColor``'s output for the same bins and
ranges:

======  ====================================  ==========================================
space   channels (uint8)                      definition
======  ====================================  ==========================================
rgb     R, G, B in [0, 255]                   the input
hsv     H in [0, 180), S, V in [0, 255]       ``cv2.COLOR_RGB2HSV``: H is hue in degrees
                                              / 2, S = 255 (max - min) / max, V = max
lab     L, a, b in [0, 255]                   ``cv2.COLOR_RGB2Lab`` (sRGB, D65):
                                              L * 255 / 100, a + 128, b + 128
gray    Y in [0, 255]                         ``cv2.COLOR_RGB2GRAY``:
                                              0.299 R + 0.587 G + 0.114 B (fixed point)
======  ====================================  ==========================================

Float images are taken to lie in [0, 1] and are quantised to 8 bits first
(``round(255 * clip(x, 0, 1))``, like OpenCV's saturating conversion).
"""

from cvpipe.features.color.compute import color_histogram, convert_color, histogram_checked
from cvpipe.features.color.params import (
    CHANNEL_NAMES,
    CONSTRAINTS,
    DEFAULT_RANGES,
    MAX_BINS,
    MAX_GRID,
    NORMS,
    SPACES,
    ColorHistParams,
    color_histogram_size,
)

__all__ = ["CHANNEL_NAMES", "CONSTRAINTS", "DEFAULT_RANGES", "MAX_BINS", "MAX_GRID", "NORMS", "SPACES",
           "ColorHistParams", "color_histogram", "color_histogram_size", "convert_color",
           "histogram_checked"]
