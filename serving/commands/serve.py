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


def serve_app(args: argparse.Namespace) -> int:
    from training.common import storage
    from training.common.errors import DataError
    from training.common.ray_env import init_ray
    from training.inference.modeldir import read_card

    keys = listen_keys(args.host, args.api_keys_file)
    if not keys.configured and not args.trust_loopback:
        raise DataError("no API keys: pass --api-keys-file FILE ('shopper KEY' / 'admin KEY' lines), or "
                        "--trust-loopback to serve clients on this machine without keys (README: Security and "
                        "durability)")
    if args.shopper_token_secret_file:
        from serving.edge.identity import ShopperTokens, TokenSecretError

        try:
            ShopperTokens.load(args.shopper_token_secret_file)  # a clear error before Ray starts
        except TokenSecretError as exc:
            raise DataError(f"--shopper-token-secret-file: {exc}") from None
    card = read_card(args.models)  # a clear error before Ray starts
    if card.kind != "ranker":
        raise DataError(f"{args.models}: serving needs a ranker directory (raycart train ranker); "
                        f"this one holds a {card.kind!r} model")
    init_ray()  # before serving.deploy imports Ray: binds 127.0.0.1 locally
    from serving.deploy.run import start_app, stop_app
    from training.common.ray_env import quiet_ray

    quiet_ray()  # importing Serve set its driver logger back to INFO

    from serving.core.schemas import AppArgs

    absolute = storage.absolute  # Serve replicas need not share this process's working directory
    app_args = AppArgs(model_dir=absolute(args.models), data_dir=absolute(args.data),
                       feedback_root=absolute(args.feedback), wal_dir=absolute(args.wal_dir),
                       policy_state=absolute(args.policy_state), items_root=absolute(args.items_root),
                       user_state=args.user_state, redis_url=args.redis_url, state_dir=absolute(args.state_dir),
                       api_keys_file=absolute(args.api_keys_file) if args.api_keys_file else None,
                       shopper_token_secret_file=absolute(args.shopper_token_secret_file)
                       if args.shopper_token_secret_file else None,
                       image_root=absolute(args.image_root) if args.image_root else None,
                       trust_loopback=args.trust_loopback)

    start_app(app_args, args.host, args.port)
    log.info(f"raycart serving {args.models} on http://{args.host}:{args.port} (Ctrl-C to stop)")
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
    p.add_argument("--models", required=True, help="ranker model directory (raycart train ranker)")
    p.add_argument("--data", required=True, help="the dataset it was trained on")
    add_listen_args(p)
    p.add_argument("--feedback", default="raycart-work/feedback", help="feedback log root (local or s3://)")
    p.add_argument("--wal-dir", default="raycart-work/serve-wal", help="local write-ahead log folder")
    p.add_argument("--items-root", default="raycart-work/new-items", help="items added at runtime (local or s3://)")
    p.add_argument("--policy-state", default="raycart-work/policy/state.npz", help="policy checkpoint (local or s3://)")
    p.add_argument("--user-state", choices=["embedded", "redis"], default="embedded",
                   help="where real-time user state lives: a Serve deployment journaling to --state-dir, or Redis")
    p.add_argument("--state-dir", default="raycart-work/user-state", help="embedded user state: journal folder")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="with --user-state redis")
    p.add_argument("--image-root", help="folder (or s3:// prefix) POST /items may read images from")
    p.add_argument("--trust-loopback", action="store_true",
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
