"""scikit-learn transformers over the feature functions, and named feature combinations.

The transformers are stateless: ``fit`` only checks the parameters and records the input
shape, and ``transform`` also works unfitted (scikit-learn's ``requires_fit=False`` tag),
so ``make_features("hog+color").transform(images)`` is enough to extract features (feature
sets are described and built by :class:`cvpipe.features.spec.FeatureSpec`). They
clone, pickle, and nest in ``Pipeline``, ``FeatureUnion`` and ``GridSearchCV`` (e.g.
``param_grid={"features__hog__orientations": [9, 12]}``).

Inputs are batches of images ``(N, H, W, C)`` / ``(N, H, W)``, or flattened rows
``(N, H * W * C)`` when ``image_shape`` is given (one dimension may be -1 and is inferred).
Outputs are float32 ``(N, D)`` arrays.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.pipeline import FeatureUnion
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.validation import validate_data

from cvpipe.device import n_workers
from cvpipe.errors import ConfigError
from cvpipe.features._common import (
    RUNTIME_CONSTRAINTS,
    check_device,
    check_images,
    is_tensor,
)
from cvpipe.features._hog import CONSTRAINTS as HOG_CONSTRAINTS
from cvpipe.features._hog import HOGParams, hog_checked
from cvpipe.features.color import CONSTRAINTS as COLOR_CONSTRAINTS
from cvpipe.features.color import ColorHistParams, histogram_checked

log = logging.getLogger(__name__)

def _image_shape(value: Any) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        shape = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"image_shape must be a tuple such as (32, 32, 3), not {value!r}") from None
    if len(shape) not in (2, 3) or any(v == 0 or v < -1 for v in shape) or shape.count(-1) > 1:
        raise ConfigError(
            f"image_shape must be (H, W) or (H, W, C) with positive sizes and at most one -1, "
            f"not {value!r}"
        )
    return shape


def _as_hwc(shape: tuple[int, ...]) -> tuple[int, ...]:
    """``(H, W, C)`` of one image's shape: (H, W) is one channel."""
    return (*shape, 1) if len(shape) == 2 else shape


