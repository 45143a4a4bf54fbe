"""Datasets: one record each, readers for the official formats, a fixed validation split,
device batches."""

from gacd.data.arrays import ArraySplit, DataError, RawDataset
from gacd.data.datasets import (
    DATASETS,
    DatasetDefaults,
    DatasetInfo,
    dataset_info,
    dataset_names,
    read_dataset,
    register_dataset,
    resize_dataset,
    restrict_classes,
    split_validation,
)
from gacd.data.loader import Augment, Batch, DeviceSplit, augment_batch

__all__ = [
    "DATASETS",
    "ArraySplit",
    "Augment",
    "Batch",
    "DataError",
    "DatasetDefaults",
    "DatasetInfo",
    "DeviceSplit",
    "RawDataset",
    "augment_batch",
    "dataset_info",
    "dataset_names",
    "read_dataset",
    "register_dataset",
    "resize_dataset",
    "restrict_classes",
    "split_validation",
]
