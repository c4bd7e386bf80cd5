"""A trained model's state as the models save and load it: named components, each a dict of
arrays (``state/<component>.npz`` in a model directory, :mod:`training.inference.modeldir`)."""

from __future__ import annotations

import numpy as np

from training.common.errors import DataError

ModelState = dict[str, dict[str, np.ndarray]]


def component(state: ModelState, name: str, where: str = "model state") -> dict[str, np.ndarray]:
    """One component of a state; a clear error when it is missing."""
    if name not in state:
        raise DataError(f"{where}: no component {name!r} (has {', '.join(sorted(state)) or 'none'})")
    return state[name]
