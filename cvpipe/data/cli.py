"""``cvpipe data``: prepare the dataset cache and describe it."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from cvpipe.data.catalog import CATALOG
from cvpipe.data.dataset import load_dataset, parse_size
from cvpipe.data.splits import check_split_options
from cvpipe.errors import ConfigError
from cvpipe.images import DEFAULT_FIT, FIT_POLICIES


def add_dataset_arguments(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Options that choose a dataset and how it is decoded (every command that loads data)."""
    g = parser.add_argument_group("dataset")
    g.add_argument("--dataset", metavar="NAME|PATH|URL",
                   help=f"a dataset by name ({', '.join(CATALOG)}; default cifar10), or a "
                   "path/URL: an official archive or folder (CIFAR-10/100 python release, "
                   "MNIST-style IDX files) or an image-folder tree (folder or .tar[.gz]) with "
                   "train/<class>/ and test/<class>/, or with class folders only (then "
                   "--test-fraction of each class becomes the test split)")
    g.add_argument("--source", help="where a named dataset's files are: a URL, archive or "
                   "folder (official format or image folder). Default: $CVPIPE_<NAME>_SOURCE "
                   "(e.g. $CVPIPE_CIFAR10_SOURCE), else the official download")
    g.add_argument("--data-root", help="downloads and caches (default: $CVPIPE_DATA_ROOT or ./data)")
    g.add_argument("--checksum", help="expected md5:<hex> or sha256:<hex> of an archive source "
                   "(official archives are always checked against their published MD5)")
    g.add_argument("--size", metavar="HxW", help="bring every image to this size (default: the "
                   "images' own size, which must then be the same for all; N means NxN)")
    g.add_argument("--fit", choices=FIT_POLICIES, default=DEFAULT_FIT,
                   help="how --size is reached: crop (keep the aspect ratio, cut the centre; "
                   "default), pad (keep the aspect ratio, black borders) or stretch")
    g.add_argument("--test-fraction", type=float, default=0.2,
                   help="class folders without train/ and test/: share of each class drawn "
                   "(seeded, stratified) into the test split (default 0.2)")
    return g


def dataset_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of :func:`cvpipe.data.load_dataset` from
    :func:`add_dataset_arguments`' options."""
    return {"dataset": args.dataset, "root": args.data_root, "source": args.source,
            "checksum": args.checksum, "size": parse_size(args.size), "fit": args.fit,
            "test_fraction": args.test_fraction}


def _split_option(number: type, field: str) -> Any:
    """An argparse type for ``--val-fraction`` or ``--seed``: refused as it is parsed, so a
    command that would not load data (a model that exists) does not let it pass."""
    def parse(text: str) -> Any:
        try:
            value = number(text)
        except ValueError:
            kind = "a whole number" if number is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {kind}, not {text!r}") from None
        try:
            check_split_options(**{"val_fraction": 0.0, "seed": 0, field: value})
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value
    return parse


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """The dataset options plus a subset and the validation split (data, train, evaluate,
    extract)."""
    g = add_dataset_arguments(parser)
    g.add_argument("--limit-per-class", type=int, metavar="N",
                   help="keep only the first N images of each class in each split")
    g.add_argument("--val-fraction", type=_split_option(float, "val_fraction"), default=0.1,
                   help="share of each class in train held out for validation (default 0.1)")
    g.add_argument("--seed", type=_split_option(int, "seed"), default=0,
                   help="seed of the validation split (and of a drawn test split; default 0)")


def load_from_args(args: argparse.Namespace, rebuild: bool = False):  # noqa: ANN201
    """The Dataset that the options of :func:`add_source_arguments` describe."""
    return load_dataset(**dataset_options(args), limit_per_class=args.limit_per_class,
                        val_fraction=args.val_fraction, seed=args.seed, rebuild=rebuild)


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
    data = sub.add_parser("data", help="prepare and describe a dataset (CIFAR-10 by default)",
                          description="Prepare a dataset's cache and describe it: CIFAR-10 by "
                          "default, any catalogued dataset by name, or a path (--dataset).")
    def usage(_args: argparse.Namespace) -> int:
        data.print_help()  # 'cvpipe data' alone: its actions; none runs by default (a download)
        return 2

    data.set_defaults(func=usage)
    data_sub = data.add_subparsers(dest="data_command", metavar="<action>")

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
