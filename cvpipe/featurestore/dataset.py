"""Features of a prepared dataset's splits, written once to stores and read back a block at a time.

Training does not hold feature matrices in memory. For a dataset split and a feature set it
asks :func:`split_features`, which returns the stored matrix (:class:`StoredFeatures`, read
block by block through :mod:`cvpipe.classifiers.chunks`' protocol) after making sure every
component is on disk:

* **one store per component** (a HOG, a colour histogram, a patch dictionary's codes), so a
  feature set made of several components (``patches+hog+color``) is assembled from its parts'
  stores, and every pipeline using a component shares them;
* written by the extraction loop of ``cvpipe extract`` (:func:`cvpipe.featurestore.local.run_local`,
  or the Dask engine), in the same format, keyed the same way: the component's effective
  parameters, what it learned (a digest of the fitted dictionary), the dataset's checksum and
  options, the split (with the validation fraction and seed), the row order and flips. A
  later run, or another pipeline, finds a finished store and reuses it; ``force`` recomputes;
* rows of the training and validation splits in a seeded random order, so that a block is a
  fair sample of every class (minibatch training streams blocks; datasets are often sorted by
  class); the test split keeps the dataset's order.

What a learned component fitted (the patch dictionary) is stored too
(:func:`learned_extractor`), keyed by its parameters and the training images it was fitted on,
so a later run restores it instead of fitting it again and finds its features by the same
key.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cvpipe.config import data_root
from cvpipe.errors import DataError
from cvpipe.features import FeatureSpec, extractor_state, restore_extractor
from cvpipe.features.spec import FeatureComponent
from cvpipe.featurestore.blocks import ColumnBlock
from cvpipe.featurestore.core import ExtractResult, locate_extraction, plan_extraction, reused
from cvpipe.featurestore.local import run_local
from cvpipe.featurestore.sources import DatasetSource
from cvpipe.featurestore.store import FORMAT_VERSION, FeatureStore, open_npy, rows_bytes
from cvpipe.storage import canonical_json, holds, json_dumps, replace_dir, sha256_file

log = logging.getLogger(__name__)

#: A block of stored rows is at most about this many bytes (rows per chunk follow from D).
BLOCK_BYTES = 96 << 20
LEARNED_DIR = "learned"


@dataclass
class StoreSettings:
    """Where and how stored features are made: the data root, recomputation, the engine.

    ``client``: a ``distributed.Client`` whose cluster extracts and computes statistics
    (None: this machine).
    """

    root: Path | None = None
    force: bool = False  # recompute each store (once: then this run's copy is reused)
    progress: bool = True
    client: Any = None
    recomputed: set[str] = field(default_factory=set)  # what ``force`` already redid

    def must_redo(self, key: str) -> bool:
        """With ``force``: True the first time a store (or learned state) is asked for."""
        if not self.force or key in self.recomputed:
            return False
        self.recomputed.add(key)
        return True

    @property
    def features_dir(self) -> Path:
        return Path(data_root(self.root), "features")

    def runner(self) -> Any:
        """What sums statistics over stored rows on the cluster (None: this machine's loop)."""
        if self.client is None:
            return None
        from cvpipe.featurestore.dask import DaskRunner

        return DaskRunner(self.client)


def chunk_rows_for(d: int) -> int:
    """Rows per stored chunk for ``d`` features: a power of two, at most :data:`BLOCK_BYTES`."""
    rows = 4096
    while rows > 256 and rows * d * 4 > BLOCK_BYTES:
        rows //= 2
    return rows


def component_spec(spec: FeatureSpec, index: int) -> FeatureSpec:
    """The feature set of one component of ``spec`` alone."""
    component = spec.components[index]
    return FeatureSpec(component.kind, (component,))


# --------------------------------------------------------------------------------------------
# what learned components fitted


def _train_fingerprint(ds: Any) -> dict[str, Any]:
    return {"checksum": ds.checksum, "options": ds.manifest.get("options", {}),
            "validation": {"fraction": ds.val_fraction, "seed": ds.seed}}


def _learned_key(component: FeatureComponent, ds: Any) -> str:
    text = canonical_json({"version": FORMAT_VERSION, "component": [component.kind, component.effective()],
                           "train": _train_fingerprint(ds)})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Learned:
    """A feature set's extractor with its learning components fitted on a dataset's train split."""

    extractor: Any
    fit_seconds: float  # what fitting them took (when they were fitted, in this run or before)
    reused: bool  # every learning component was restored from the store


def learned_extractor(ds: Any, spec: FeatureSpec, settings: StoreSettings) -> Learned:
    """``spec``'s extractor for ``ds``: learning components fitted on the images of the "train"
    split (never validation or test; no labels), or restored from what an earlier fit stored.

    A stateless feature set is just built.
    """
    extractor = spec.build()
    if not spec.stateful:
        return Learned(extractor, 0.0, True)
    image_shape = tuple(int(s) for s in ds.image_shape)
    steps = [extractor] if len(spec.components) == 1 else [e for _, e in extractor.transformer_list]
    total, all_reused = 0.0, True
    for i, (component, est) in enumerate(zip(spec.components, steps, strict=True)):
        if not component.stateful:
            est.fit(np.zeros((1, *image_shape), np.uint8))  # stateless: records the shape
            continue
        fitted, seconds, was_reused = _learned_component(ds, component, settings)
        total += seconds
        all_reused &= was_reused
        if len(spec.components) == 1:
            extractor = fitted
        else:
            extractor.transformer_list[i] = (extractor.transformer_list[i][0], fitted)
    return Learned(extractor, total, all_reused)


def _learned_component(ds: Any, component: FeatureComponent, settings: StoreSettings
                       ) -> tuple[Any, float, bool]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file, save_file

    single = FeatureSpec(component.kind, (component,))
    folder = settings.features_dir / LEARNED_DIR / _learned_key(component, ds)
    image_shape = tuple(int(s) for s in ds.image_shape)
    info_path, state_path = folder / "learned.json", folder / "state.safetensors"
    if info_path.is_file() and state_path.is_file() and not settings.must_redo(str(folder)):
        try:
            info = json.loads(info_path.read_text())
            if not isinstance(info, dict) or info.get("sha256") != sha256_file(state_path):
                raise ValueError("the state file does not match its recorded hash")
            state = load_file(str(state_path))
            restored = restore_extractor(single.build(), single, state, image_shape)
            log.info("%s: restored what it learned from %s", component.kind, folder)
            return restored, float(info["fit_seconds"]), True
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
            log.warning("%s: cannot restore %s (%s); fitting again", component.kind, folder, exc)
    log.info("learning %s from the train split's images", component.kind)
    start = time.perf_counter()
    fitted = single.build().fit(np.asarray(ds.split("train")[0]))
    seconds = time.perf_counter() - start
    settings.recomputed.add(str(folder))  # fitted in this run: not again under ``force``
    state = extractor_state(fitted, single)

    with replace_dir(folder, holds("learned.json")) as tmp:
        save_file(state, str(tmp / "state.safetensors"))
        info = {"component": {"name": component.kind, "params": component.effective()},
                "train": _train_fingerprint(ds), "image_shape": list(image_shape),
                "fit_seconds": round(seconds, 3), "sha256": sha256_file(tmp / "state.safetensors")}
        (tmp / "learned.json").write_text(json_dumps(info))
    return fitted, seconds, False


# --------------------------------------------------------------------------------------------
# stored splits


@dataclass(frozen=True)
class StoredRef:
    """Rows ``[start, stop)`` of one split's component stores, joined column-wise."""

    urls: tuple[str, ...]
    start: int
    stop: int

    @property
    def n_rows(self) -> int:
        return self.stop - self.start

    def read(self) -> tuple[np.ndarray, np.ndarray]:
        X, labels = self.read_columns()
        return (X.joined() if isinstance(X, ColumnBlock) else X), labels

    def read_columns(self) -> tuple[np.ndarray | ColumnBlock, np.ndarray]:
        """The rows as the components' parts (one component: an array), not joined."""
        arrays = [_open(url) for url in self.urls]
        parts = [np.asarray(a["features"][self.start:self.stop], np.float32) for a in arrays]
        labels = np.array(arrays[0]["labels"][self.start:self.stop], np.int64)  # small: a copy
        return (parts[0] if len(parts) == 1 else ColumnBlock(parts)), labels


def _open(url: str) -> Any:
    """A finished store's ``features`` and ``labels`` arrays, sliceable by rows."""
    npy = Path(url, "features.npy")
    if npy.exists():  # a store extracted again (--force) is a new file: opened anew
        info = npy.stat()
        return _open_npy(url, info.st_ino, info.st_mtime_ns)
    return _open_zarr(url)


@functools.lru_cache(maxsize=64)
def _open_npy(url: str, inode: int, mtime_ns: int) -> dict[str, Any]:
    return open_npy(FeatureStore(url))


@functools.lru_cache(maxsize=64)
def _open_zarr(url: str) -> Any:
    import zarr

    return zarr.open_group(url.rstrip("/") + "/features.zarr", mode="r")


@dataclass
class StoredFeatures:
    """One split's feature matrix: the finished stores of its feature set's components.

    Implements :class:`cvpipe.classifiers.chunks.Chunks`: blocks of rows, joined across the
    components, each read where it is asked for.
    """

    spec: FeatureSpec
    split: str
    results: list[ExtractResult]
    seconds: float = 0.0  # spent this time (extracting, or finding the stores)
    rows: int = 4096  # per block
    limit: int | None = None  # only the first rows (see head)
    _labels: np.ndarray | None = field(default=None, repr=False)

    @property
    def n_rows(self) -> int:
        n = int(self.results[0].manifest["n"])
        return n if self.limit is None else min(n, self.limit)

    def head(self, n: int) -> StoredFeatures:
        """The first ``n`` rows (an augmented split's store holds every smaller size)."""
        return dataclasses.replace(self, limit=int(n), _labels=None)

    @property
    def n_features(self) -> int:
        return sum(int(r.manifest["d"]) for r in self.results)

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(r.path for r in self.results)

    def refs(self) -> list[StoredRef]:
        n = self.n_rows
        return [StoredRef(self.urls, a, min(a + self.rows, n)) for a in range(0, n, self.rows)]

    def labels(self) -> np.ndarray:
        if self._labels is None:
            self._labels = np.asarray(_open(self.results[0].path)["labels"][:self.n_rows], np.int64)
        return self._labels

    @property
    def status(self) -> str:
        """``computed``, ``reused``, or which components were reused."""
        flags = [r.reused for r in self.results]
        if all(flags):
            return "reused"
        if not any(flags):
            return "computed"
        names = [c.kind for c in self.spec.components]
        done = [n for n, f in zip(names, flags, strict=True) if f]
        return f"partly reused ({', '.join(done)})"

    @property
    def images_per_second(self) -> float:
        """How fast the split's images were described when they were (all components)."""
        per_image = sum(r.manifest["seconds"] / max(r.manifest["rows_computed"], 1)
                        for r in self.results if r.manifest.get("rows_computed"))
        return 1.0 / per_image if per_image > 0 else float("inf")

    @property
    def nbytes(self) -> int:
        return sum(store_bytes(r.path) for r in self.results)


def split_features(ds: Any, spec: FeatureSpec, split: str, learned: Learned,
                   settings: StoreSettings, *,
                   variant: tuple[bool, int, int] = (False, 0, 0)) -> StoredFeatures:
    """The stored features of ``split`` ("train", "val" or "test") of ``ds``, extracting what
    is not on disk yet with the shared extraction loop.

    Training and validation rows come in a random order drawn from the dataset's seed;
    ``variant`` (mirrored, rows down, columns right) describes the split's images mirrored
    left-right and/or shifted (:func:`cvpipe.featurestore.sources.training_variants`).
    """
    flip, dy, dx = variant
    how = [*(["mirrored"] if flip else []), *([f"shifted {dy:+d}, {dx:+d}"] if dy or dx else [])]
    label = f"{split} ({', '.join(how)})" if how else split
    return stored_features(_split_source(ds, split, variant), spec, learned, settings, label,
                           split=split)


def _split_source(ds: Any, split: str, variant: tuple[bool, int, int]) -> DatasetSource:
    order = ds.seed if split in ("train", "val", "train_full") else None
    flip, dy, dx = variant
    return DatasetSource(ds, split, order_seed=order, flip=flip, shift=(dy, dx))


def _components(spec: FeatureSpec, learned: Learned) -> list[tuple[FeatureSpec, Any]]:
    """Each component of ``spec`` alone, with its fitted extractor if it learned one."""
    steps = ([learned.extractor] if len(spec.components) == 1
             else [e for _, e in learned.extractor.transformer_list])
    singles = [component_spec(spec, i) for i in range(len(steps))]
    return [(single, est if single.stateful else None) for single, est in zip(singles, steps, strict=True)]


def missing_store_bytes(ds: Any, spec: FeatureSpec, learned: Learned, settings: StoreSettings,
                        splits: list[tuple[str, tuple[bool, int, int]]]) -> int:
    """Bytes the stores of ``splits`` (split, variant) would add to the disk: those not started
    yet, or to be made again under ``force`` (less what they hold now). A started store has
    its whole size reserved already."""
    total, seen = 0, set()
    for split, variant in splits:
        source = _split_source(ds, split, variant)
        for single, fitted in _components(spec, learned):
            key, d, store = locate_extraction(source, single, root=settings.root, fitted=fitted)
            if store.url in seen:
                continue
            seen.add(store.url)
            run = store.run_info()
            redo = settings.force and store.url not in settings.recomputed
            if run is None or run.get("key") != key or redo:
                total += max(0, rows_bytes(source.n, d) - store_bytes(store.url))
    return total


def stored_features(source: Any, spec: FeatureSpec, learned: Learned, settings: StoreSettings,
                    what: str = "images", *, split: str = "", on_chunk: Any = None) -> StoredFeatures:
    """The stores of every component of ``spec`` for the rows of ``source`` (an
    :class:`~cvpipe.featurestore.sources.ImageSource`), extracting those not finished yet.
    ``on_chunk``: called with each extracted chunk's metadata (and the component's name)."""
    start = time.perf_counter()
    image_shape = tuple(source.image_shape)
    results, rows = [], None
    for single, fitted in _components(spec, learned):
        d = single.n_features(image_shape)
        rows = chunk_rows_for(d) if rows is None else min(rows, chunk_rows_for(d))
        plan = plan_extraction(source, single, root=settings.root, chunk_rows=chunk_rows_for(d),
                               fmt="npy", fitted=fitted, shrink_chunks=True)
        if settings.must_redo(plan.store.url):
            plan = plan_extraction(source, single, root=settings.root, chunk_rows=chunk_rows_for(d),
                                   fmt="npy", force=True, fitted=fitted, shrink_chunks=True)
        if plan.manifest is not None:
            results.append(reused(plan))
            continue
        desc = f"{spec.name}: {single.name} of {what}"
        log.info("%s: extracting %d images -> %s", desc, plan.n, plan.store.url)
        hook = (None if on_chunk is None else
                (lambda meta, name=single.name: on_chunk({**meta, "component": name})))
        if settings.client is not None:
            from cvpipe.featurestore.dask import run_dask

            results.append(run_dask(plan, settings.client, progress=settings.progress, on_chunk=hook))
        else:
            results.append(run_local(plan, progress=settings.progress, desc=desc, on_chunk=hook))
    stored = StoredFeatures(spec, split, results, time.perf_counter() - start, rows or 4096)
    labels = stored.labels()
    for r in results[1:]:  # the components describe the same rows
        if not np.array_equal(np.asarray(_open(r.path)["labels"][:]), labels):
            raise DataError(f"{r.path}: its rows are not those of {results[0].path}; run with --force")
    return stored


# --------------------------------------------------------------------------------------------
# what is stored


def store_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes a local store folder takes on disk."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(dirpath, name))
            except OSError:
                pass
    return total


def list_stores(root: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """Every store under ``<data root>/features/`` (extractions and learned states) with its
    size: ``[{key, kind, features, input, n, d, bytes, created, complete, path}]``."""
    base = Path(data_root(root), "features")
    out = []
    if not base.is_dir():
        return out
    for folder in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if folder.name == LEARNED_DIR:
            for learned in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
                info = _read_json(learned / "learned.json")
                out.append({"key": learned.name, "kind": "learned",
                            "features": _name_of(info.get("component")),
                            "input": _table(info.get("train")), "n": None, "d": None,
                            "bytes": store_bytes(learned), "created": None,
                            "complete": bool(info), "path": str(learned)})
            continue
        manifest = _read_json(folder / "manifest.json")
        run = manifest or _read_json(folder / "run.json")
        out.append({"key": folder.name, "kind": "features", "features": _name_of(run.get("features")),
                    "input": _table(run.get("input")), "n": run.get("n"), "d": run.get("d"),
                    "bytes": store_bytes(folder), "created": run.get("created") or run.get("started"),
                    "complete": bool(manifest), "path": str(folder)})
    return out


def _read_json(path: Path) -> dict[str, Any]:
    """A store's JSON object for the listing; {} where it is missing, unreadable or not an
    object (the listing shows such a store as incomplete, and reads no field of it)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _table(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def _name_of(table: Any) -> Any:
    return (_table(table) or {}).get("name")

