"""``raycart serve``: run the Serve application locally on 127.0.0.1 until interrupted."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from typing import TYPE_CHECKING

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from serving.edge.security import ApiKeys


def listen_keys(host: str, api_keys_file: str | None) -> ApiKeys:
    """The keys to serve with; a clear error naming the file for a bad or empty key file, or for
    ``host`` beyond loopback without keys (``raycart serve`` and ``raycart shop``)."""
    from serving.edge.security import ApiKeys, KeyFileError, is_loopback
    from training.common.errors import DataError

    try:
        keys = ApiKeys.load(api_keys_file)
    except KeyFileError as exc:
        raise DataError(f"--api-keys-file: {exc}") from None
    if not keys.configured and not is_loopback((host, 0)):
        raise DataError(f"--host {host}: listening beyond loopback needs API keys (--api-keys-file FILE with "
                        "'shopper KEY' / 'admin KEY' lines; README: Security and durability)")
    return keys


def add_listen_args(p: argparse.ArgumentParser) -> None:
    """``--host``, ``--port`` and ``--api-keys-file``, checked by :func:`listen_keys`."""
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-keys-file", help="API keys, lines '<shopper|admin> <key>' (required beyond loopback)")


# raycart serve's own flags -> the AppArgs field each sets (every field can be set in --config)
FLAG_FIELDS = {"models": "model_dir", "data": "data_dir", "feedback": "feedback_root", "wal_dir": "wal_dir",
               "items_root": "items_root", "policy_state": "policy_state", "user_state": "user_state",
               "state_dir": "state_dir", "redis_url": "redis_url", "image_root": "image_root",
               "trust_loopback": "trust_loopback", "shopper_token_secret_file": "shopper_token_secret_file",
               "api_keys_file": "api_keys_file"}
# the command's defaults where they differ from AppArgs' (local folders under raycart-work/)
FLAG_DEFAULTS = {"feedback_root": "raycart-work/feedback", "wal_dir": "raycart-work/serve-wal",
                 "items_root": "raycart-work/new-items", "policy_state": "raycart-work/policy/state.npz",
                 "state_dir": "raycart-work/user-state"}
PATH_FIELDS = ("model_dir", "data_dir", "feedback_root", "wal_dir", "items_root", "policy_state", "state_dir",
               "image_root", "api_keys_file", "shopper_token_secret_file", "base_data_dir", "retrain_work")


def app_args_of(args: argparse.Namespace):
    """The app's :class:`~serving.core.schemas.AppArgs`: the command's defaults, then ``--config``
    (a YAML/JSON mapping of AppArgs fields, as under ``args:`` in ``cluster/serve.yaml``), then the
    flags given; paths made absolute. A bad field is a clear error naming it."""
    import yaml
    from pydantic import ValidationError

    from serving.core.schemas import AppArgs
    from training.common import storage
    from training.common.errors import DataError, StorageError

    fields: dict = dict(FLAG_DEFAULTS)
    if args.config:
        try:
            loaded = yaml.safe_load(storage.read_bytes(args.config))
        except (OSError, StorageError, yaml.YAMLError) as exc:
            raise DataError(f"--config {args.config}: {str(exc)[:300]}") from None
        if not isinstance(loaded, dict):
            raise DataError(f"--config {args.config}: expected a mapping of AppArgs fields")
        unknown = sorted(set(loaded) - set(AppArgs.model_fields))
        if unknown:
            raise DataError(f"--config {args.config}: unknown field(s) {unknown} (see serving/core/schemas.py AppArgs)")
        fields.update(loaded)
    fields.update({field: getattr(args, flag) for flag, field in FLAG_FIELDS.items()
                   if getattr(args, flag, None) is not None})
    for need, flag in (("model_dir", "--models"), ("data_dir", "--data")):
        if not fields.get(need):
            raise DataError(f"{flag} (or {need} in --config) is required")
    fields.update({k: storage.absolute(fields[k]) for k in PATH_FIELDS if fields.get(k)})
    try:
        return AppArgs(**fields)
    except ValidationError as exc:
        bad = "; ".join(": ".join(filter(None, (".".join(map(str, e["loc"])), e["msg"]))) for e in exc.errors()[:5])
        raise DataError(f"{'--config ' + args.config + ': ' if args.config else ''}{bad}") from None


def serve_app(args: argparse.Namespace) -> int:
    from training.common.errors import DataError
    from training.common.ray_env import init_ray
    from training.inference.modeldir import read_card

    app_args = app_args_of(args)  # a clear error before Ray starts
    keys = listen_keys(args.host, app_args.api_keys_file)
    if not keys.configured and not app_args.trust_loopback:
        raise DataError("no API keys: pass --api-keys-file FILE ('shopper KEY' / 'admin KEY' lines), or "
                        "--trust-loopback to serve clients on this machine without keys (docs/security.md)")
    if app_args.shopper_token_secret_file:
        from serving.edge.identity import ShopperTokens, TokenSecretError

        try:
            ShopperTokens.load(app_args.shopper_token_secret_file)  # a clear error before Ray starts
        except TokenSecretError as exc:
            raise DataError(f"--shopper-token-secret-file: {exc}") from None
    card = read_card(app_args.model_dir)  # a clear error before Ray starts
    if card.kind != "ranker":
        raise DataError(f"{app_args.model_dir}: serving needs a ranker directory (raycart train ranker); "
                        f"this one holds a {card.kind!r} model")
    init_ray()  # before serving.deploy imports Ray: binds 127.0.0.1 locally
    from serving.deploy.run import start_app, stop_app
    from training.common.ray_env import quiet_ray

    quiet_ray()  # importing Serve set its driver logger back to INFO

    start_app(app_args, args.host, args.port)
    log.info(f"raycart serving {app_args.model_dir} on http://{args.host}:{args.port} (Ctrl-C to stop)")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("raycart: shutting down (flushing the feedback log, checkpointing the policy)")
    stop_app()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve recommendations over HTTP (Ray Serve)",
                       description="Start the retrieve -> rank -> policy application on a local Ray, "
                                   "bound to 127.0.0.1, until SIGINT/SIGTERM.")
    p.add_argument("--config", help="YAML/JSON of AppArgs fields (serving/core/schemas.py; the keys under `args:` in "
                                    "cluster/serve.yaml): sets any field of the app; the flags below override it")
    p.add_argument("--models", help="ranker model directory (raycart train ranker); or model_dir in --config")
    p.add_argument("--data", help="the dataset it was trained on; or data_dir in --config")
    add_listen_args(p)
    p.add_argument("--feedback", help="feedback log root (local or s3://; default raycart-work/feedback)")
    p.add_argument("--wal-dir", help="local write-ahead log folder (default raycart-work/serve-wal)")
    p.add_argument("--items-root", help="items added at runtime (local or s3://; default raycart-work/new-items)")
    p.add_argument("--policy-state", help="policy checkpoint (local or s3://; default raycart-work/policy/state.npz)")
    p.add_argument("--user-state", choices=["embedded", "redis"],
                   help="where real-time user state lives: a Serve deployment journaling to --state-dir (default), "
                        "or Redis")
    p.add_argument("--state-dir", help="embedded user state: journal folder (default raycart-work/user-state)")
    p.add_argument("--redis-url", help="with --user-state redis (default redis://127.0.0.1:6379/0)")
    p.add_argument("--image-root", help="folder (or s3:// prefix) POST /items may read images from")
    p.add_argument("--trust-loopback", action="store_true", default=None,
                   help="without --api-keys-file: serve clients on this machine (loopback) with every role")
    p.add_argument("--shopper-token-secret-file",
                   help="secret of signed shopper tokens: /recommend and /feedback act only for the shopper an "
                        "X-Shopper-Token names (raycart token mints one)")
    p.set_defaults(func=serve_app)


def mint_token(args: argparse.Namespace) -> int:
    from serving.edge.identity import ShopperTokens, TokenSecretError, subject
    from training.common.errors import DataError

    try:
        tokens = ShopperTokens.load(args.secret_file)
    except TokenSecretError as exc:
        raise DataError(f"--secret-file: {exc}") from None
    sub = subject(args.user, args.session)
    assert sub is not None  # argparse requires one of the two
    print(tokens.mint(sub, args.ttl_s))
    return 0


def register_token(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("token", help="mint a signed shopper token (X-Shopper-Token) for a user or a session",
                       description="What a shop's backend does for a logged-in shopper (serving.edge.identity has the "
                                   "format): sign 'u:<user>' or 's:<session>' and an expiry with the secret of "
                                   "the app's shopper_token_secret_file.")
    p.add_argument("--secret-file", required=True, help="the app's shopper_token_secret_file")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", help="a user id")
    who.add_argument("--session", help="an anonymous session id")
    p.add_argument("--ttl-s", type=float, default=3600.0, help="seconds the token is valid (default 3600)")
    p.set_defaults(func=mint_token)
