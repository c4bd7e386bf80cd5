"""The ``raycart`` command: a thin dispatcher over plain functions.

Sub-commands are plugins registered under the ``raycart.commands`` entry-point group (see
``pyproject.toml``), so ``serving`` and ``tuning`` add theirs without ``training`` importing
them. Each plugin's ``register(subparsers)`` adds a parser whose ``func(args)`` does the work.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import entry_points
from typing import NoReturn

from training import __version__
from training.common.errors import RaycartError
from training.common.ray_env import loopback_before_import


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raycart", description="Ray-native multimodal recommender system for e-commerce.")
    parser.add_argument("--version", action="version", version=f"raycart {__version__}")
    parser.add_argument("--verbose", action="store_true",
                        help="also show Ray's own output (workers' logs, Ray Data progress bars) on the console")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for ep in sorted(entry_points(group="raycart.commands"), key=lambda e: e.name):
        ep.load()(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    loopback_before_import()  # before any plugin imports Ray (a local Ray then binds 127.0.0.1 only)
    parser = build_parser()
    args = parser.parse_args(argv)
    from training.common import console
    console.setup(verbose=args.verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except RaycartError as exc:
        print(f"raycart: error: {exc}", file=sys.stderr)
        _exit_now(2)
    except KeyboardInterrupt:
        print("raycart: interrupted", file=sys.stderr)
        return 130


def _exit_now(code: int) -> NoReturn:
    """Exit with ``code`` now that the error is printed, without the interpreter's teardown: a
    native thread pool (Arrow's; apache/arrow#34314) torn down at exit can abort the process
    (SIGABRT, "terminate called without an active exception") after the right message, turning a
    clean exit 2 into a crash. Ray, if this command started it, is shut down first."""
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        sys.modules["ray"].shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
