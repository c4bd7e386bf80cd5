"""Raycart's data layer: the canonical dataset, source converters, splits and Ray Data readers.

Plain pyarrow/numpy; importing it does not import Ray.
"""

from training.data.dataset import Dataset, load_dataset, save_dataset
from training.data.splits import SplitSpec, build_split

__all__ = ["Dataset", "load_dataset", "save_dataset", "SplitSpec", "build_split"]
