"""Readers for the supported dataset formats, each yielding decoded uint8 arrays.

Formats (each as an archive or an extracted folder):

* ``cifar10``: the official python release, ``cifar-10-batches-py/{data_batch_1..5,
  test_batch,batches.meta}``;
* ``cifar100``: the official python release, ``cifar-100-python/{train,test,meta}``, with its
  fine (100) or coarse (20) labels;
* ``idx``: MNIST's IDX files (``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``), as
  MNIST and Fashion-MNIST publish them;
* ``image-folder``: ``[prefix/]{train,test}/<class>/<image>``, or ``[prefix/]<class>/<image>``
  (then a seeded, stratified share of each class becomes the test split).

Images are uint8 ``(N, H, W, C)``, channels last: 3 (RGB) or 1 (gray, as MNIST's IDX files and
grayscale image folders are kept).

Modules: :mod:`.cifar` and :mod:`.idx` (one format each), :mod:`.official` (the official
releases from their archive or folder, and telling a source's format), :mod:`.folders` (image
folders), :mod:`.archives` (reading tar archives and folders safely), :mod:`.decoded` (what
every reader returns).
"""

from cvpipe.data.readers.archives import MAX_ARCHIVE_BYTES, MAX_MEMBER_BYTES
from cvpipe.data.readers.decoded import CIFAR10_CLASSES, FORMATS, SPLITS, DecodedDataset
from cvpipe.data.readers.folders import decode_image, find_image_root, read_image_folder
from cvpipe.data.readers.idx import IDX_FILES, MAX_IDX_VALUES
from cvpipe.data.readers.official import detect_format, read_official

__all__ = ["CIFAR10_CLASSES", "FORMATS", "IDX_FILES", "MAX_ARCHIVE_BYTES", "MAX_IDX_VALUES",
           "MAX_MEMBER_BYTES", "SPLITS", "DecodedDataset", "decode_image", "detect_format",
           "find_image_root", "read_image_folder", "read_official"]
