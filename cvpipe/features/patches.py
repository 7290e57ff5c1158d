"""Learned patch features: one layer of features learned without labels from image patches.

Coates, Lee & Ng, "An Analysis of Single-Layer Networks in Unsupervised Feature Learning",
AISTATS 2011. ``fit`` learns from training images only, without their labels:

0. with ``downscale`` = f > 1, replace each image by the means of its f x f pixel blocks: the
   same patches then cover f times the pixels, a coarser scale of the image (not in the paper;
   a feature set of two ``patches`` components, the second with ``downscale=2``, joins two
   scales: on CIFAR-10's validation split +0.3 point at K = 1,600, none at K = 3,200, so no
   shipped pipeline takes it; the README's encoder table);
1. sample ``n_patches`` patches of ``patch_size`` x ``patch_size`` pixels at random;
2. normalise each patch's brightness and contrast:
   ``(x - mean(x)) / sqrt(var(x) + norm_eps)`` (on the 0-255 scale);
3. learn ZCA whitening, ``W = V diag(1 / sqrt(lambda + whiten_eps)) V^T`` from the eigen-
   decomposition of the normalised patches' covariance;
4. learn a dictionary of ``n_centroids`` centroids by k-means (Lloyd's iterations on the
   whitened patches, initialised with distinct random patches).

``transform`` describes each image by every patch at ``stride`` (27 x 27 = 729 patches of a
32 x 32 image at stride 1; 11 x 11 at ``downscale=2``), after stage 0:

5. normalise and whiten each patch as in fit;
6. encode it against the dictionary: ``"triangle"``, ``max(0, mean(z) - z_k)`` of the
   distances ``z_k`` to the centroids (the paper's k-means "triangle" activation), or
   ``"soft"``, ``max(0, c_k . x - alpha)`` (soft threshold, Coates & Ng, ICML 2011), or
   ``"soft-split"``, the soft threshold with polarity split against the unit-length centroids
   ``a_k = c_k / |c_k|``: ``max(0, a_k . x - alpha)`` and ``max(0, -a_k . x - alpha)``, two
   codes per centroid (Coates & Ng's best encoder), or ``"knn"``, 1 for each of the
   ``knn_fraction * K`` centroids nearest to the patch and 0 for the others (the k-nearest-atom
   encoding of Thiry, Arbel, Belilovsky & Oyallon, ICLR 2021);
7. sum the codes over the cells of a ``pooling`` grid of the patch positions (2 x 2: the four
   quadrants), giving ``pooling[0] * pooling[1] * n_centroids`` float32 values per image; a
   list of grids pools over each and joins the sums (a spatial pyramid, Lazebnik, Schmid &
   Ponce, CVPR 2006: ``[[1, 1], [2, 2], [3, 3]]``, 14 cells);
8. raise the sums to ``power`` (1 in the paper; 0.5, a square root, tempers the large sums of
   common centroids, the "power normalisation" of Perronnin, Sanchez & Mensink, ECCV 2010).

With ``flip_invariant=True`` (not in the paper) the features of an image and of its mirror image
are the same: the whitening is learned from statistics made mirror-symmetric (the patches' mean
and covariance averaged with their mirror images'), the dictionary is K/2 centroids and their
mirror images (k-means in which a patch may join a centroid's mirror, then counting as its own
mirror image), the pooling cells are mirror images of one another (with an odd number of
positions and an even number of cells the middle column belongs to both halves), and each
(cell, centroid) sum is added to the one of its mirror, giving
``pooling[0] * pooling[1] * n_centroids / 2`` values. A linear classifier with an L2 penalty on
these (``power=1``) is the one it would learn from the images and their mirror images (flip
augmentation: that problem is symmetric, so is its unique solution), at half the features and
no second encoding of the training set; with another power the features are still those of
the mirror image.

The encoding is a matrix product per chunk of images, computed on all CPU cores (NumPy, a
few images per thread so each chunk's codes stay in cache; the soft encodings' threshold and
pooling fused into one compiled pass over the products, ``_threshold_pool``) or on a CUDA GPU
(PyTorch, the same stages); the two agree to float32 rounding.
"""

