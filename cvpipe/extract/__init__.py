"""``cvpipe extract``: the command that writes a feature set of a dataset split or an image
collection to disk. The engine it drives (stores, sources, the single-machine and Dask
extraction loops) is :mod:`cvpipe.featurestore`, which training uses too."""
