"""Data: find or fetch the data set, decode it once into a shared memory-mapped file, serve batches.

Every source ends up as the same :class:`Dataset` of uint8 images and int64 labels:

* CIFAR-10 as users get it: the ``cifar-10-batches-py`` pickles or the official
  ``cifar-10-python.tar.gz`` (downloaded into the data folder on first use, read in place);
* any class-folder tree ``train/<class>/<image>`` + ``test/<class>/<image>`` (ImageFolder layout);
* a ``.tar.gz`` of such a tree (this is how the shared CIFAR-10 JPEG pack is read, unextracted);
* an ignite_mlp data file (what the cache holds), used as it is.

The modules, one job each:

* :mod:`~ignite_mlp.data.sources`: which kind of source ``--data`` names; CIFAR-10's download
  and its pickles (read through a restricted unpickler);
* :mod:`~ignite_mlp.data.images`: walking class-folder trees and tarballs, decoding one image;
* :mod:`~ignite_mlp.data.parallel`: decoding a tree or tarball on every core;
* :mod:`~ignite_mlp.data.cache`: the data file, memory-mapped read-only by every reader;
* :mod:`~ignite_mlp.data.load`: :func:`load_dataset`, the cache folder and its locks;
* :mod:`~ignite_mlp.data.loader`: :class:`TensorLoader` (batches) and normalisation;
* :mod:`~ignite_mlp.data.dataset`: :class:`Dataset`, the label check and the summary.
"""

from ignite_mlp.data.dataset import Dataset, check_labels, summarize
from ignite_mlp.data.load import default_cache_dir, load_dataset
from ignite_mlp.data.loader import TensorLoader, channel_stats, denormalize, normalization

__all__ = [
    "Dataset",
    "TensorLoader",
    "channel_stats",
    "check_labels",
    "default_cache_dir",
    "denormalize",
    "load_dataset",
    "normalization",
    "summarize",
]
