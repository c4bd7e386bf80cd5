"""Objects named by an import path, ``"package.module:attribute"`` (``attribute`` may be dotted),
as Serve's config names an app builder: the registry of model kinds and the Serve app's hooks
(promotion, the retrainer) name what they call this way and import it only on use."""

from __future__ import annotations

import importlib
from typing import Any


def resolve(import_path: str) -> Any:
    """The object ``import_path`` names, imported with importlib; a clear ValueError for a
    malformed path.

    >>> resolve("training.common.importpath:resolve").__name__
    'resolve'
    """
    module, sep, attribute = import_path.partition(":")
    if not sep or not module or not attribute:
        raise ValueError(f"{import_path!r}: an import path is 'package.module:attribute'")
    obj: Any = importlib.import_module(module)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj
