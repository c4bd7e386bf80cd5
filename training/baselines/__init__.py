"""Classic baselines the learned models must beat: popularity and item-kNN CF."""

from training.baselines.itemknn import ItemKNN, ItemKNNConfig
from training.baselines.popularity import Popularity

__all__ = ["Popularity", "ItemKNN", "ItemKNNConfig"]