from __future__ import annotations

import itertools
from numbers import Integral, Real
from typing import Any

import numpy as np
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from cvpipe.device import n_workers
from cvpipe.errors import ConfigError
from cvpipe.features._common import (
    RUNTIME_CONSTRAINTS,
    is_tensor,
    resolve_backend,
    run_chunked,
    to_device_tensor,
)
from cvpipe.features._threshold_pool import threshold_cell_sums
from cvpipe.features.patch_geometry import (
    Grids,
    _cells,
    _mirror_cells,
    _normalise,
    block_means,
    extract_patches,
    mirror_index,
    pooling_grids,
)
from cvpipe.features.transformers import _ImageTransformer

ENCODINGS = ("triangle", "soft", "soft-split", "knn")
#: Codes (patches x centroids) encoded at once per thread: 8M float32, 32 MiB (measured best).
CHUNK_CODES = 1 << 23
#: Learned state, as saved in a model's files (all float32).
STATE = ("mean_", "whitening_", "centroids_")
class PatchFeatures(_ImageTransformer):
    """Single-layer features learned from image patches (Coates, Lee & Ng 2011).

    Parameters
    ----------
    patch_size : int
        Side of the square patches, in pixels (6).
    stride : int
        Step between the patches encoded by ``transform`` (1).
    n_centroids : int
        Dictionary size K (1600).
    encoding : {"triangle", "soft", "soft-split", "knn"}
        K-means triangle activation, soft threshold at ``alpha``, soft threshold with
        polarity split (two codes per centroid: twice the features), or the indicator of the
        ``knn_fraction * K`` nearest centroids.
    alpha : float
        Threshold of the soft encodings.
    knn_fraction : float
        Share of the centroids the ``"knn"`` encoding marks as near (0.4, Thiry et al.'s).
    downscale : int
        Side of the pixel blocks averaged before anything else (1: the images as given; 2:
        16 x 16 images from 32 x 32, patches covering 12 x 12 pixels, a quarter of the patch
        positions to encode). The image sides must be multiples of it.
    pooling : int, (int, int) or list of (int, int)
        Grid of cells over which codes are summed (2 x 2: the quadrants), or several grids
        whose sums are joined in order (a spatial pyramid).
    power : float
        Exponent applied to the sums (1: the paper's features; 0.5: their square roots).
    whiten_eps : float
        Added to the covariance eigenvalues before whitening (0.1).
    norm_eps : float
        Added to each patch's variance before contrast normalisation (10, on the 0-255 scale).
    n_patches : int
        Random patches ``fit`` learns from (400,000).
    max_iter : int
        K-means iterations (Lloyd's).
    random_state : int
        Seeds the patch sample and the dictionary's initialisation.
    image_shape, device, backend, n_jobs
        As for the other image transformers.
    flip_invariant : bool
        The same features for an image and its mirror image (see the module's notes; needs an
        even ``n_centroids``): a linear classifier on them learns what flip augmentation
        would teach it, with ``pooling[0] * pooling[1] * n_centroids / 2`` features (per grid).

    Attributes
    ----------
    mean_ : (P,) ndarray of float32
        Mean of the normalised training patches (P = patch_size**2 * channels).
    whitening_ : (P, P) ndarray of float32
        ZCA whitening matrix.
    centroids_ : (K, P) ndarray of float32
        The dictionary, in whitened patch space (with ``flip_invariant``, centroid K/2 + k is
        the mirror image of centroid k).
    inertia_ : float
        Mean squared distance of the training patches to their centroid in the last iteration.
    n_iter_ : int
        K-means iterations run.
    augmented_ : (P + 2, K) or (P, K) ndarray of float32
        The centroids arranged so that one product gives what is encoded (derived from them):
        squared distances (triangle, knn), dot products (soft), or dot products with the unit
        centroids (soft-split, whose two codes per centroid come from the one product: see
        ``_pool_polarities``).
    n_features_in_, image_shape_
        As for the other image transformers.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.random.default_rng(0).integers(0, 256, (20, 16, 16, 3), dtype=np.uint8)
    >>> f = PatchFeatures(n_centroids=8, n_patches=500, max_iter=3, device="cpu").fit(x)
    >>> f.transform(x).shape
    (20, 32)
    """

    _parameter_constraints: dict = {
        "patch_size": [Interval(Integral, 1, 64, closed="both")],
        "stride": [Interval(Integral, 1, None, closed="left")],
        "n_centroids": [Interval(Integral, 1, 100_000, closed="both")],
        "encoding": [StrOptions(set(ENCODINGS))],
        "alpha": [Interval(Real, None, None, closed="neither")],
        "knn_fraction": [Interval(Real, 0, 1, closed="right")],
        "pooling": ["array-like", Interval(Integral, 1, None, closed="left")],
        "power": [Interval(Real, 0, None, closed="neither")],
        "whiten_eps": [Interval(Real, 0, None, closed="neither")],
        "norm_eps": [Interval(Real, 0, None, closed="left")],
        "n_patches": [Interval(Integral, 1, None, closed="left")],
        "max_iter": [Interval(Integral, 0, None, closed="left")],
        "random_state": [Interval(Integral, 0, None, closed="left")],
        "flip_invariant": ["boolean"],
        "downscale": [Interval(Integral, 1, 64, closed="both")],
        **RUNTIME_CONSTRAINTS,
    }
    #: Parameters added after feature stores were written, left out of a feature set's
    #: effective parameters (its store key) at these defaults (see FeatureComponent.effective).
    _added_defaults: dict = {"downscale": 1}

    def __init__(self, patch_size: int = 6, stride: int = 1, n_centroids: int = 1600,
                 encoding: str = "triangle", alpha: float = 0.25, pooling: Any = (2, 2),
                 whiten_eps: float = 0.1, norm_eps: float = 10.0, n_patches: int = 400_000,
                 max_iter: int = 50, random_state: int = 0, image_shape: tuple[int, ...] | None = None,
                 device: Any = None, backend: str | None = None, n_jobs: int | None = -1,
                 flip_invariant: bool = False, power: float = 1.0, knn_fraction: float = 0.4,
                 downscale: int = 1):
        self.patch_size = patch_size
        self.stride = stride
        self.n_centroids = n_centroids
        self.encoding = encoding
        self.alpha = alpha
        self.pooling = pooling
        self.whiten_eps = whiten_eps
        self.norm_eps = norm_eps
        self.n_patches = n_patches
        self.max_iter = max_iter
        self.random_state = random_state
        self.image_shape = image_shape
        self.device = device
        self.backend = backend
        self.n_jobs = n_jobs
        self.flip_invariant = flip_invariant
        self.power = power
        self.knn_fraction = knn_fraction
        self.downscale = downscale

    # ------------------------------------------------------------------ parameters and size

    def _make_params(self) -> dict[str, Any]:
        if self.flip_invariant and int(self.n_centroids) % 2:
            raise ConfigError(f"flip_invariant features need an even n_centroids (K/2 centroids "
                              f"and their mirror images), not {self.n_centroids}")
        return {"pooling": pooling_grids(self.pooling)}

    def _grid(self, image_shape: tuple[int, ...]) -> tuple[int, int]:
        """Patch positions (rows, columns) in images of ``image_shape``, after stage 0."""
        h, w = int(image_shape[0]), int(image_shape[1])
        factor = int(self.downscale)
        if h % factor or w % factor:
            raise ConfigError(f"downscale={factor} averages {factor}x{factor} pixel blocks: the "
                              f"sides of {h}x{w} images are not multiples of {factor}")
        h, w = h // factor, w // factor
        if h < self.patch_size or w < self.patch_size:
            raise ConfigError(f"images of {h}x{w} pixels are smaller than the {self.patch_size}x"
                              f"{self.patch_size} patches")
        oh = (h - self.patch_size) // self.stride + 1
        ow = (w - self.patch_size) // self.stride + 1
        for gh, gw in pooling_grids(self.pooling):
            if gh > oh or gw > ow:
                raise ConfigError(f"a {gh}x{gw} pooling grid needs at least {gh}x{gw} patch "
                                  f"positions; {h}x{w} images give {oh}x{ow}")
        return oh, ow

    def _n_out(self, image_shape: tuple[int, ...], params: dict[str, Any]) -> int:
        self._grid(image_shape)
        per_cell = self._n_codes() // 2 if self.flip_invariant else self._n_codes()
        return sum(gh * gw for gh, gw in params["pooling"]) * per_cell

    def describe(self) -> str:
        encoder = {"triangle": "k-means triangle", "soft": f"soft threshold {self.alpha:g}",
                   "soft-split": f"soft threshold {self.alpha:g} with polarity split",
                   "knn": f"{self.knn_fraction:g} x K nearest centroids"}[self.encoding]
        cells = "+".join(f"{gh}x{gw}" for gh, gw in pooling_grids(self.pooling))
        power = "" if float(self.power) == 1.0 else f", power {float(self.power):g}"
        flip = ", flip-invariant" if self.flip_invariant else ""
        scale = f" of 1/{self.downscale}-scale images" if int(self.downscale) > 1 else ""
        return (f"learned {self.patch_size}x{self.patch_size} patches{scale}: {encoder}, "
                f"K={self.n_centroids}{flip}, {cells} sums{power}")

    def _n_nearest(self) -> int:
        """Centroids the knn encoding marks as near (at least one)."""
        return max(1, int(round(float(self.knn_fraction) * int(self.n_centroids))))

    def _n_codes(self) -> int:
        """Codes per patch: one per centroid, two with the polarity split."""
        return int(self.n_centroids) * (2 if self.encoding == "soft-split" else 1)

    # ------------------------------------------------------------------ fit: stages 1-4

    def fit(self, X: Any, y: Any = None) -> PatchFeatures:
        """Learn the whitening and the dictionary from the patches of ``X`` (labels unused).

        Parameters
        ----------
        X : (N, H, W[, C]) array_like, or (N, n_features) with ``image_shape``
            Training images, 0-255.
        y : ignored

        Returns
        -------
        self
        """
        return super().fit(X, y)

    def _fit_images(self, images: Any, params: dict[str, Any]) -> None:
        """Stages 1-4 on the checked (N, H, W, C) training images."""
        if is_tensor(images):
            images = images.detach().cpu().numpy()
        if int(self.downscale) > 1:  # stage 0
            images = block_means(images, int(self.downscale))
        rng = np.random.default_rng(self.random_state)
        patches = self._sample(images, rng)
        _normalise(patches, float(self.norm_eps))
        mean = patches.mean(0, dtype=np.float64)
        mirror = mirror_index(self.patch_size, images.shape[-1]) if self.flip_invariant else None
        if mirror is not None:  # the statistics of the patches and their mirror images
            mean = 0.5 * (mean + mean[mirror])
        patches -= mean.astype(np.float32)
        cov = np.atleast_2d(np.cov(patches, rowvar=False, dtype=np.float64))
        if mirror is not None:
            cov = 0.5 * (cov + cov[np.ix_(mirror, mirror)])
        eigval, eigvec = np.linalg.eigh(cov)
        whitening = (eigvec * (1.0 / np.sqrt(np.maximum(eigval, 0) + self.whiten_eps))) @ eigvec.T
        if mirror is not None:  # commutes with mirroring exactly, not only up to rounding
            whitening = 0.5 * (whitening + whitening[np.ix_(mirror, mirror)])
        patches = patches @ whitening.astype(np.float32)
        self.mean_ = mean.astype(np.float32)
        self.whitening_ = whitening.astype(np.float32)
        self.centroids_, self.inertia_, self.n_iter_ = self._kmeans(patches, rng, mirror)
        self._augment()

    def _sample(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Stage 1: ``n_patches`` random patches (float32, one a row)."""
        n, h, w, c = images.shape
        size = self.patch_size
        if h < size or w < size:
            raise ConfigError(f"images of {h}x{w} pixels are smaller than the {size}x{size} patches")
        count = int(self.n_patches)
        idx = rng.integers(0, n, count)
        rows = rng.integers(0, h - size + 1, count)
        cols = rng.integers(0, w - size + 1, count)
        out = np.empty((count, size, size, c), np.float32)
        for start in range(0, count, 65536):  # gathered in blocks: no (count, H, W, C) temporary
            sl = slice(start, start + 65536)
            r = rows[sl, None] + np.arange(size)[None, :]
            q = cols[sl, None] + np.arange(size)[None, :]
            out[sl] = images[idx[sl, None, None], r[:, :, None], q[:, None, :]]
        return out.reshape(count, size * size * c)

    def _kmeans(self, patches: np.ndarray, rng: np.random.Generator,
                mirror: np.ndarray | None = None) -> tuple[np.ndarray, float, int]:
        """Stage 4: Lloyd's k-means from distinct random patches; a cluster left empty is
        re-seeded with a random patch. With ``mirror`` (a permutation of the patch values),
        K/2 centroids are learned with their mirror images: a patch nearest to a mirror image
        counts, mirrored, for its centroid."""
        from scipy import sparse

        k = int(self.n_centroids)
        if k > len(patches):
            raise ConfigError(f"n_centroids={k} is more than the {len(patches)} sampled patches")
        learned = k // 2 if mirror is not None else k

        def full(base: np.ndarray) -> np.ndarray:
            return np.vstack([base, base[:, mirror]]) if mirror is not None else base

        centroids = full(patches[rng.choice(len(patches), learned, replace=False)])
        inertia = float("nan")
        block = 16384
        ones = np.ones((block, 1), np.float32)
        for _ in range(int(self.max_iter)):
            sums = np.zeros((k, patches.shape[1]), np.float64)
            counts = np.zeros(k, np.int64)
            # x . c - |c|^2 / 2 (argmax: the nearest centroid) as one product of contiguous
            # augmented matrices [x, 1] [c^T; -|c|^2 / 2], not a product with the transposed
            # view c.T and a subtraction after it (8% off an iteration: the product dominates)
            augmented = np.vstack([centroids.T, -0.5 * (centroids * centroids).sum(1)[None, :]])
            augmented = np.ascontiguousarray(augmented, np.float32)
            dist_sum = 0.0
            for start in range(0, len(patches), block):
                x = patches[start:start + block]
                scores = np.hstack([x, ones[:len(x)]]) @ augmented
                nearest = scores.argmax(1)
                best = scores[np.arange(len(x)), nearest]
                dist_sum += float(np.maximum((x * x).sum(1) - 2 * best, 0).sum())
                members = sparse.csr_matrix((np.ones(len(x), np.float32), (nearest, np.arange(len(x)))),
                                            shape=(k, len(x)))
                sums += members @ x
                counts += np.bincount(nearest, minlength=k)
            inertia = dist_sum / len(patches)
            if mirror is not None:  # members of a mirror image count, mirrored, for its centroid
                sums = sums[:learned] + sums[learned:][:, mirror]
                counts = counts[:learned] + counts[learned:]
            base = (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)
            empty = np.flatnonzero(counts == 0)
            if len(empty):
                base[empty] = patches[rng.choice(len(patches), len(empty), replace=False)]
            centroids = full(base)
        return centroids, inertia, int(self.max_iter)

    # ------------------------------------------------------------------ transform: stages 5-8

    def _extract(self, images: Any, params: dict[str, Any], out: Any = None) -> Any:
        check_is_fitted(self, STATE)
        backend, device = resolve_backend(images, self.device, self.backend)
        oh, ow = self._grid(tuple(images.shape[1:3]))
        if backend == "torch":
            return self._encode_torch(images, params["pooling"], oh, ow, device)
        n = len(images)
        d = self._n_out(tuple(images.shape[1:]), params)
        if out is None:
            out = np.empty((n, d), np.float32)
        if is_tensor(images):  # the numpy backend asked for with a tensor
            images = images.detach().cpu().numpy()
        # A chunk's codes (patches x K float32) are walked several times: keep them in cache.
        chunk = max(1, CHUNK_CODES // (oh * ow * self._n_codes()))

        def make_worker():
            def work(start: int, stop: int) -> None:
                out[start:stop] = self._encode_numpy(images[start:stop], params["pooling"], oh, ow)
            return work

        from threadpoolctl import threadpool_limits

        # Each thread multiplies on one core; the threads share the cores. The limit is the
        # process's, so it is set once around the threads: set and restored in each of them,
        # the restores raced and could leave NumPy's BLAS on one thread for the rest of the run.
        with threadpool_limits(1 if n_workers(self.n_jobs) > 1 else None):
            run_chunked(n, chunk, self.n_jobs, make_worker)
        return out

    def _encode_numpy(self, images: np.ndarray, pooling: Grids, oh: int, ow: int) -> np.ndarray:
        if int(self.downscale) > 1:  # stage 0, a chunk at a time
            images = block_means(images, int(self.downscale))
        patches = extract_patches(images, self.patch_size, self.stride)
        n = len(patches)
        x = _normalise(patches.reshape(n * oh * ow, -1), float(self.norm_eps))
        x -= self.mean_
        x = x @ self.whitening_
        if self.encoding == "knn":
            # |c|^2 - 2 x.c orders the centroids as their distances to x do
            codes = x @ self.augmented_[:-2] + self.augmented_[-1]
            q = self._n_nearest()
            kth = np.partition(codes, q - 1, axis=1)[:, q - 1:q]
            codes = (codes <= kth).astype(np.float32)
        elif self.encoding == "triangle":
            # squared distances |x|^2 - 2 x.c + |c|^2 as one product of augmented matrices
            ones = np.ones((len(x), 1), np.float32)
            left = np.hstack([x, (x * x).sum(1, keepdims=True), ones])
            codes = left @ self.augmented_
            np.maximum(codes, 0, out=codes)
            np.sqrt(codes, out=codes)
            mu = codes.mean(1, keepdims=True)
            np.subtract(mu, codes, out=codes)
        else:
            # soft and soft-split: the threshold and the finest cells' sums in one pass over the
            # one product (soft-split: the two polarities from it, pooled apart, then interleaved
            # per cell: half the multiplications of [a, -a])
            products = (x @ self.augmented_).reshape(n, oh, ow, -1)
            grids, row_edges, col_edges = self._pool_cells(pooling, oh, ow)
            sums = threshold_cell_sums(products, float(self.alpha), row_edges, col_edges,
                                       split=self.encoding == "soft-split")
            parts = [self._pool_fine(fine, grids, row_edges, col_edges, pooling, np)
                     for fine in sums if fine is not None]
            return self._interleave(parts, pooling, np)
        np.maximum(codes, 0, out=codes)
        return self._pool(codes.reshape(n, oh, ow, -1), pooling, oh, ow, np)

    def _pool_polarities(self, codes: tuple[Any, Any], pooling: Grids, oh: int, ow: int,
                         xp: Any) -> Any:
        """The soft-split features from the thresholded positive and negative codes (each
        (patches, K)): each pooled, then interleaved (``_interleave``)."""
        n = len(codes[0]) // (oh * ow)
        return self._interleave([self._pool(c.reshape(n, oh, ow, -1), pooling, oh, ow, xp)
                                 for c in codes], pooling, xp)

    @staticmethod
    def _interleave(parts: list[Any], pooling: Grids, xp: Any) -> Any:
        """The (n, cells * w) pooled codes of each polarity interleaved per cell as
        ``[a_k, -a_k]`` of their w codes, as were the 2K codes ``[a, -a]`` (with
        ``flip_invariant``, ``[a, -a, mirrors, -mirrors]``, the mirrors merged by the pooling);
        one part (the soft encoding) as it is."""
        if len(parts) == 1:
            return parts[0]
        cells = sum(gh * gw for gh, gw in pooling)
        n = len(parts[0])
        parts = [part.reshape(n, cells, -1) for part in parts]
        both = np.concatenate(parts, 2) if xp is np else xp.cat(parts, 2)
        return both.reshape(n, -1)

    def _augment(self) -> None:
        """``augmented_``: for the triangle and knn encodings (P + 2, K) ``[-2 c; 1; |c|^2]``, so that
        ``[x, |x|^2, 1]`` times it is the squared distances of x to the centroids; for the soft
        ones the (P, K) centroids ``c^T``, or the (P, 2K) signed unit centroids."""
        c = self.centroids_
        if self.encoding in ("triangle", "knn"):
            parts = [-2.0 * c.T, np.ones((1, len(c)), np.float32), (c * c).sum(1)[None, :]]
        elif self.encoding == "soft":
            parts = [c.T]
        else:
            parts = [(c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)).T]
        self.augmented_ = np.ascontiguousarray(np.vstack(parts), np.float32)

    def _encode_torch(self, images: Any, pooling: Grids, oh: int, ow: int, device: Any) -> Any:
        import torch

        mean = torch.from_numpy(self.mean_).to(device)
        whitening = torch.from_numpy(self.whitening_).to(device)
        c = torch.from_numpy(self.centroids_).to(device)
        c_norms = (c * c).sum(1)
        products = torch.from_numpy(self.augmented_).to(device)  # the soft encodings' (P, K)
        x_all = to_device_tensor(images, device)
        if x_all.ndim == 3:
            x_all = x_all[..., None]
        n = len(x_all)
        outs = []
        step = max(1, 32768 // (oh * ow))
        for start in range(0, n, step):
            x = x_all[start:start + step].float()
            if int(self.downscale) > 1:  # stage 0
                x = block_means(x, int(self.downscale))
            # (n, H, W, C) -> every patch, flattened (row, col, channel) as the numpy path
            win = x.unfold(1, self.patch_size, self.stride).unfold(2, self.patch_size, self.stride)
            b = len(win)  # win: (b, oh, ow, C, ps, ps)
            p = win.permute(0, 1, 2, 4, 5, 3).reshape(b * oh * ow, -1)
            p = _normalise(p.clone(), float(self.norm_eps))
            p = (p - mean) @ whitening
            if self.encoding == "knn":
                codes = torch.addmm(c_norms.expand(len(p), -1), p, c.T, alpha=-2.0)
                kth = codes.kthvalue(self._n_nearest(), dim=1, keepdim=True).values
                codes = (codes <= kth).float()
            elif self.encoding == "triangle":
                codes = torch.addmm(c_norms.expand(len(p), -1), p, c.T, alpha=-2.0)
                codes += (p * p).sum(1, keepdim=True)
                codes = codes.clamp_(min=0).sqrt_()
                codes = (codes.mean(1, keepdim=True) - codes).clamp_(min=0)
            elif self.encoding == "soft-split":
                z = p @ products
                parts = ((z - self.alpha).clamp_(min=0), (-z - self.alpha).clamp_(min=0))
                outs.append(self._pool_polarities(parts, pooling, oh, ow, torch))
                continue
            else:
                codes = (p @ products - self.alpha).clamp_(min=0)
            outs.append(self._pool(codes.reshape(b, oh, ow, -1), pooling, oh, ow, torch))
        if not outs:
            return torch.zeros((0, self._n_out(tuple(x_all.shape[1:]), {"pooling": pooling})))
        return torch.cat(outs)

    def _pool_cells(self, pooling: Grids, oh: int, ow: int) -> tuple[list[Any], list[int], list[int]]:
        """Each grid's (row runs, column runs) of the oh x ow patch positions (the columns'
        mirrored with ``flip_invariant``), and the edges of the finest cells all grids' edges
        cut them into."""
        grids = [(_cells(oh, gh), _mirror_cells(ow, gw) if self.flip_invariant else _cells(ow, gw))
                 for gh, gw in pooling]
        row_edges = sorted({e for rows, _ in grids for cell in rows for e in cell})
        col_edges = sorted({e for _, cols in grids for cell in cols for e in cell})
        return grids, row_edges, col_edges

    def _pool(self, codes: Any, pooling: Grids, oh: int, ow: int, xp: Any) -> Any:
        """Stages 7-8: sum over each cell of each pooling grid, raised to ``power``;
        (n, sum of gh * gw * K), grid after grid, cells row-major.
        Flip-invariant: the cells are mirrored left-right, and (row i, column j, centroid k)
        is summed with its mirror (row i, column gw - 1 - j, centroid K/2 + k), for k < K/2."""
        grids, row_edges, col_edges = self._pool_cells(pooling, oh, ow)
        # one pass over the codes: sums over the finest cells every grid's edges cut, from which
        # each grid's cells are added up (a pyramid read the codes once per grid)
        fine = [[codes[:, r0:r1, c0:c1].sum((1, 2)) for c0, c1 in itertools.pairwise(col_edges)]
                for r0, r1 in itertools.pairwise(row_edges)]
        return self._pool_fine(fine, grids, row_edges, col_edges, pooling, xp)

    def _pool_fine(self, fine: Any, grids: list[Any], row_edges: list[int], col_edges: list[int],
                   pooling: Grids, xp: Any) -> Any:
        """``_pool`` from the sums over the finest cells: ``fine[i][j]``, (n, K), the sums of
        rows [row_edges[i], row_edges[i + 1]) and the same of columns."""
        cells = []
        half = fine[0][0].shape[-1] // 2

        def cell_sum(r0: int, r1: int, c0: int, c1: int) -> Any:
            i0, i1, j0, j1 = (row_edges.index(r0), row_edges.index(r1),
                              col_edges.index(c0), col_edges.index(c1))
            return sum(fine[i][j] for i in range(i0, i1) for j in range(j0, j1))

        for (rows, cols), (_, gw) in zip(grids, pooling, strict=True):
            sums = [[cell_sum(r0, r1, c0, c1) for c0, c1 in cols] for r0, r1 in rows]
            if self.flip_invariant:
                sums = [[row[j][:, :half] + row[gw - 1 - j][:, half:] for j in range(gw)] for row in sums]
            cells += [cell for row in sums for cell in row]
        pooled = xp.concatenate(cells, 1) if xp is np else xp.cat(cells, 1)
        return pooled if float(self.power) == 1.0 else pooled ** float(self.power)  # stage 8

    # ------------------------------------------------------------------ learned state

    def get_state(self) -> dict[str, np.ndarray]:
        """The learned arrays by name (float32), to save as data."""
        check_is_fitted(self, STATE)
        return {name: np.ascontiguousarray(getattr(self, name), dtype=np.float32) for name in STATE}

    def set_state(self, state: dict[str, np.ndarray], image_shape: tuple[int, ...]) -> PatchFeatures:
        """Restore what :meth:`fit` learned (from :meth:`get_state`), for images of ``image_shape``."""
        params = self._validated_params()
        missing = [name for name in STATE if name not in state]
        if missing:
            raise ConfigError(f"patch features state lacks {', '.join(missing)}")
        mean, whitening, centroids = (np.asarray(state[n], np.float32) for n in STATE)
        p = self.patch_size ** 2 * (image_shape[2] if len(image_shape) > 2 else 1)
        if (mean.shape != (p,) or whitening.shape != (p, p)
                or centroids.shape != (int(self.n_centroids), p)):
            raise ConfigError(f"patch features state does not fit the parameters ({mean.shape}, "
                              f"{whitening.shape}, {centroids.shape} for {p}-value patches)")
        if self.flip_invariant:
            half = len(centroids) // 2
            mirror = mirror_index(self.patch_size, p // self.patch_size ** 2)
            if not np.allclose(centroids[half:], centroids[:half][:, mirror], atol=1e-5):
                raise ConfigError("patch features state is not mirror-closed, as flip_invariant "
                                  "features need (centroid K/2 + k the mirror image of k)")
        self.mean_, self.whitening_, self.centroids_ = mean, whitening, centroids
        self._augment()
        self.image_shape_ = tuple(int(s) for s in image_shape)
        self.n_features_in_ = int(np.prod(image_shape))
        self._n_features_out = self._n_out(self.image_shape_, params)
        self.params_ = params
        return self

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = True
        return tags
