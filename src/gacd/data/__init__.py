"""Datasets: readers for the official formats, a fixed validation split, device batches."""

from gacd.data.base import ArraySplit, DataError, RawDataset
from gacd.data.loader import Augment, Batch, DeviceSplit, augment_batch
from gacd.data.registry import (
    DATASET_NAMES,
    DEFAULTS,
    DatasetDefaults,
    read_dataset,
    resize_dataset,
    restrict_classes,
    split_validation,
)

__all__ = [
    "DATASET_NAMES",
    "DEFAULTS",
    "ArraySplit",
    "Augment",
    "Batch",
    "DataError",
    "DatasetDefaults",
    "DeviceSplit",
    "RawDataset",
    "augment_batch",
    "read_dataset",
    "resize_dataset",
    "restrict_classes",
    "split_validation",
]
