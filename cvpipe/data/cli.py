"""``cvpipe data``: prepare the dataset cache and describe it."""

from __future__ import annotations

import argparse
import json
import time

from cvpipe.data.dataset import load_cifar10


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """Options that choose and decode a dataset; shared by every command that loads data."""
    g = parser.add_argument_group("dataset")
    g.add_argument("--source", help="URL, official cifar-10-python.tar.gz or cifar-10-batches-py/, "
                   "or an image-folder tree (folder or .tar[.gz]) with train/<class>/ and "
                   "test/<class>/. Default: $CVPIPE_CIFAR10_SOURCE, else the official download.")
    g.add_argument("--data-root", help="downloads and caches (default: $CVPIPE_DATA_ROOT or ./data)")
    g.add_argument("--checksum", help="expected md5:<hex> or sha256:<hex> of an archive source "
                   "(the official archive is always checked against its published MD5)")
    g.add_argument("--limit-per-class", type=int, metavar="N",
                   help="keep only the first N images of each class in each split")
    g.add_argument("--on-size-mismatch", choices=("error", "resize"), default="error",
                   help="images that are not 32x32: refuse them (default) or resize them")
    g.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of each class in train held out for validation (default 0.1)")
    g.add_argument("--seed", type=int, default=0, help="seed of the validation split (default 0)")


def load_from_args(args: argparse.Namespace, rebuild: bool = False):  # noqa: ANN201
    """The Dataset that the options of :func:`add_source_arguments` describe."""
    return load_cifar10(
        args.source, args.data_root, checksum=args.checksum,
        limit_per_class=args.limit_per_class, on_size_mismatch=args.on_size_mismatch,
        val_fraction=args.val_fraction, seed=args.seed, rebuild=rebuild,
    )


def _prepare(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    ds = load_from_args(args, rebuild=args.rebuild)
    print(ds.summary())
    print(f"\nready in {time.perf_counter() - start:.2f} s")
    return 0


def _info(args: argparse.Namespace) -> int:
    ds = load_from_args(args)
    if args.json:
        train_idx, val_idx = ds.split_indices()
        info = dict(ds.manifest, cache_dir=str(ds.cache_dir),
                    validation={"fraction": ds.val_fraction, "seed": ds.seed,
                                "train": len(train_idx), "val": len(val_idx)})
        print(json.dumps(info, indent=2))
    else:
        print(ds.summary())
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="prepare and describe the CIFAR-10 dataset",
                          description="Prepare the CIFAR-10 dataset cache and describe it.")
    data_sub = data.add_subparsers(dest="data_command", metavar="<action>", required=True)

    prepare = data_sub.add_parser(
        "prepare", help="download/verify/decode the dataset into the cache",
        description="Fetch the source if it is a URL, verify its checksum, and decode it once "
        "into a memory-mappable cache under the data root. A second run reuses the cache; a "
        "changed source builds a new one.")
    add_source_arguments(prepare)
    prepare.add_argument("--rebuild", action="store_true", help="decode again even if cached")
    prepare.set_defaults(func=_prepare)

    info = data_sub.add_parser(
        "info", help="print counts per class, checksum and cache location",
        description="Print the dataset summary (preparing the cache first if needed).")
    add_source_arguments(info)
    info.add_argument("--json", action="store_true", help="print the manifest as JSON")
    info.set_defaults(func=_info)