class _ImageTransformer(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Input handling shared by the image transformers (not a public class).

    Parameters are checked once per fit: :meth:`fit` checks every value against
    ``_parameter_constraints`` (each feature declares its own next to its parameter object,
    the run-time ones are shared), builds the validated parameter object and keeps it as
    ``params_``, which :meth:`transform` then hands down to the computation unchecked. An
    unfitted transformer (scikit-learn's ``requires_fit=False``) checks them on every call;
    :meth:`set_params` drops ``params_`` so a changed value is checked before it is used.

    The input is checked once per call too: image batches by
    :func:`~cvpipe.features._common.check_images`, flattened rows by scikit-learn's
    ``validate_data``; the computation takes the checked batch as it is.
    """

    _parameter_constraints: dict = dict(RUNTIME_CONSTRAINTS)

    def describe(self) -> str:
        """What the features are, in a few words, for reports (the parameters that matter)."""
        return type(self).__name__

    def _make_params(self) -> Any:  # pragma: no cover - abstract
        """The validated parameter object, from values that met the constraints."""
        raise NotImplementedError

    def _extract(self, images: Any, params: Any, out: Any = None) -> Any:  # pragma: no cover
        raise NotImplementedError

    def _n_out(self, image_shape: tuple[int, ...], params: Any) -> int:  # pragma: no cover
        raise NotImplementedError

    def _validate_params(self) -> None:
        try:
            super()._validate_params()
        except InvalidParameterError as exc:  # the error every cvpipe parameter raises
            raise ConfigError(str(exc)) from None

    def _validated_params(self) -> Any:
        """Check every parameter (its declared constraint, then how the values fit together)
        and return the validated parameter object."""
        self._validate_params()
        _image_shape(self.image_shape)
        check_device(self.device, self.backend)
        n_workers(self.n_jobs)
        return self._make_params()

    def _params(self) -> Any:
        """The parameter object: the one ``fit`` validated, else validated now."""
        params = self.__dict__.get("params_")
        return params if params is not None else self._validated_params()

    def set_params(self, **params: Any) -> _ImageTransformer:
        self.__dict__.pop("params_", None)
        return super().set_params(**params)

    def _check_input(self, X: Any, reset: bool) -> tuple[Any, tuple[int, ...]]:
        """The call's one input check: ``((N, H, W, C) images, shape of one image as given)``
        from image batches or flattened rows."""
        if not is_tensor(X) and not hasattr(X, "ndim"):
            X = np.asarray(X)
        if X.ndim >= 3:
            return check_images(X, channels=None, name="X"), tuple(int(s) for s in X.shape[1:])
        if is_tensor(X):
            images = self._unflatten(X)
            return check_images(images, channels=None, name="X"), tuple(images.shape[1:])
        rows = validate_data(self, X, reset=reset, dtype="numeric", ensure_all_finite=True)
        images = self._unflatten(rows)
        return (images if images.ndim == 4 else images[..., None]), tuple(images.shape[1:])

    def _conform(self, shape: tuple[int, ...], reset: bool) -> None:
        """Record (``fit``) or compare (``transform``) the shape of one input image."""
        wanted = _image_shape(self.image_shape)
        if wanted is not None and len(shape) == len(wanted):
            for got, want in zip(shape, wanted, strict=True):
                if want != -1 and got != want:
                    raise ValueError(
                        f"images of shape {shape} do not match image_shape={self.image_shape}"
                    )
        n_feat = int(np.prod(shape))
        if reset:
            self.n_features_in_ = n_feat
            self.image_shape_ = shape
        elif hasattr(self, "n_features_in_"):
            if n_feat != self.n_features_in_:
                raise ValueError(
                    f"X has {n_feat} features, but {type(self).__name__} is expecting "
                    f"{self.n_features_in_} features as input (images of shape "
                    f"{self.image_shape_})."
                )
            if _as_hwc(shape) != _as_hwc(tuple(self.image_shape_)):
                raise ValueError(
                    f"images of shape {shape} differ from the shape {self.image_shape_} seen in fit"
                )

    def _as_images(self, X: Any, reset: bool) -> Any:
        """(N, H, W, C) images from image batches or flattened rows, checked once; records
        or compares the shape seen by ``fit``."""
        images, shape = self._check_input(X, reset)
        self._conform(shape, reset)
        return images

    def _unflatten(self, rows: Any) -> Any:
        shape = _image_shape(self.image_shape)
        if shape is None:
            raise ValueError(
                f"{type(self).__name__} got 2-D input of shape {tuple(rows.shape)}: pass "
                f"images of shape (N, H, W[, C]), or set image_shape to unflatten rows"
            )
        known = int(np.prod([s for s in shape if s != -1]))
        n_feat = int(rows.shape[1])
        if (-1 in shape and n_feat % known) or (-1 not in shape and n_feat != known):
            raise ValueError(
                f"X has {n_feat} features per row, which do not form images of shape "
                f"{self.image_shape}"
            )
        return rows.reshape((rows.shape[0], *shape))

    def fit(self, X: Any, y: Any = None) -> _ImageTransformer:
        """Check the parameters and the input; learn nothing else.

        Parameters
        ----------
        X : (N, H, W[, C]) array_like, or (N, n_features) with ``image_shape``
            Training images.
        y : ignored

        Returns
        -------
        self
        """
        self.__dict__.pop("params_", None)
        params = self._validated_params()
        images = self._as_images(X, reset=True)
        self._n_features_out = self._n_out(tuple(images.shape[1:]), params)
        self._fit_images(images, params)
        self.params_ = params
        return self

    def _fit_images(self, images: Any, params: Any) -> None:
        """Learn from the checked (N, H, W, C) training images: nothing, unless overridden."""

    def transform(self, X: Any) -> np.ndarray:
        """Features of each image.

        Parameters
        ----------
        X : (N, H, W[, C]) array_like or torch.Tensor, or (N, n_features) with ``image_shape``
            Images to describe.

        Returns
        -------
        (N, D) ndarray of float32
        """
        params = self._params()
        out = self._extract(self._as_images(X, reset=False), params)
        if is_tensor(out):
            out = out.detach().cpu().numpy()
        return np.asarray(out, dtype=np.float32)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.allow_nan = False
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags


class HOGTransformer(_ImageTransformer):
    """Histogram of Oriented Gradients features (see :func:`cvpipe.features.hog`).

    Parameters
    ----------
    orientations, pixels_per_cell, cells_per_block, block_norm, transform_sqrt, channel_axis
        As in :func:`cvpipe.features.hog`.
    image_shape : tuple or None
        ``(H, W[, C])`` to unflatten 2-D input rows; one entry may be -1.
    device, backend, n_jobs
        Where and how to compute, as in :func:`cvpipe.features.hog`.

    Attributes
    ----------
    n_features_in_ : int
        Values per image seen by ``fit`` (H * W * C).
    image_shape_ : tuple of int
        Shape of one image seen by ``fit``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.zeros((4, 32, 32, 3), np.uint8)
    >>> HOGTransformer(device="cpu").fit_transform(x).shape
    (4, 324)
    """

    _parameter_constraints: dict = {**HOG_CONSTRAINTS, **RUNTIME_CONSTRAINTS}

    def __init__(
        self,
        orientations: int = 9,
        pixels_per_cell: tuple[int, int] = (8, 8),
        cells_per_block: tuple[int, int] = (2, 2),
        block_norm: str = "L2-Hys",
        transform_sqrt: bool = False,
        channel_axis: int | None = -1,
        image_shape: tuple[int, ...] | None = None,
        device: Any = None,
        backend: str | None = None,
        n_jobs: int | None = -1,
    ):
        self.orientations = orientations
        self.pixels_per_cell = pixels_per_cell
        self.cells_per_block = cells_per_block
        self.block_norm = block_norm
        self.transform_sqrt = transform_sqrt
        self.channel_axis = channel_axis
        self.image_shape = image_shape
        self.device = device
        self.backend = backend
        self.n_jobs = n_jobs

    def describe(self) -> str:
        p = self._validated_params()
        return (f"HOG: {p.orientations} orientations, {_by(p.pixels_per_cell)}-pixel cells, "
                f"{_by(p.cells_per_block)}-cell blocks, {p.block_norm}")

    def _make_params(self) -> HOGParams:
        return HOGParams.from_checked(
            self.orientations,
            self.pixels_per_cell,
            self.cells_per_block,
            self.block_norm,
            self.transform_sqrt,
            self.channel_axis,
        )

    def _n_out(self, image_shape: tuple[int, ...], params: HOGParams) -> int:
        return params.layout(image_shape[0], image_shape[1])[4]

    def _extract(self, images: Any, params: HOGParams, out: Any = None) -> Any:
        return hog_checked(images, params, device=self.device, backend=self.backend,
                           n_jobs=self.n_jobs, out=out)


class ColorHistogramTransformer(_ImageTransformer):
    """Colour histogram features (see :func:`cvpipe.features.color_histogram`).

    Single-channel (gray) images get an intensity histogram with as many bins as one cell's
    colour histogram (at most 256), whatever ``space`` says, so one feature set serves colour
    and grayscale datasets.

    Parameters
    ----------
    space, bins, joint, grid, norm, ranges
        As in :func:`cvpipe.features.color_histogram`.
    image_shape : tuple or None
        ``(H, W[, C])`` to unflatten 2-D input rows; one entry may be -1.
    device, backend, n_jobs
        Where and how to compute.

    Attributes
    ----------
    n_features_in_ : int
        Values per image seen by ``fit``.
    image_shape_ : tuple of int
        Shape of one image seen by ``fit``.
    """

    _parameter_constraints: dict = {**COLOR_CONSTRAINTS, **RUNTIME_CONSTRAINTS}

    def __init__(
        self,
        space: str = "hsv",
        bins: int | tuple[int, ...] = (8, 4, 4),
        joint: bool = True,
        grid: int | tuple[int, int] = (1, 1),
        norm: str | None = "l1",
        ranges: tuple[tuple[float, float], ...] | None = None,
        image_shape: tuple[int, ...] | None = None,
        device: Any = None,
        backend: str | None = None,
        n_jobs: int | None = -1,
    ):
        self.space = space
        self.bins = bins
        self.joint = joint
        self.grid = grid
        self.norm = norm
        self.ranges = ranges
        self.image_shape = image_shape
        self.device = device
        self.backend = backend
        self.n_jobs = n_jobs

    def describe(self) -> str:
        p = self._validated_params()
        bins = "x".join(map(str, p.bins)) + (" joint" if p.joint else " per-channel")
        cells = f", {_by(p.grid)} cells" if tuple(p.grid) != (1, 1) else ""
        return f"{p.space.upper()} histogram: {bins} bins{cells}"

    def _make_params(self) -> ColorHistParams:
        return ColorHistParams.from_checked(
            self.space, self.bins, self.joint, self.grid, self.norm, self.ranges
        )

    def _n_out(self, image_shape: tuple[int, ...], params: ColorHistParams) -> int:
        params = params.for_channels(int(image_shape[2]) if len(image_shape) > 2 else 1)
        params.check_size(image_shape[0], image_shape[1])
        return params.n_features()

    def _extract(self, images: Any, params: ColorHistParams, out: Any = None) -> Any:
        # gray images: an intensity histogram (ColorHistParams.for_channels)
        return histogram_checked(images, params.for_channels(int(images.shape[-1])),
                                 device=self.device, backend=self.backend, n_jobs=self.n_jobs,
                                 out=out)


class PixelTransformer(_ImageTransformer):
    """Raw pixels as features: each image flattened to float32, 8-bit values scaled to [0, 1].

    Parameters
    ----------
    scale : bool
        Divide uint8 images by 255 (float images are kept as they are).
    image_shape : tuple or None
        ``(H, W[, C])`` to unflatten 2-D input rows; one entry may be -1.
    device, backend, n_jobs
        Accepted for a uniform interface; flattening runs on the host.
    """

    _parameter_constraints: dict = {"scale": ["boolean"], **RUNTIME_CONSTRAINTS}

    def __init__(
        self,
        scale: bool = True,
        image_shape: tuple[int, ...] | None = None,
        device: Any = None,
        backend: str | None = None,
        n_jobs: int | None = -1,
    ):
        self.scale = scale
        self.image_shape = image_shape
        self.device = device
        self.backend = backend
        self.n_jobs = n_jobs

    def describe(self) -> str:
        return "raw pixels" + (", scaled to [0, 1]" if self.scale else "")

    def _make_params(self) -> bool:
        return bool(self.scale)

    def _n_out(self, image_shape: tuple[int, ...], params: bool) -> int:
        return int(np.prod(image_shape))

    def _extract(self, images: Any, scale: bool, out: Any = None) -> Any:
        if is_tensor(images):
            images = images.detach().cpu().numpy()
        x = np.asarray(images)
        flat = x.reshape(len(x), int(np.prod(x.shape[1:])))  # -1 cannot be solved for 0 images
        if out is None:
            out = np.empty(flat.shape, dtype=np.float32)
        np.copyto(out, flat, casting="unsafe")
        if scale and x.dtype == np.uint8:
            out *= np.float32(1 / 255)
        return out


def _by(pair: Any) -> str:
    return "x".join(str(int(v)) for v in pair)


class ImageFeatureUnion(FeatureUnion):
    """A :class:`~sklearn.pipeline.FeatureUnion` of cvpipe image transformers that writes
    every component's features straight into one output array (no per-component arrays
    and no final ``hstack`` copy). Anything else -- other transformers, weights, pandas
    output, metadata routing -- falls back to ``FeatureUnion``'s own ``transform``."""

    def _fusable(self) -> bool:
        parts = [t for _, t in self.transformer_list if t not in ("drop", None)]
        config = getattr(self, "_sklearn_output_config", {}) or {}
        return (
            bool(parts)
            and all(isinstance(t, _ImageTransformer) for t in parts)
            and len({repr(t.image_shape) for t in parts}) == 1  # one unflattening for all
            and not self.transformer_weights
            and config.get("transform", "default") == "default"
        )

    def transform(self, X: Any, **params: Any) -> Any:
        """Features of each image from every component, side by side; (N, D) float32."""
        if params or not self._fusable():
            return super().transform(X, **params)
        parts = [t for _, t in self.transformer_list if t not in ("drop", None)]
        images, shape = parts[0]._check_input(X, reset=False)  # once for every component
        prepared = []
        for t in parts:
            t._conform(shape, reset=False)
            params = t._params()
            prepared.append((params, t._n_out(tuple(images.shape[1:]), params)))
        out = np.empty((len(images), sum(w for _, w in prepared)), dtype=np.float32)
        start = 0
        for t, (p, width) in zip(parts, prepared, strict=True):
            view = out[:, start : start + width]
            if is_tensor(images):  # computed where the tensor lives, then copied here
                res = t._extract(images, p)
                view[...] = res.detach().cpu().numpy() if is_tensor(res) else res
            else:
                t._extract(images, p, out=view)
            start += width
        return out

    def fit_transform(self, X: Any, y: Any = None, **params: Any) -> Any:
        """Fit every component (they only check their input), then :meth:`transform`."""
        if params or not self._fusable():
            return super().fit_transform(X, y, **params)
        return self.fit(X, y).transform(X)
