"""What every extraction engine shares: the plan (key, layout, chunks left), the work on one
chunk, and the completion record."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from cvpipe import __version__
from cvpipe.config import data_root
from cvpipe.errors import ConfigError, DataError
from cvpipe.features import FeatureSpec, extractor_state
from cvpipe.featurestore.sources import ChunkInput, ImageSource
from cvpipe.featurestore.store import (
    DEFAULT_CHUNK_ROWS,
    FORMAT_VERSION,
    FORMATS,
    NPZ_MAX_BYTES,
    FeatureStore,
    extraction_key,
    load_features,
    rows_bytes,
)
from cvpipe.storage import canonical_json, free_bytes, size_text

log = logging.getLogger(__name__)


@dataclass
class ExtractPlan:
    """An extraction about to run (or already finished: ``manifest`` is set).

    Attributes
    ----------
    store : FeatureStore
        Where it goes.
    source : ImageSource
        What it reads.
    features : FeatureSpec
        What to extract.
    key : str
        Hash of the effective feature parameters and the input's fingerprint.
    n, d, chunk_rows : int
        Rows, feature dimensions, rows per chunk.
    fmt : {"zarr", "npz", "npy"}
        Final format.
    todo : list of int
        Chunks without a completion marker.
    manifest : dict or None
        The completion record of a finished extraction that can be reused.
    """

    store: FeatureStore
    source: ImageSource
    features: FeatureSpec
    key: str
    n: int
    d: int
    chunk_rows: int
    fmt: str
    todo: list[int] = field(default_factory=list)
    manifest: dict[str, Any] | None = None
    fitted: Any = None  # a fitted extractor (learned features), used as it is

    @property
    def n_chunks(self) -> int:
        return -(-self.n // self.chunk_rows)

    def bounds(self, index: int) -> tuple[int, int]:
        start = index * self.chunk_rows
        return start, min(start + self.chunk_rows, self.n)

    def extractor(self, n_jobs: int | None) -> Any:
        """The transformer to run on ``n_jobs`` threads: the fitted one, or a new one."""
        if self.fitted is None:
            return self.features.build(n_jobs=n_jobs)
        parts = getattr(self.fitted, "transformer_list", None) or [("", self.fitted)]
        for _, est in parts:
            if "n_jobs" in est.get_params(deep=False):
                est.set_params(n_jobs=n_jobs)
        return self.fitted

    @property
    def rows_todo(self) -> int:
        return sum(b - a for a, b in map(self.bounds, self.todo))


@dataclass
class ExtractResult:
    """A finished extraction: its folder, manifest, and what this run did."""

    path: str
    manifest: dict[str, Any]
    reused: bool
    computed_chunks: int

    def load(self) -> tuple[Any, np.ndarray, dict[str, Any]]:
        """``(features, labels, manifest)``, see :func:`cvpipe.featurestore.load_features`."""
        return load_features(self.path)

    def summary(self) -> str:
        m = self.manifest
        if self.reused:
            return (f"reused {m['n']} rows x {m['d']} dims ({m['format']}, extracted "
                    f"{m['created']}) -> {self.path}")
        return (f"extracted {m['n']} rows x {m['d']} dims in {m['seconds']:.2f} s "
                f"({m['images_per_s']:.0f} images/s, {m['engine']['name']}"
                f"{', resumed' if m['rows_computed'] < m['n'] else ''}) -> {self.path}")


def _chunk_rows_that_fit(asked: int | None, n: int, d: int, shrink: bool) -> int:
    """Rows per chunk: ``asked`` (--chunk-size) if two chunks of ``d`` features, one described
    and one written, fit in half the memory available; the default (or, with ``shrink``, any
    size) shrinks to fit, a size the user asked for is refused in one line instead of
    exhausting the memory."""
    from cvpipe.device import available_memory_bytes

    rows = asked or DEFAULT_CHUNK_ROWS
    available = available_memory_bytes()
    per_row = 2 * d * 4  # float32, two chunks in flight
    if available is None or min(rows, n) * per_row <= available // 2:
        return rows
    fit = max(1, available // 2 // per_row)
    if asked is not None and not shrink:
        raise ConfigError(f"--chunk-size {asked}: two chunks of {d:,} features in flight take "
                          f"{size_text(min(rows, n) * per_row)}, over half the {size_text(available)} "
                          f"of memory available; give --chunk-size {fit} or less")
    log.info("chunks of %d rows (not %d): %d features a row in the memory available", fit, rows, d)
    return fit


def locate_extraction(source: ImageSource, spec: FeatureSpec, *,
                      out: str | os.PathLike[str] | None = None,
                      root: str | os.PathLike[str] | None = None,
                      fitted: Any = None) -> tuple[str, int, FeatureStore]:
    """``(key, d, store)`` of ``spec``'s extraction of ``source``: its key, the features per
    row and its folder. Reads the first image (for D), writes nothing."""
    learned = ""
    if spec.stateful:
        if fitted is None:
            raise ConfigError(f"features {spec.name!r} are learned from training images: extract "
                              "them with a trained model's extractor (cvpipe extract --model NAME)")
        digest = hashlib.sha256()
        for name, array in sorted(extractor_state(fitted, spec).items()):
            digest.update(name.encode() + np.ascontiguousarray(array).tobytes())
        learned = digest.hexdigest()
    sample, _ = source.chunk(0, 1).read()
    d = spec.check(tuple(sample.shape[1:]))
    key = extraction_key(spec, source.fingerprint(), learned)
    store = FeatureStore(out if out is not None else Path(data_root(root), "features", key))
    return key, d, store


def _warn_if_short(store: FeatureStore, n: int, d: int, fmt: str) -> None:
    """A warning, before any image is described, when the features may not fit on the disk.

    npy reserves its exact size when created (a refusal there); zarr and npz compress, so only
    a bound is known: the rows uncompressed, and for npz twice that (the uncompressed file is
    packed next to the compressed chunks). A disk that fills up mid-run stops it with the
    chunks written kept, to resume from once space is freed.
    """
    if not store.local or fmt == "npy":
        return
    bound = rows_bytes(n, d) * (2 if fmt == "npz" else 1)
    free = free_bytes(store.path)
    if bound > free:
        log.warning("%s: %d rows x %d values may take up to %s on its disk (%s, before "
                    "compression), and %s are free: compression may make them fit; if not, the "
                    "run stops when the disk is full, keeps its finished chunks and resumes from "
                    "them once space is freed", store.url, n, d, size_text(bound), fmt,
                    size_text(free))


def plan_extraction(
    source: ImageSource,
    features: str | dict[str, Any] | FeatureSpec,
    *,
    params: dict[str, Any] | None = None,
    out: str | os.PathLike[str] | None = None,
    root: str | os.PathLike[str] | None = None,
    chunk_rows: int | None = None,
    fmt: str = "auto",
    force: bool = False,
    fitted: Any = None,
    shrink_chunks: bool = False,
) -> ExtractPlan:
    """Validate the config, find the output folder and what is left to do there.

    Reads one image (the first) to check the config and learn D. A finished extraction
    with the same key is returned with ``manifest`` set (nothing to do) unless ``force``;
    an unfinished one with the same key resumes with its own chunk size; ``force`` starts
    over. ``chunk_rows`` too large for the memory available is refused, or with
    ``shrink_chunks`` (a size the caller chose, not the user) made smaller.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if chunk_rows is not None and chunk_rows < 1:
        raise ConfigError(f"chunk size must be at least 1 row, not {chunk_rows}")
    if source.n < 1:
        raise DataError("the input has no images")
    spec = FeatureSpec.parse(features, params, drop_runtime=True)
    key, d, store = locate_extraction(source, spec, out=out, root=root, fitted=fitted)

    manifest = _record(store.manifest, force)
    if manifest is not None and manifest.get("key") == key and not force:
        log.debug("features already extracted in %s", store.url)
        return ExtractPlan(store, source, spec, key, manifest["n"], manifest["d"],
                           manifest["chunk_rows"], manifest["format"], [], manifest, fitted)

    run = _record(store.run_info, force)
    if run is not None and run.get("key") != key and not force:
        if out is not None:
            raise ConfigError(f"{store.url} holds features of another configuration or input "
                              f"(key {run.get('key')}); use --force to replace them")
    if force or run is None or run.get("key") != key or manifest is not None:
        rows = _chunk_rows_that_fit(chunk_rows, source.n, d, shrink_chunks)
        final_fmt = fmt if fmt != "auto" else ("npz" if source.n * d * 4 <= NPZ_MAX_BYTES else "zarr")
        if final_fmt == "npz" and source.n * d * 4 > NPZ_MAX_BYTES:
            log.warning("%.0f MiB of features as .npz: packing holds them all in memory at the end; "
                        "--format zarr keeps memory bounded", source.n * d * 4 / 2**20)
        run = {
            "format_version": FORMAT_VERSION,
            "key": key,
            "features": spec.to_dict(),
            "effective_params": spec.effective_params(),
            "input": source.describe(),
            "n": source.n,
            "d": d,
            "chunk_rows": rows,
            "format": final_fmt,
            "classes": source.classes(),
            "started": _now(),
        }
        _warn_if_short(store, source.n, d, final_fmt)
        store.create(run)
        done: set[int] = set()
        log.info("new extraction %s: %d rows x %d dims in chunks of %d -> %s",
                 key, source.n, d, rows, store.url)
    else:
        if run["n"] != source.n or run["d"] != d:
            raise DataError(f"{store.url}: run.json says {run['n']} x {run['d']}, the input gives "
                            f"{source.n} x {d}; use --force")
        if chunk_rows and chunk_rows != run["chunk_rows"]:
            log.info("resuming with the stored chunk size %d (not %d)", run["chunk_rows"], chunk_rows)
        if fmt != "auto" and fmt != run["format"]:
            log.info("resuming in the stored format %s (not %s)", run["format"], fmt)
        done = store.done()
        log.info("resuming %s: %d chunks of %d already done", key, len(done),
                 -(-run["n"] // run["chunk_rows"]))
    plan = ExtractPlan(store, source, spec, key, run["n"], run["d"], run["chunk_rows"],
                       run["format"], fitted=fitted)
    plan.todo = [i for i in range(plan.n_chunks) if i not in done]
    return plan


def _record(read: Callable[[], dict[str, Any] | None], force: bool) -> dict[str, Any] | None:
    """A store's record, or None; with ``force``, whose work is to replace it, a record too
    damaged to read is None too (its error says to use --force: that must then work)."""
    try:
        return read()
    except DataError:
        if force:
            return None
        raise


def compute_chunk(store: FeatureStore, chunk: ChunkInput | None, index: int, start: int,
                  features: FeatureSpec, n_jobs: int | None, delay: float = 0.0,
                  extractor: Any = None, data: tuple[np.ndarray, np.ndarray] | None = None,
                  write: bool = True) -> Any:
    """Read, describe and write one row chunk; return its small metadata.

    ``extractor`` (built from ``features`` when None) and ``data`` (the chunk already read)
    let a caller reuse work; with ``write=False`` nothing is written and
    ``(meta, features, labels)`` is returned for the caller to write. ``delay`` (seconds of
    sleep before writing) exists for tests and demonstrations that need a run slow enough
    to interrupt.
    """
    t0 = time.perf_counter()
    if data is None:
        assert chunk is not None
        data = chunk.read()
    images, labels = data
    t1 = time.perf_counter()
    est = extractor if extractor is not None else features.build(n_jobs=n_jobs)
    if not features.stateful:  # records the input shape; a learned extractor is used as fitted
        est = est.fit(images[:1])
    feats = est.transform(images)
    t2 = time.perf_counter()
    if delay:
        time.sleep(delay)
    meta = {"chunk": index, "rows": len(images), "read_s": round(t1 - t0, 4),
            "compute_s": round(t2 - t1, 4), "host": socket.gethostname(), "pid": os.getpid()}
    if not write:
        return meta, feats, labels
    store.write_chunk(index, start, feats, labels, {k: v for k, v in meta.items() if k != "chunk"})
    meta["write_s"] = round(time.perf_counter() - t2, 4)
    return meta


def finalize(plan: ExtractPlan, engine: dict[str, Any], seconds: float, rows_computed: int
             ) -> ExtractResult:
    """Check every chunk is marked done, pack ``.npz`` if asked, write ``manifest.json``."""
    done = plan.store.done()
    missing = [i for i in range(plan.n_chunks) if i not in done]
    if missing:
        raise DataError(f"{plan.store.url}: {len(missing)} chunks not written "
                        f"(first {missing[:5]}); run again to finish them")
    if plan.fmt == "npz":
        plan.store.pack_npz()
    run = plan.store.run_info() or {}
    manifest = {
        **{k: run.get(k) for k in ("format_version", "key", "features", "effective_params",
                                     "input", "classes", "started")},
        "n": plan.n,
        "d": plan.d,
        "dtype": "float32",
        "chunk_rows": plan.chunk_rows,
        "format": plan.fmt,
        "engine": engine,
        "rows_computed": rows_computed,
        "seconds": round(seconds, 3),
        "images_per_s": round(rows_computed / seconds, 1) if seconds > 0 else None,
        "created": _now(),
        "cvpipe_version": __version__,
    }
    plan.store.write_json("manifest.json", manifest)
    if plan.fmt == "npz":
        plan.store.drop_scratch()
    log.debug("manifest %s", canonical_json(manifest))
    return ExtractResult(plan.store.url, manifest, reused=False,
                         computed_chunks=len(plan.todo))


def reused(plan: ExtractPlan) -> ExtractResult:
    """The result of a plan whose extraction was already finished."""
    assert plan.manifest is not None
    return ExtractResult(plan.store.url, plan.manifest, reused=True, computed_chunks=0)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
