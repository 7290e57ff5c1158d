"""``cvpipe store``: what the feature store holds and how much disk it takes; clearing it.

Also the engine options every command that computes features or statistics takes
(``--workers N`` for a local Dask cluster, ``--scheduler`` for a running one).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cvpipe.config import data_root
from cvpipe.errors import ConfigError
from cvpipe.storage import size_text


def _worker_count(text: str) -> int:
    """``--workers``' value: a count of at least 1 (0 would quietly mean no cluster)."""
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {count}")
    return count


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """``--workers`` and ``--scheduler``: where features are extracted and statistics computed."""
    e = p.add_argument_group("engine (default: this machine, all cores)")
    e.add_argument("--workers", type=_worker_count, metavar="N",
                   help="start a local Dask cluster of N single-threaded worker processes")
    e.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                   help="use a running Dask cluster (its workers must see the data root at the "
                   "same path, or fsspec URLs)")


@contextlib.contextmanager
def engine(args: argparse.Namespace) -> Iterator[Any]:
    """A ``distributed.Client`` for ``--workers``/``--scheduler`` (closed on exit), else None."""
    scheduler, workers = getattr(args, "scheduler", None), getattr(args, "workers", None)
    if scheduler and workers:
        raise ConfigError("give --scheduler (a running cluster) or --workers (a local one), not both")
    if not scheduler and not workers:
        yield None
        return
    import distributed  # noqa: F401 - it sets its own log levels on import: override them

    from cvpipe.featurestore.dask import connect

    if getattr(args, "verbose", 0) < 2:
        logging.getLogger("distributed").setLevel(logging.WARNING)
    with connect(scheduler, workers) as client:
        print(f"Dask dashboard: {client.dashboard_link}  ({len(client.nthreads())} workers, "
              f"{sum(client.nthreads().values())} threads)", file=sys.stderr, flush=True)
        yield client


def _is_pair(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2


def _input_text(entry: dict[str, Any]) -> str:
    inp = entry.get("input") or {}
    if entry["kind"] == "learned":
        return f"fitted on {str(inp.get('checksum', '?'))[:20]}..."
    if inp.get("kind") == "dataset":
        extra = "".join([" shuffled" if inp.get("order") else "", " mirrored" if inp.get("flip") else "",
                         " shifted {}, {}".format(*inp["shift"]) if _is_pair(inp.get("shift")) else ""])
        return f"{inp.get('split')}{extra} of {str(inp.get('checksum', '?'))[:20]}..."
    return str(inp.get("origin") or inp.get("kind") or "?")


def _list(args: argparse.Namespace) -> int:
    from cvpipe.featurestore.dataset import list_stores

    entries = list_stores(args.data_root)
    total = sum(e["bytes"] for e in entries)
    if args.json:
        print(json.dumps({"root": str(Path(data_root(args.data_root), "features")), "bytes": total,
                          "stores": entries}, indent=2))
        return 0
    if not entries:
        print(f"no stored features under {Path(data_root(args.data_root), 'features')}")
        return 0
    print(f"{'key':<18}{'kind':<10}{'features':<10}{'rows x dims':>16}{'size':>10}  input")
    for e in entries:
        shape = f"{e['n']} x {e['d']}" if e["n"] else "-"
        state = "" if e["complete"] else "  (unfinished)"
        print(f"{e['key']:<18}{e['kind']:<10}{str(e['features']):<10}{shape:>16}{size_text(e['bytes']):>10}"
              f"  {_input_text(e)}{state}")
    print(f"{len(entries)} stores, {size_text(total)} in "
          f"{Path(data_root(args.data_root), 'features')}; clear with 'cvpipe store clear KEY' or --all")
    return 0


def _clear(args: argparse.Namespace) -> int:
    from cvpipe.featurestore.dataset import list_stores

    if not args.keys and not args.all:
        raise ConfigError("name the stores to clear (keys from 'cvpipe store list'), or --all")
    entries = list_stores(args.data_root)
    by_key = {e["key"]: e for e in entries}
    unknown = [k for k in args.keys if k not in by_key]
    if unknown:
        raise ConfigError(f"no store {', '.join(map(repr, unknown))} (see 'cvpipe store list')")
    chosen = entries if args.all else [by_key[k] for k in args.keys]
    freed = 0
    for e in chosen:
        path = Path(e["path"])
        if e["kind"] == "features":
            from cvpipe.featurestore.store import FeatureStore

            FeatureStore(path).clear()  # refuses a folder that holds anything but a store's files
        else:
            shutil.rmtree(path)
        freed += e["bytes"]
    print(f"cleared {len(chosen)} stores, {size_text(freed)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "store", help="list the stored features and the disk they take; clear them",
        description="Features that training and 'cvpipe extract' computed are stored once under "
        "<data root>/features/ (one store per feature component, dataset split and fitted "
        "dictionary) and reused by every later pipeline and run with the same key. 'list' shows "
        "them with their size; 'clear' removes some or all (they are computed again when needed).",
        epilog="examples: cvpipe store list; cvpipe store list --json; "
        "cvpipe store clear 3f2a9c0d1e4b5a67; cvpipe store clear --all")
    # 'cvpipe store' alone lists, as 'cvpipe models' does
    p.set_defaults(func=_list, json=False, data_root=None)
    actions = p.add_subparsers(dest="action", metavar="<action>")
    lst = actions.add_parser("list", help="every store: key, features, rows x dims, size, input "
                             "(the default)")
    lst.add_argument("--json", action="store_true", help="print JSON")
    lst.add_argument("--data-root", help="default: $CVPIPE_DATA_ROOT or ./data")
    lst.set_defaults(func=_list)
    clr = actions.add_parser("clear", help="remove stores by key, or all of them")
    clr.add_argument("keys", nargs="*", metavar="KEY", help="keys from 'cvpipe store list'")
    clr.add_argument("--all", action="store_true", help="remove every store")
    clr.add_argument("--data-root", help="default: $CVPIPE_DATA_ROOT or ./data")
    clr.set_defaults(func=_clear)
