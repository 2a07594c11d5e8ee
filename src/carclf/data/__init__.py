"""Data layer: dataset layouts, robust image decoding, checks, augmentation presets, DataModule."""

from carclf.data.images import load_rgb
from carclf.data.layouts import DatasetIndex, read_dataset

__all__ = ["DatasetIndex", "load_rgb", "read_dataset"]
