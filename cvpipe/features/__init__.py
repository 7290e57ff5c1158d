"""Hand-made image features: colour histograms and HOG, as functions and sklearn transformers.

Functions work on whole batches ``(N, H, W[, C])`` at once, on all CPU cores (NumPy +
OpenCV) or on a CUDA GPU (PyTorch), and return float32 ``(N, D)`` matrices:

* :func:`hog` -- Histogram of Oriented Gradients (Dalal & Triggs 2005), equal to
  :func:`skimage.feature.hog` for the same parameters;
* :func:`color_histogram` -- RGB / HSV / Lab / gray histograms, joint or per channel, on a
  spatial grid, equal to ``cv2.calcHist`` of OpenCV's colour conversion.

Transformers for scikit-learn: :class:`HOGTransformer`, :class:`ColorHistogramTransformer`,
:class:`PixelTransformer`, :class:`ScatteringTransformer` (wavelet scattering, by kymatio) and
:class:`PatchFeatures` (learned patch dictionaries). A feature set (``"hog+color"``, or
components with parameters) is described once by :class:`FeatureSpec`, which validates it,
gives its dimension and key, and builds the transformer; :func:`make_features` is its
shortcut.
Pictures: :func:`hog_glyphs`, :func:`plot_hog`, :func:`plot_color_histogram`.
"""

from __future__ import annotations

import lazy_loader

# The names below load their module on first use, so that importing one module of the
# package (e.g. `cvpipe --help` building its parsers) does not import every library.
__getattr__, __dir__, _lazy_names = lazy_loader.attach(__name__, submod_attrs={
    "_common": ["resolve_backend"],
    "_hog": ["BLOCK_NORMS", "HOGParams", "hog", "hog_cells", "hog_feature_count"],
    "color": ["SPACES", "ColorHistParams", "color_histogram", "color_histogram_size", "convert_color"],
    "patches": ["PatchFeatures"],
    "scattering": ["ScatteringTransformer"],
    "spec": ["FEATURE_NAMES", "RUNTIME_PARAMS", "FeatureComponent", "FeatureSpec", "extractor_state",
             "fit_to_shape", "make_features", "restore_extractor"],
    "transformers": ["ColorHistogramTransformer", "HOGTransformer", "ImageFeatureUnion",
                     "PixelTransformer"],
    "visualize": ["hog_glyphs", "plot_color_histogram", "plot_hog"],
})
__all__ = _lazy_names
