"""Classic baselines the learned models must beat: popularity and item-kNN CF.

See :mod:`training.baselines.popularity` and :mod:`training.baselines.itemknn`.
"""
