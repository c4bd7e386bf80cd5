"""Raycart training side: data, models, evaluation, baselines and Ray Train jobs.

`serving` and `tuning` may import from here; nothing here imports them.
"""

__version__ = "0.1.0"
