"""Single-machine extraction: row chunks one after another, each on all cores.

Memory holds two chunks at most (the one being described and the next one, read ahead in
a background thread), whatever the number of images.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cvpipe.features import FeatureSpec
from cvpipe.featurestore.core import (
    ExtractPlan,
    ExtractResult,
    compute_chunk,
    finalize,
    plan_extraction,
    reused,
)
from cvpipe.featurestore.sources import ChunkInput, ImageSource

log = logging.getLogger(__name__)


def extract(
    source: ImageSource,
    features: str | dict[str, Any] | FeatureSpec,
    *,
    params: dict[str, Any] | None = None,
    out: str | os.PathLike[str] | None = None,
    root: str | os.PathLike[str] | None = None,
    chunk_rows: int | None = None,
    fmt: str = "auto",
    force: bool = False,
    n_jobs: int | None = -1,
    progress: bool = False,
    on_chunk: Callable[[dict[str, Any]], None] | None = None,
    fitted: Any = None,
) -> ExtractResult:
    """Extract features of every image of ``source`` to disk, on this machine.

    Parameters
    ----------
    source : ImageSource
        :class:`~cvpipe.featurestore.sources.DatasetSource` or
        :class:`~cvpipe.featurestore.sources.FileSource`.
    features : str, dict or FeatureSpec
        A feature set (:class:`cvpipe.features.FeatureSpec`): a name (``"hog+color"``), a
        config dict (``{"name": ..., "params": {...}}`` or with ``components``) or a spec.
        Run-time options among the parameters (``n_jobs``) are ignored.
    params : dict, optional
        Parameters added to a named config (``{"hog__orientations": 12}``).
    out : str or path, optional
        Output folder (default ``<data root>/features/<key>``); may be an fsspec URL.
    root : str or path, optional
        Data root (default ``$CVPIPE_DATA_ROOT`` or ``./data``).
    chunk_rows : int, optional
        Rows per chunk (default 4096); an unfinished extraction keeps its own.
    fmt : {"auto", "npz", "zarr", "npy"}
        ``auto``: ``.npz`` up to 64 MiB of features, Zarr above.
    force : bool
        Extract again even if a finished or partial result exists.
    n_jobs : int or None
        Threads for the features (joblib convention: -1 = all cores).
    progress : bool
        Show a tqdm progress bar on stderr.
    on_chunk : callable, optional
        Called with each finished chunk's metadata (an exception raised there stops the run,
        leaving a resumable extraction).
    fitted : transformer, optional
        The fitted extractor of learned features (a trained model's), used as it is.

    Returns
    -------
    ExtractResult
        ``reused`` is True when a finished extraction with the same key was found.

    Raises
    ------
    ConfigError
        A features config that cannot describe these images.
    """
    plan = plan_extraction(source, features, params=params, out=out, root=root,
                           chunk_rows=chunk_rows, fmt=fmt, force=force, fitted=fitted)
    if plan.manifest is not None:
        return reused(plan)
    return run_local(plan, n_jobs=n_jobs, progress=progress, on_chunk=on_chunk)


def _read(chunk: ChunkInput, threads: int) -> tuple[tuple[Any, Any], float]:
    t0 = time.perf_counter()
    data = chunk.read(threads)
    return data, round(time.perf_counter() - t0, 4)


def _write(plan: ExtractPlan, index: int, start: int, feats: Any, labels: Any,
           meta: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    plan.store.write_chunk(index, start, feats, labels, {k: v for k, v in meta.items() if k != "chunk"})
    return {**meta, "write_s": round(time.perf_counter() - t0, 4)}


def run_local(plan: ExtractPlan, *, n_jobs: int | None = -1, progress: bool = False,
              on_chunk: Callable[[dict[str, Any]], None] | None = None, desc: str = "extract"
              ) -> ExtractResult:
    """Compute the chunks ``plan.todo`` in order, as a pipeline: the next chunk is read (and,
    with a core to spare, the previous one written) in the background while one is
    described."""
    from tqdm.auto import tqdm

    from cvpipe.device import cpu_count, n_workers

    threads = n_workers(n_jobs)
    # Writing (compression, I/O) overlaps the features only where a core is free for it: on
    # every core, it would stall one feature thread and with it the whole chunk.
    overlap = threads < cpu_count()
    est = plan.extractor(n_jobs)
    start_time = time.perf_counter()
    rows = plan.rows_todo
    bar = tqdm(total=plan.n, initial=plan.n - rows, unit="img", desc=desc, disable=not progress,
               dynamic_ncols=True)

    def finish(meta: dict[str, Any]) -> None:
        log.debug("chunk %d: %s", meta["chunk"], meta)
        bar.update(meta["rows"])
        if on_chunk is not None:
            on_chunk(meta)

    try:
        with (ThreadPoolExecutor(1, thread_name_prefix="cvpipe-read") as reader,
              ThreadPoolExecutor(1, thread_name_prefix="cvpipe-write") as writer):
            reads = (reader.submit(_read, plan.source.chunk(*plan.bounds(i)), threads) for i in plan.todo)
            next_read = next(reads, None)
            writing = None
            for i in plan.todo:
                data, read_s = next_read.result()
                next_read = next(reads, None)  # read ahead
                a, _ = plan.bounds(i)
                meta, feats, labels = compute_chunk(plan.store, None, i, a, plan.features, n_jobs,
                                                    extractor=est, data=data, write=False)
                meta["read_s"] = read_s
                if writing is not None:  # one write in flight at most
                    finish(writing.result())
                    writing = None
                if overlap:
                    writing = writer.submit(_write, plan, i, a, feats, labels, meta)
                else:
                    finish(_write(plan, i, a, feats, labels, meta))
            if writing is not None:
                finish(writing.result())
    finally:
        bar.close()
    seconds = time.perf_counter() - start_time
    return finalize(plan, {"name": "local", "threads": threads}, seconds, rows)
