"""Seeded, stratified train/validation split used by every model selection."""

from __future__ import annotations

import numbers

import numpy as np

from cvpipe.errors import ConfigError


def check_split_options(val_fraction: float, seed: int) -> None:
    """Refuse a validation share outside [0, 1) or a seed that is not a non-negative integer.

    Raises
    ------
    ConfigError
        Before any data is read: a dataset loader calls it first.
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real) \
            or not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")


def val_count(class_count: int, val_fraction: float) -> int:
    """Images of a class of ``class_count`` that the validation split takes."""
    return int(round(val_fraction * class_count))


def split_sizes(class_counts: list[int], val_fraction: float) -> tuple[int, int]:
    """(train, validation) sizes that :func:`stratified_split` gives classes of these sizes."""
    n_val = sum(val_count(n, val_fraction) for n in class_counts)
    return sum(class_counts) - n_val, n_val


def stratified_split(
    labels: np.ndarray, val_fraction: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) with ``val_fraction`` of each class held out for validation.

    Parameters
    ----------
    labels : ndarray of int, shape (N,)
        Class label of each training image.
    val_fraction : float
        Share of every class that goes to validation, in [0, 1).
    seed : int
        Same seed and labels give the same split on every machine (NumPy's PCG64).

    Returns
    -------
    train_idx, val_idx : ndarray of int64
        Sorted, disjoint indices covering ``range(N)``.
    """
    check_split_options(val_fraction, seed)
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    val = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        n_val = val_count(len(members), val_fraction)
        val.append(rng.permutation(members)[:n_val])
    val_idx = np.sort(np.concatenate(val)) if val else np.empty(0, np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[val_idx] = False
    return np.flatnonzero(mask).astype(np.int64), val_idx.astype(np.int64)
