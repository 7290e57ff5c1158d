"""Distributed extraction on Dask: tasks of a few row chunks, written by the workers themselves.

The client plans (key, output folder, chunks left: the same as the single-machine path)
and submits tasks of one to a few unfinished chunks (see :func:`task_groups`), carrying
only the chunks' descriptions (a ``.npy`` path and row numbers, or file paths); the
worker reads each chunk's rows, describes them on one thread (``n_jobs=1``: a worker's
threads are the parallelism), writes the chunk and its marker into the store, and
returns a few numbers. So:

* the client never holds the images, and at most a window of tasks is in flight;
* the output is the one of :func:`cvpipe.featurestore.local.extract`, row for row and value
  for value (same chunks, same feature code);
* a task whose worker dies is run again by the scheduler (and failures are retried
  ``retries`` times), skipping the chunks it had finished: a chunk written twice is
  written with the same bytes, and only a complete chunk gets a marker;
* an interrupted run leaves its finished chunks marked, and the next run submits only the
  others.

With ``scheduler="tcp://host:port"`` the workers must see the input and the output folder
at the same paths (a shared filesystem) or through fsspec URLs (``--input s3://...``,
``--out s3://...``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from cvpipe.errors import CvpipeError
from cvpipe.features import FeatureSpec
from cvpipe.featurestore.blocks import read_block
from cvpipe.featurestore.core import (
    ExtractPlan,
    ExtractResult,
    compute_chunk,
    finalize,
    plan_extraction,
    reused,
)
from cvpipe.featurestore.sources import ChunkInput, ImageSource
from cvpipe.featurestore.store import FeatureStore

log = logging.getLogger(__name__)

_PRE_SPAWN = "distributed.nanny.pre-spawn-environ"
#: A task describes up to this many row chunks (Dask costs some milliseconds per task)...
MAX_CHUNKS_PER_TASK = 4
#: ... while every worker thread still gets this many tasks, for an even finish.
TASKS_PER_THREAD = 3


class DaskError(CvpipeError):
    """The cluster cannot be reached or started, or a chunk failed on it."""


@contextlib.contextmanager
def connect(scheduler: str | None = None, workers: int | None = None, *,
            threads_per_worker: int = 1, dashboard_address: str = ":0") -> Iterator[Any]:
    """A ``distributed.Client``: to the scheduler at ``scheduler``, else to a new
    ``LocalCluster`` of ``workers`` processes (closed on exit).

    Raises
    ------
    DaskError
        The scheduler cannot be reached, or the cluster cannot start.
    """
    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="15s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise DaskError(f"cannot reach the Dask scheduler at {scheduler} ({exc})") from None
        try:
            _check_allocator(client)
            yield client
        finally:
            client.close()
        return
    if not workers or workers < 1:
        raise DaskError(f"--workers must be at least 1, not {workers}")
    try:
        # Dask's default MALLOC_TRIM_THRESHOLD_=65536 for workers makes glibc map and unmap
        # every large temporary: the features run 2-4x slower. Not for the workers we start.
        with dask.config.set({f"{_PRE_SPAWN}.MALLOC_TRIM_THRESHOLD_": None}):
            cluster = LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker,
                                   processes=True, dashboard_address=dashboard_address)
    except (OSError, TimeoutError, RuntimeError) as exc:
        raise DaskError(f"cannot start a local Dask cluster of {workers} workers ({exc})") from None
    try:
        with Client(cluster) as client:
            yield client
    finally:
        cluster.close()


def _check_allocator(client: Any) -> None:
    try:
        trims = client.run(os.environ.get, "MALLOC_TRIM_THRESHOLD_")
    except Exception:  # advice only
        return
    if any(v is not None for v in trims.values()):
        log.warning("Dask workers run with MALLOC_TRIM_THRESHOLD_=%s, which makes feature "
                    "extraction 2-4x slower; start them with the Dask config "
                    "%s.MALLOC_TRIM_THRESHOLD_ set to null for this work",
                    next(v for v in trims.values() if v is not None), _PRE_SPAWN)


@functools.cache
def _one_thread() -> None:
    """Keep OpenCV's own thread pool out of a worker: its threads are the parallelism (OpenCV
    would otherwise spread a large ``cvtColor`` over every core, from every worker)."""
    import cv2

    cv2.setNumThreads(1)


def _run_task(store_url: str, key: str, chunks: list[tuple[int, int, ChunkInput]],
              features: FeatureSpec, delay: float, fitted: Any = None) -> list[dict[str, Any]]:
    """Runs on a worker: a few row chunks, one after another, on one thread.

    A chunk already marked done (this task is a retry after its first worker died, say) is
    skipped. A user error (unreadable image, bad config) is returned rather than raised:
    retrying it would fail again.
    """
    _one_thread()
    store = FeatureStore(store_url)
    try:
        run = store.run_info()
        if run is None or run.get("key") != key:  # replaced (--force) since this was submitted
            raise DaskError(f"{store_url} was replaced by another extraction during this one")
        out = []
        for index, start, chunk in chunks:
            if store.is_done(index):
                out.append({"chunk": index, "rows": None, "skipped": True})
                continue
            out.append(compute_chunk(store, chunk, index, start, features, n_jobs=1, delay=delay,
                                     extractor=fitted))
        return out
    except CvpipeError as exc:
        return [{"chunk": chunks[0][0], "error": exc}]


def task_groups(todo: list[int], nthreads: int, chunks_per_task: int | None = None) -> list[list[int]]:
    """Chunks grouped into tasks: up to :data:`MAX_CHUNKS_PER_TASK` per task to spread Dask's
    per-task cost, but at least :data:`TASKS_PER_THREAD` tasks per worker thread for balance."""
    if chunks_per_task is None:
        chunks_per_task = len(todo) // (TASKS_PER_THREAD * max(nthreads, 1))
        chunks_per_task = max(1, min(MAX_CHUNKS_PER_TASK, chunks_per_task))
    return [todo[k:k + chunks_per_task] for k in range(0, len(todo), chunks_per_task)]


def extract_dask(
    source: ImageSource,
    features: str | dict[str, Any] | FeatureSpec,
    *,
    client: Any = None,
    scheduler: str | None = None,
    workers: int | None = None,
    params: dict[str, Any] | None = None,
    out: str | os.PathLike[str] | None = None,
    root: str | os.PathLike[str] | None = None,
    chunk_rows: int | None = None,
    fmt: str = "auto",
    force: bool = False,
    progress: bool = False,
    on_chunk: Callable[[dict[str, Any]], None] | None = None,
    on_client: Callable[[Any], None] | None = None,
    retries: int = 2,
    chunks_per_task: int | None = None,
    task_delay: float = 0.0,
    fitted: Any = None,
) -> ExtractResult:
    """Extract features of every image of ``source`` on a Dask cluster.

    Parameters
    ----------
    source, features, params, out, root, chunk_rows, fmt, force, progress, on_chunk, fitted
        As in :func:`cvpipe.featurestore.local.extract` (a fitted extractor travels to the workers
        with the tasks).
    client : distributed.Client, optional
        Use this client (its cluster stays up afterwards).
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:8786``), when no client is given.
    workers : int, optional
        Else: start a ``LocalCluster`` of this many single-threaded worker processes.
    on_client : callable, optional
        Called with the client once connected (e.g. to print ``client.dashboard_link``).
    retries : int
        Extra attempts of a task that raised (a lost worker is handled by the scheduler).
    chunks_per_task : int, optional
        Row chunks per task (default: see :func:`task_groups`).
    task_delay : float
        Seconds each chunk sleeps before writing (tests and demonstrations).

    Returns
    -------
    ExtractResult
        The same files as the single-machine path would write.
    """
    plan = plan_extraction(source, features, params=params, out=out, root=root,
                           chunk_rows=chunk_rows, fmt=fmt, force=force, fitted=fitted)
    if plan.manifest is not None:
        return reused(plan)
    if client is not None:
        return run_dask(plan, client, progress=progress, on_chunk=on_chunk, on_client=on_client,
                        retries=retries, chunks_per_task=chunks_per_task, task_delay=task_delay)
    with connect(scheduler, workers) as own:
        return run_dask(plan, own, progress=progress, on_chunk=on_chunk, on_client=on_client,
                        retries=retries, chunks_per_task=chunks_per_task, task_delay=task_delay)


def run_dask(plan: ExtractPlan, client: Any, *, progress: bool = False,
             on_chunk: Callable[[dict[str, Any]], None] | None = None,
             on_client: Callable[[Any], None] | None = None, retries: int = 2,
             chunks_per_task: int | None = None, task_delay: float = 0.0) -> ExtractResult:
    """Submit the chunks ``plan.todo`` to ``client``'s cluster and wait for all of them.

    At most a window of tasks (4 per worker thread, at least 8) is submitted at a time, so
    neither the client nor the scheduler holds the descriptions of millions of chunks.
    """
    from distributed import as_completed
    from tqdm.auto import tqdm

    if on_client is not None:
        on_client(client)
    else:
        log.info("Dask dashboard: %s", client.dashboard_link)
    nthreads = sum(client.nthreads().values())
    window = max(8, 4 * max(nthreads, 1))
    groups = task_groups(plan.todo, nthreads, chunks_per_task)
    log.info("%d chunks in %d tasks on %d worker threads", len(plan.todo), len(groups), nthreads)
    run_id = uuid.uuid4().hex[:8]
    pending = iter(groups)
    rows = plan.rows_todo
    start_time = time.perf_counter()
    in_flight: set[Any] = set()

    def submit(group: list[int]) -> Any:
        chunks = [(i, plan.bounds(i)[0], plan.source.chunk(*plan.bounds(i))) for i in group]
        fut = client.submit(_run_task, plan.store.url, plan.key, chunks, plan.features, task_delay,
                            plan.fitted,
                            key=f"cvpipe-extract-{plan.key}-{group[0]:06d}-{group[-1]:06d}-{run_id}",
                            retries=retries, pure=False)
        in_flight.add(fut)
        return fut

    futures = as_completed([submit(g) for _, g in zip(range(window), pending, strict=False)])
    bar = tqdm(total=plan.n, initial=plan.n - rows, unit="img", desc="extract", disable=not progress,
               dynamic_ncols=True)
    try:
        for fut in futures:
            in_flight.discard(fut)
            try:
                metas = fut.result()
            except CvpipeError:
                raise
            except Exception as exc:  # KilledWorker after repeated deaths, a cancelled task...
                raise DaskError(f"a task failed on the cluster ({type(exc).__name__}: {exc}); "
                                "run again to resume") from exc
            nxt = next(pending, None)
            if nxt is not None:
                futures.add(submit(nxt))
            for meta in metas:
                if "error" in meta:
                    raise meta["error"]
                if meta.get("skipped"):
                    a, b = plan.bounds(meta["chunk"])
                    meta["rows"] = b - a
                log.debug("chunk %d: %s", meta["chunk"], meta)
                bar.update(meta["rows"])
                if on_chunk is not None:
                    on_chunk(meta)
    except BaseException:
        client.cancel(list(in_flight))  # leave no orphan work; finished chunks stay marked
        raise
    finally:
        bar.close()
    seconds = time.perf_counter() - start_time
    engine = {"name": "dask", "scheduler": client.scheduler.address, "workers": len(client.nthreads()),
              "threads": nthreads, "dashboard": client.dashboard_link}
    return finalize(plan, engine, seconds, rows)


# --------------------------------------------------------------------------------------------
# sums over stored rows, on the workers


def _sum_blocks(fn: Callable[..., tuple], refs: list[Any], *args: Any) -> tuple:
    """Runs on a worker: ``fn`` of each block of ``refs`` (read there), summed in order."""
    _one_thread()
    total = None
    for ref in refs:
        X, y = read_block(ref, fn)
        part = fn(X, y, *args)
        total = part if total is None else add_sums(total, part)
    return total


def add_sums(total: tuple, part: tuple) -> tuple:
    """``total + part`` element by element, arrays added in place: a D x D Gram matrix summed
    over blocks then takes two of its size, not three (the sum, the part, the new sum)."""
    import numpy as np

    out = []
    for a, b in zip(total, part, strict=True):
        # a lazy sum (e.g. a block's Gram matrix, added by BLAS in place): ``add_to(total)``
        if hasattr(a, "add_to"):
            a = a.add_to(None)
        if hasattr(b, "add_to"):
            out.append(b.add_to(a))
        elif (isinstance(a, np.ndarray) and a.flags.writeable and a.shape == np.shape(b)
                and np.result_type(a, b) == a.dtype):
            np.add(a, b, out=a)
            out.append(a)
        else:
            out.append(a + b)
    return tuple(out)


class DaskRunner:
    """Sums a function of every block of rows on a Dask cluster: each task reads a run of
    blocks where the workers see the stores (a shared filesystem or fsspec URLs) and sums its
    share; the client adds the tasks' sums in a fixed order, so the result does not depend on
    which worker finished first (:class:`cvpipe.classifiers.row_stats.Runner` does the same
    on this machine).

    Parameters
    ----------
    client : distributed.Client
    tasks_per_thread : int
        Tasks per worker thread for one sum (more: a better balance; fewer: less overhead).
    """

    name = "dask"

    def __init__(self, client: Any, tasks_per_thread: int = 2):
        self.client = client
        self.tasks_per_thread = tasks_per_thread

    def map_sum(self, fn: Callable[..., tuple], chunks: Any, *args: Any) -> tuple:
        import numpy as np

        refs = chunks.refs()
        if not refs:
            raise ValueError("no rows to sum over")
        threads = max(1, sum(self.client.nthreads().values()))
        n_tasks = max(1, min(len(refs), threads * self.tasks_per_thread))
        bounds = np.linspace(0, len(refs), n_tasks + 1).astype(int)
        # large arguments (the weights) go to the workers once, not once per task
        sent = [self.client.scatter(a, broadcast=True) if getattr(a, "nbytes", 0) > (1 << 16) else a
                for a in args]
        futures = [self.client.submit(_sum_blocks, fn, refs[a:b], *sent, pure=False, retries=2)
                   for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
        try:
            parts = self.client.gather(futures)
        except CvpipeError:
            raise
        except Exception as exc:  # a lost worker beyond the retries, a cancelled task
            raise DaskError(f"a statistics task failed on the cluster ({type(exc).__name__}: "
                            f"{exc})") from exc
        total = parts[0]
        for part in parts[1:]:
            total = add_sums(total, part)
        return total
