"""The ``cvpipe`` command: one entry point, a subcommand per job.

Each subcommand lives in its own module, which exposes ``register(subparsers)``; that
function adds its parser and sets ``func`` (called with the parsed arguments, returning an
exit code). Add new modules to :func:`command_modules`: imported by name there, so that the
layer contracts (pyproject.toml) see the CLI's edges.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from cvpipe import __version__
from cvpipe.errors import CvpipeError

log = logging.getLogger("cvpipe")


def command_modules() -> tuple[ModuleType, ...]:
    """The subcommands' modules, in the order ``--help`` lists them (imported when the parser
    is built, not when cvpipe is)."""
    from cvpipe.compare import cli as compare
    from cvpipe.data import cli as data
    from cvpipe.extract import cli as extract
    from cvpipe.featurestore import cli as store
    from cvpipe.models import cli as models
    from service import serve

    return data, models, compare, extract, store, serve


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cvpipe",
        description=(
            "Classic computer-vision features (colour histograms, HOG, learned patches) against "
            "a CNN on CIFAR-10 or any image dataset (--dataset): prepare data, extract "
            "features, train, compare, summarise across datasets, serve."
        ),
        epilog="Run 'cvpipe <command> --help' for a command's options. Environment: "
        "CVPIPE_CIFAR10_SOURCE (CIFAR-10's files; CVPIPE_MNIST_SOURCE etc. for the other named "
        "datasets), CVPIPE_DATA_ROOT (default ./data), "
        "CVPIPE_MODELS_DIR (default ./models).",
    )
    parser.add_argument("--version", action="version", version=f"cvpipe {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log output (-vv for debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for module in command_modules():
        module.register(sub)
    return parser


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    if verbose < 2:  # third-party chatter only at -vv
        for noisy in ("matplotlib", "PIL", "distributed", "numcodecs", "urllib3"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:  # a first try: the commands and what they do, not "arguments are required"
        parser.print_help()
        return 2
    args = parser.parse_args(argv)
    _setup_logging(args.verbose, args.quiet)
    try:
        return int(args.func(args) or 0)
    except CvpipeError as exc:
        log.debug("failure", exc_info=True)
        print(f"cvpipe: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cvpipe: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
