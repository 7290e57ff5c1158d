"""``cvpipe extract``: features of a dataset split or an image collection, to disk, in chunks."""

from __future__ import annotations

import argparse
import json
import textwrap
from typing import Any

from cvpipe.config import MODELS_DIR_DEFAULT
from cvpipe.data.cli import add_source_arguments, load_from_args
from cvpipe.data.dataset import parse_size
from cvpipe.errors import ConfigError
from cvpipe.featurestore.cli import add_engine_arguments, engine
from cvpipe.featurestore.sources import ALLOWED_PROTOCOLS, MAX_FILE_BYTES, MAX_LIST_BYTES
from cvpipe.featurestore.store import DEFAULT_CHUNK_ROWS, FORMATS, NPZ_MAX_BYTES
from cvpipe.images import IMAGE_FORMATS
from cvpipe.models.inputs import ModelInput


def _features_arg(text: str) -> str | dict[str, Any]:
    text = text.strip()
    if not text.startswith("{"):
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--features: invalid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ConfigError("--features: a JSON config must be an object")
    return value


def _params_arg(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--feature-params: invalid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ConfigError("--feature-params must be a JSON object such as '{\"hog__orientations\": 12}'")
    return value


def _model_input(name: str, models: str | None) -> ModelInput:
    """What a trained classic model takes (its features among it)."""
    from pathlib import Path

    from cvpipe.config import models_dir
    from cvpipe.models import load_model

    path = Path(name) if (Path(name) / "model.json").is_file() else models_dir(models) / name
    taken = load_model(path).input
    if taken.features is None:
        raise ConfigError(f"model {name!r} has no hand-made features (a CNN learns its own)")
    return taken


def _extract(args: argparse.Namespace) -> int:
    from cvpipe.featurestore.sources import DatasetSource, open_input

    fitted, size = None, parse_size(args.size)
    convert: dict = {"fit": args.fit}
    if args.model:
        if args.feature_params:
            raise ConfigError("--feature-params goes with --features, not --model")
        taken = _model_input(args.model, args.models_dir)
        features = taken.features
        fitted = taken.extractor if taken.features.stateful else None
        if size is not None and fitted is not None and size != taken.size:
            raise ConfigError(f"the model learned its features on {taken.size[0]}x{taken.size[1]} "
                              "images: leave --size out")
        size = size or taken.size
        convert = {"channels": taken.channels, "fit": taken.fit}
    else:
        from cvpipe.features import FeatureSpec

        # checked here, before a dataset is decoded or a URL list read for it; the parsed spec
        # carries its parameters down
        features = FeatureSpec.parse(_features_arg(args.features), _params_arg(args.feature_params),
                                     drop_runtime=True)
    if args.input:
        source = open_input(args.input, size or (32, 32), **convert)
    else:
        source = DatasetSource(load_from_args(args), args.split)
    progress = not (args.no_progress or args.quiet)
    common = dict(out=args.out, root=args.data_root, chunk_rows=args.chunk_size,
                  fmt=args.format, force=args.force, progress=progress)
    with engine(args) as client:
        if client is not None:
            from cvpipe.featurestore.dask import extract_dask

            result = extract_dask(source, features, client=client, fitted=fitted, **common)
        else:
            from cvpipe.featurestore.local import extract

            result = extract(source, features, n_jobs=args.n_jobs, fitted=fitted, **common)
    if args.json:
        print(json.dumps({"path": result.path, "reused": result.reused,
                          "computed_chunks": result.computed_chunks, **result.manifest}, indent=2))
    else:
        print(result.summary())
    return 0


def _wrap(text: str) -> str:
    return "\n\n".join(textwrap.fill(par, 88) for par in text.split("\n\n"))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extract", help="extract a feature set for a dataset split (or image folder) to disk",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=_wrap(
            "Describe every image of a dataset split (or of an image folder / list of paths or "
            "URLs) with a named feature set, writing the features in row chunks so memory stays "
            "bounded whatever the number of images.\n\n"
            "The output folder, <data root>/features/<key>/ unless --out, is keyed by the "
            "effective feature parameters and the input (dataset checksum and split, or the file "
            "listing): a second run reuses it, an interrupted run resumes without duplicated or "
            "missing rows. Read it with cvpipe.featurestore.load_features(path).\n\n"
            "Engines: this machine (default, all cores), a local Dask cluster (--workers N), or a "
            "running Dask cluster (--scheduler tcp://HOST:PORT; workers need the input and the "
            "output folder at the same paths, or fsspec URLs)."
        ),
        epilog=(
            "examples:\n"
            "  cvpipe extract --features hog+color --split train_full\n"
            "  cvpipe extract --features hog --feature-params '{\"orientations\": 12}' --split test\n"
            "  cvpipe extract --features '{\"name\": \"hog2\", \"components\": [{\"name\": \"hog\", "
            "\"params\": {\"pixels_per_cell\": 4}}, {\"name\": \"hog\"}]}'\n"
            "  cvpipe extract --features hog+color --input photos/ --size 32 --workers 4\n"
            "  cvpipe extract --features hog+color --input urls.txt --scheduler tcp://10.0.0.5:8786\n"
            "  cvpipe extract --model patches-linear-svm --split test   # a model's learned features"
        ),
    )
    f = p.add_argument_group("features")
    which = f.add_mutually_exclusive_group(required=True)
    which.add_argument("--features", metavar="NAME|JSON",
                       help="feature set: components joined by '+' (hog, color, pixels), e.g. "
                       "hog+color; or a JSON features config {\"name\": ..., \"params\": {...}} or "
                       "{\"name\": label, \"components\": [...]} as in pipeline specs")
    which.add_argument("--model", metavar="NAME|DIR",
                       help="the feature set of a trained classic model, as it was fitted (learned "
                       "patch features included); --input images are resized to its input size")
    f.add_argument("--models-dir", help=f"where --model is looked for (default {MODELS_DIR_DEFAULT})")
    f.add_argument("--feature-params", metavar="JSON",
                   help="parameters for the feature set, e.g. '{\"hog__orientations\": 12, "
                   "\"color__space\": \"lab\"}'")
    add_source_arguments(p)
    p.add_argument("--split", default="train", choices=("train", "val", "train_full", "test"),
                   help="dataset split (default train: the training part without validation)")
    i = p.add_argument_group("image collection (instead of the dataset)")
    i.add_argument("--input", metavar="DIR|FILE|URL",
                   help="a folder of images (recursive, sorted by path; labels from the first "
                   "folder level when every image is in one), one image file, or a text file of "
                   "paths/URLs, one a line (labels -1); read through fsspec. Protocols: "
                   f"{', '.join(ALLOWED_PROTOCOLS)} "
                   f"(chained URLs a::b are refused); files over {MAX_FILE_BYTES >> 20} MiB and lists "
                   f"over {MAX_LIST_BYTES >> 20} MiB are refused; formats: {', '.join(IMAGE_FORMATS)}")
    o = p.add_argument_group("output")
    o.add_argument("--out", metavar="DIR", help="output folder (default <data root>/features/<key>)")
    o.add_argument("--format", choices=FORMATS, default="auto",
                   help=f"npz, zarr, npy (uncompressed, memory-mapped, local folders; what training "
                   f"reads), or auto: npz up to {NPZ_MAX_BYTES >> 20} MiB of features, zarr above "
                   "(default auto)")
    o.add_argument("--chunk-size", type=int, metavar="ROWS",
                   help=f"rows per chunk, the unit of work and resumption (default "
                   f"{DEFAULT_CHUNK_ROWS}, fewer "
                   "where two chunks of features would not fit in half the memory available)")
    o.add_argument("--force", action="store_true",
                   help="extract again, discarding a finished or partial result")
    o.add_argument("--json", action="store_true", help="print the manifest as JSON")
    add_engine_arguments(p)
    p.add_argument("--n-jobs", type=int, default=-1,
                   help="single machine: feature threads (default -1: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_extract)
