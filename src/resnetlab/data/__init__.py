"""The data layer: DATA spec -> DataSplits of ImageSets -> DeviceLoader batches."""

from resnetlab.data.augment import AugmentConfig
from resnetlab.data.imageset import DataSplits, ImageSet
from resnetlab.data.loader import DeviceLoader
from resnetlab.data.splits import load_splits, load_splits_for

__all__ = ["AugmentConfig", "DataSplits", "DeviceLoader", "ImageSet", "load_splits", "load_splits_for"]
