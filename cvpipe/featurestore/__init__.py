"""Batch feature extraction to disk: chunked, resumable, keyed, on one machine or on Dask.

``cvpipe extract`` describes every image of a dataset split (or of an image folder / list of
paths or URLs) with a named feature set and writes the result in row chunks, so memory
stays bounded whatever the number of images. The output folder,
``<data root>/features/<key>/``, is named by a hash of the effective feature parameters and
the input's fingerprint (dataset checksum and split, or the file listing): a second run
finds and reuses it, an interrupted one resumes where it stopped. See
:mod:`cvpipe.featurestore.store` for the layout.

>>> from cvpipe.data import load_cifar10                                  # doctest: +SKIP
>>> from cvpipe.featurestore import DatasetSource, extract, load_features      # doctest: +SKIP
>>> res = extract(DatasetSource(load_cifar10(), "train"), "hog+color")   # doctest: +SKIP
>>> features, labels, manifest = load_features(res.path)                 # doctest: +SKIP

:func:`cvpipe.featurestore.dask.extract_dask` runs the same extraction on a Dask cluster.
"""

from __future__ import annotations

import lazy_loader

# The names below load their module on first use, so that importing one module of the
# package (e.g. `cvpipe --help` building its parsers) does not import every library.
__getattr__, __dir__, _lazy_names = lazy_loader.attach(__name__, submod_attrs={
    "core": ["ExtractPlan", "ExtractResult", "plan_extraction"],
    "local": ["extract"],
    "sources": ["DatasetSource", "FileSource", "open_input"],
    "store": ["DEFAULT_CHUNK_ROWS", "FORMATS", "FeatureStore", "load_features"],
})
__all__ = _lazy_names
