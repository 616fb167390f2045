"""Data sets as train/test DataLoaders: `loaders(name, ...)` -> DataBundle."""

from edgeprune.data.base import cache_dir
from edgeprune.data.registry import DataBundle, list_datasets, loaders

__all__ = ["DataBundle", "cache_dir", "list_datasets", "loaders"]
