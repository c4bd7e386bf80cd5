"""The console of a ``raycart`` command: Raycart's own lines, one per step, and little else.

Library code logs (``logging.getLogger(__name__)`` in ``training``, ``tuning`` and ``serving``);
:func:`setup` shows those loggers' INFO lines on stdout as plain text, and with ``--verbose``
their DEBUG lines and Ray's own output too (:func:`training.common.ray_env.verbose`).
"""

from __future__ import annotations

import logging
import os
import sys

PACKAGES = ("training", "tuning", "serving")


def setup(verbose: bool = False) -> None:
    if verbose:
        os.environ["RAYCART_VERBOSE"] = "1"  # init_ray: log_to_driver, Ray Data bars; inherited by jobs
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in PACKAGES:
        logger = logging.getLogger(name)
        logger.handlers = [h for h in logger.handlers if not getattr(h, "_raycart_console", False)]
        handler._raycart_console = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG if verbose else logging.INFO)
        logger.propagate = False
