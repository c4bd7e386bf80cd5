"""``raycart demo``: the main job end to end, on real data.

1. prepare the dataset (Amazon Beauty by default; cached in the work directory);
2. fit and evaluate the baselines (popularity, item-kNN);
3. train the sequential retriever and the multimodal ranker with Ray Train (2 CPU workers;
   models cached by configuration, so a rerun serves at once);
4. serve them with Ray Serve on 127.0.0.1 (:mod:`serving.deploy.app`);
5. answer a few real requests over HTTP and print them: a known user, feedback, an anonymous
   session, a brand-new item added at runtime and its neighbours;
6. show the online loop: a shopper clicks, the next answer changes and says why (on the synthetic
   shop after a short warm-up of simulated shoppers, so the policy has seen real feedback);
7. shut down cleanly (feedback log flushed, policy checkpointed) -- or, with ``--keep-serving``,
   stay up until SIGINT/SIGTERM.

``--smoke`` runs the same path on a small synthetic shop with tiny models (about 2 minutes here).
Lives in ``serving`` because it runs the Serve app (nothing imports ``serving``).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import logging
import signal
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SHOP = "shop"  # the synthetic shop of default size (planted tastes; see training.data.sources.synthetic)

@dataclass(frozen=True)
class DemoConfig:
    workdir: str = "raycart-work"
    shared: str | None = None
    dataset: str = "beauty"
    config: str | None = None  # training configuration YAML (default: configs/<dataset>.yaml)
    retriever_epochs: int | None = None  # None: the configuration's
    ranker_epochs: int | None = 3  # the demo's budget (the Beauty ranker's best validation epoch is 3)
    workers: int = 2
    host: str = "127.0.0.1"
    port: int = 8000
    keep_serving: bool = False
    smoke: bool = False

    @classmethod
    def tiny(cls, workdir: str) -> DemoConfig:
        return cls(workdir=workdir, smoke=True, retriever_epochs=3, ranker_epochs=2, workers=1)


def _models(cfg: DemoConfig):
    from training.models.ranker_config import RankerConfig
    from training.models.retriever_config import RetrieverConfig

    if cfg.smoke:  # epochs None: the model configs' own (passing None on made the training loop's range() fail)
        tiny = RankerConfig.tiny().to_dict()
        r_epochs = RetrieverConfig.epochs if cfg.retriever_epochs is None else cfg.retriever_epochs
        k_epochs = tiny["epochs"] if cfg.ranker_epochs is None else cfg.ranker_epochs
        return (RetrieverConfig(dim=16, layers=1, heads=1, max_len=10, epochs=r_epochs, patience=3),
                RankerConfig(**{**tiny, "epochs": k_epochs, "eval_candidates": 50}))
    from training.common.errors import DataError
    from training.jobs.config_file import dataset_config, read_config

    path = cfg.config or dataset_config(cfg.dataset)
    if path is None:
        raise DataError(f"--dataset {cfg.dataset}: no configs/{cfg.dataset}.yaml in this checkout; pass --config FILE")
    r, k = read_config(path, "retriever"), read_config(path, "ranker")
    r_over = {"epochs": cfg.retriever_epochs} if cfg.retriever_epochs else {}
    k_over = {"epochs": cfg.ranker_epochs} if cfg.ranker_epochs else {}
    return (r.model_config(RetrieverConfig, overrides=r_over, where=str(path)),
            k.model_config(RankerConfig, overrides=k_over, where=str(path)))


def _reusable(model_dir: str) -> bool:
    """A model directory this version can load (one of an older model format is retrained)."""
    from training.common.errors import DataError
    from training.inference.modeldir import read_card

    if not (Path(model_dir) / "model.json").exists():
        return False
    try:
        read_card(model_dir)
        return True
    except DataError as exc:
        log.info(f"[demo] not reusing {model_dir}: {exc}")
        return False


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps([asdict(p) if hasattr(p, "__dataclass_fields__") else p for p in parts],
                                     sort_keys=True).encode()).hexdigest()[:10]


def train_models(cfg: DemoConfig, data: str) -> tuple[str, dict]:
    """Train (or reuse, when the same configuration was trained before) retriever and ranker."""
    from training.inference.modeldir import read_card
    from training.jobs.ranker_data import RankerJob
    from training.jobs.train_ranker import train_ranker
    from training.jobs.train_retriever import RetrieverJob, train_retriever

    r_cfg, k_cfg = _models(cfg)
    name = "smoke" if cfg.smoke else cfg.dataset
    models = Path(cfg.workdir) / "models"
    retriever = str(models / f"demo-{name}-retriever-{_key(data, r_cfg)}")
    ranker = str(models / f"demo-{name}-ranker-{_key(data, r_cfg, k_cfg)}")
    runs = str(Path(cfg.workdir) / "ray-results")
    if _reusable(retriever):
        log.info(f"[demo] retriever: reusing {retriever} (same data and configuration)")
    else:
        log.info(f"[demo] training the retriever ({r_cfg.epochs} epochs, {cfg.workers} Ray Train workers)")
        train_retriever(RetrieverJob(data=data, out=retriever, model=r_cfg, workers=cfg.workers, storage=runs,
                                     cache_dir=str(Path(cfg.workdir) / "cache"),
                                     valid_users=0 if cfg.smoke else 3000))
    if _reusable(ranker):
        log.info(f"[demo] ranker: reusing {ranker}")
    else:
        log.info(f"[demo] training the ranker ({k_cfg.epochs} epochs)")
        train_ranker(RankerJob(data=data, retriever=retriever, out=ranker, model=k_cfg, workers=cfg.workers,
                               storage=runs))
    card = read_card(ranker)
    return ranker, {"ranker": card.metrics, "retriever": card.retriever_only}


def _http(method: str, url: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _wait_ready(url: str, timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            status, body = _http("GET", url + "/readyz")
            if status == 200:
                return body
        except OSError:
            pass
        time.sleep(1)
    raise RuntimeError(f"{url}: not ready after {timeout:.0f}s")


def ask(url: str, data: str) -> list[dict]:
    """A few real requests against the running app; prints each and returns them."""
    from training.data.dataset import load_dataset

    ds = load_dataset(data)
    users = ds.users["external_id"].to_pylist()
    rows = ds.items.to_pylist()
    done = []

    def show(title: str, status: int, body: dict, items_key: str = "items") -> None:
        done.append({"request": title, "status": status})
        log.info(f"\n[demo] {title} -> HTTP {status}")
        for it in body.get(items_key, [])[:5]:
            why = it.get("reason", {}).get("because_you_saw")
            extra = f"  score {it['score']:+.3f}  propensity {it['propensity']:.3g}" if "score" in it else ""
            log.info(f"    {it['item_id']:<14} {str(it.get('title') or '')[:48]:<48}{extra}"
                  + (f"  because you saw {why}" if why else ""))
        if items_key not in body:
            log.info(f"    {json.dumps(body)[:200]}")

    status, rec = _http("POST", url + "/recommend", {"user_id": users[0], "k": 5, "context": {"device": "web"}})
    show(f"POST /recommend known user {users[0]} (model {rec.get('model_version')}, policy "
         f"{rec.get('policy_version')})", status, rec)
    if status == 200 and rec["items"]:
        status, fb = _http("POST", url + "/feedback", {"request_id": rec["request_id"],
                                                       "item_id": rec["items"][0]["item_id"], "event": "click"})
        show(f"POST /feedback click on {rec['items'][0]['item_id']}", status, fb)
    session = [r["external_id"] for r in rows[:3]]
    status, anon = _http("POST", url + "/recommend", {"history": session, "k": 5})
    show(f"POST /recommend anonymous session {session}", status, anon)
    twin = rows[1]
    new = {"item_id": "demo-new-item", "title": f"NEW: {twin['title'] or 'item'}", "category": twin["category"],
           "brand": twin["brand"], "attributes": twin["attributes"] or [], "price": twin["price"]}
    status, added = _http("POST", url + "/items", new)
    if status == 409:  # kept from an earlier --keep-serving run of the same work directory
        status, added = 201, {"item_id": new["item_id"], "status": "already added"}
    show(f"POST /items a new item with the content of {twin['external_id']}", status, added)
    status, sim = _http("GET", url + "/items/demo-new-item/similar?k=5")
    show("GET /items/demo-new-item/similar (its vector comes from its content)", status, sim, "similar")
    status, bad = _http("POST", url + "/recommend", {"k": 0})
    show("POST /recommend with k=0 (bad input)", status, bad)
    return done


def warm_up(url: str, data: str) -> dict:
    """Simulated shoppers (the closed-loop simulator) so that the policy has seen what real
    traffic gives it -- clicks as well as impressions -- before the loop is shown: 3 rounds with
    the shop's planted tastes, then every shopper moves to a new category and the app has 5
    rounds to follow; the recovery curve is printed (README "The loop")."""
    from serving.commands.simulator import Shop, SimConfig, simulate

    log.info("\n[demo] simulated shoppers: 3 rounds of 60 with the shop's planted tastes, then each moves to a "
             "category that was not theirs (5 rounds)")
    result = simulate(url, Shop.load(data), SimConfig(rounds=8, drift_after=3, shoppers=60, k=10, seed=7),
                      progress=lambda line: log.info("[demo]   " + line.removeprefix("[simulate] ").split("  /")[0]))
    log.info("[demo] " + "\n[demo] ".join(recovery_curve(result["rounds"])))
    return result["summary"]


def recovery_curve(rounds: list[dict]) -> list[str]:
    """Lines of text: each drift round's share of shown items in the new taste, as a bar and as a
    share of the stationary level.

    >>> rows = [{"phase": "stationary", "taste_share": 0.8}, {"phase": "drift", "taste_share": 0.4}]
    >>> recovery_curve(rows)[1]
    'after 1 round(s)  0.400  ##########            50 % of before'
    """
    stat = [r["taste_share"] for r in rounds if r["phase"] == "stationary"]
    base = sum(stat) / len(stat) if stat else 0.0
    lines = [f"recovery after the move (share of shown items in the new taste; before it: {base:.3f})"]
    for i, r in enumerate([r for r in rounds if r["phase"] == "drift"], 1):
        share = r["taste_share"]
        bar = "#" * int(round(20 * share / base)) if base else ""
        lines.append(f"after {i} round(s)  {share:.3f}  {bar:<20} {100 * share / base:3.0f} % of before"
                     if base else f"after {i} round(s)  {share:.3f}")
    return lines


def loop_story(url: str, data: str) -> dict:
    """The online loop in two answers: a shopper clicks and adds to cart an item off their usual
    path; the next answer (real-time history) changes, and its reasons say why."""
    from training.data.dataset import load_dataset

    ds = load_dataset(data)
    category = dict(zip(ds.items["external_id"].to_pylist(), ds.items["category"].to_pylist()))
    user = ds.users["external_id"][0].as_py()
    status, first = _http("POST", url + "/recommend", {"user_id": user, "k": 6})
    if status != 200 or not first.get("items"):
        log.info(f"\n[demo] the loop: /recommend answered {status}; skipped")
        return {"request": "loop", "status": status}
    usual = collections.Counter(category.get(i["item_id"]) for i in first["items"]).most_common(1)[0][0]
    # an item off the usual path: outside the answer's main category where there are categories
    target = next((i for i in reversed(first["items"]) if category.get(i["item_id"]) != usual), first["items"][-1])
    log.info(f"\n[demo] the loop: shopper {user} sees {_describe(first['items'], category)}")
    for event in ("click", "cart"):
        _http("POST", url + "/feedback", {"request_id": first["request_id"], "item_id": target["item_id"],
                                           "event": event})
    what = f" ({category[target['item_id']]})" if category.get(target["item_id"]) else ""
    log.info(f"[demo]   ... clicks and adds to cart {target['item_id']}{what}: {target.get('title') or ''}")
    status, second = _http("POST", url + "/recommend", {"user_id": user, "k": 6})
    before = {i["item_id"] for i in first["items"]}
    log.info(f"[demo]   next answer (real-time history: {second.get('live_history')} item(s), state "
          f"{second.get('state')}): {_describe(second.get('items', []), category)}")
    for it in second.get("items", []):
        if it["item_id"] in before:
            continue
        why = it["reason"].get("because_you_saw")
        shared = ", ".join(it["reason"].get("shared", [])[:3])
        log.info(f"[demo]     new: {it['item_id']:<12} {str(it.get('title') or '')[:40]:<40} because you saw {why}"
              + (f" (shared: {shared})" if shared else ""))
    return {"request": "loop: click, cart, next answer", "status": status,
            "changed": len({i["item_id"] for i in second.get("items", [])} - before),
            "because_of_the_click": sum(1 for i in second.get("items", [])
                                        if i["reason"].get("because_you_saw") == target["item_id"])}


def _describe(items: list[dict], category: dict) -> str:
    if any(category.get(i["item_id"]) for i in items):
        counts = collections.Counter(category.get(i["item_id"]) for i in items)
        return ", ".join(f"{n} {c}" for c, n in counts.most_common())
    return " ".join(i["item_id"] for i in items)


def run_demo(cfg: DemoConfig) -> dict:
    from training.baselines.run import run_baseline
    from training.common.ray_env import init_ray
    from training.data.known import KnownData, format_table, prepare_cached
    from training.data.prepare import prepare
    from training.evaluation.run import write_json

    start = time.time()
    seconds: dict[str, float] = {}  # per part of the demo
    if cfg.smoke:
        data = str(Path(cfg.workdir) / "data" / "smoke-shop")
        if not (Path(data) / "dataset.json").exists():
            prepare("synthetic", None, data, num_users=300, num_items=200, num_events=12_000, images=False)
    elif cfg.dataset == SHOP:
        data = str(Path(cfg.workdir) / "data" / SHOP)
        if not (Path(data) / "dataset.json").exists():
            prepare("synthetic", None, data)  # the default size: 5,000 users, 2,000 items, 100k events
    else:
        data = prepare_cached(cfg.dataset, KnownData(workdir=cfg.workdir, shared=cfg.shared))
    seconds["prepare"] = time.time() - start
    t = time.time()
    rows = []
    for model in ("pop", "itemknn"):
        rows.append({"dataset": "smoke-shop" if cfg.smoke else cfg.dataset, "scheme": "loo", "model": model,
                     **run_baseline(data, model, "loo", "test")})
    log.info(format_table(rows))
    seconds["baselines"] = time.time() - t
    t = time.time()
    init_ray()
    ranker, metrics = train_models(cfg, data)
    seconds["train"] = time.time() - t
    t = time.time()
    from serving.deploy.run import start_app, stop_app
    from training.common.ray_env import quiet_ray

    quiet_ray()  # importing Serve set its driver logger back to INFO

    from training.common import storage
    from training.data.feedback import read_feedback

    # absolute: Serve replicas need not share this process's working directory
    work = Path(storage.absolute(cfg.workdir)) / ("serve-smoke" if cfg.smoke else f"serve-{cfg.dataset}")
    args: dict[str, Any] = {"model_dir": storage.absolute(ranker), "data_dir": storage.absolute(data),
            "feedback_root": str(work / "feedback"),
            "wal_dir": str(work / "wal"), "policy_state": str(work / "policy.npz"), "items_root": str(work / "items"),
            "state_dir": str(work / "user-state"),
            # the dataset's own folder: the shop page's admin form adds items with its pictures
            "image_root": storage.absolute(data),
            "trust_loopback": True}  # a local demo without keys: the requests below and the browser are on loopback
    url = f"http://{cfg.host}:{cfg.port}"
    try:
        start_app(args, cfg.host, cfg.port, http_timeout_s=30)
        ready = _wait_ready(url)
        seconds["serve start"] = time.time() - t
        log.info(f"\n[demo] serving {ranker} on {url} ({ready['items']:,} items)")
        t = time.time()
        answered = ask(url, data)
        if cfg.dataset == SHOP and not cfg.smoke:
            warm_up(url, data)
        answered.append(loop_story(url, data))
        seconds["requests"] = time.time() - t
        if cfg.keep_serving:
            stop = threading.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
            log.info(f"\n[demo] --keep-serving: up on {url} until Ctrl-C / SIGTERM "
                  f"(open {url}/shop in a browser, or: curl -s {url}/recommend -H 'content-type: application/json' "
                  f"-d '{{\"k\": 3}}')")
            stop.wait()
    finally:
        log.info("\n[demo] shutting down: flushing the feedback log, checkpointing the policy")
        stop_app()
    impressions = read_feedback(args["feedback_root"], "impressions").num_rows
    events = read_feedback(args["feedback_root"], "events").num_rows
    summary: dict[str, Any]
    summary = {"dataset": "smoke-shop" if cfg.smoke else cfg.dataset, "model_dir": ranker,
               "baselines": {r["model"]: {"NDCG@10": r["NDCG@10"], "HR@10": r["HR@10"]} for r in rows},
               "retriever": {k: metrics["retriever"][k] for k in ("NDCG@10", "HR@10")},
               "ranker (two-stage)": {k: metrics["ranker"][k] for k in ("NDCG@10", "HR@10")},
               "requests": answered, "feedback_log": {"impressions": impressions, "events": events},
               "seconds": {k: round(v, 1) for k, v in seconds.items()}, "total_seconds": round(time.time() - start, 1)}
    out = Path(cfg.workdir) / ("demo-smoke.json" if cfg.smoke else "demo-summary.json")
    write_json(summary, str(out))
    log.info("\n[demo] summary")
    for name, m in [*summary["baselines"].items(), ("retriever", summary["retriever"]),
                    ("ranker (two-stage)", summary["ranker (two-stage)"])]:
        log.info(f"    {name:<20} NDCG@10 {m['NDCG@10']:.4f}  HR@10 {m['HR@10']:.4f}   (test, leave-one-out)")
    ok = sum(1 for r in answered if r["status"] < 300)
    log.info(f"    requests: {ok} answered, {len(answered) - ok} refused as intended (bad input)")
    log.info(f"    feedback log: {impressions} impressions, {events} events in {args['feedback_root']}")
    log.info("    time: " + ", ".join(f"{k} {v:.0f}s" for k, v in summary["seconds"].items())
          + f"; total {summary['total_seconds']:.0f}s -> {out}")
    return summary


def _cmd(a: argparse.Namespace) -> int:
    cfg = DemoConfig.tiny(a.workdir) if a.smoke else DemoConfig(workdir=a.workdir, shared=a.shared,
                                                                  dataset=a.dataset, config=a.config)
    from dataclasses import replace

    run_demo(replace(cfg, port=a.port, keep_serving=a.keep_serving))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from training.data.known import DATASETS

    p = sub.add_parser("demo", help="the main job: real data -> baselines -> train -> serve -> requests",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="raycart-work", help="where data, models and logs go")
    p.add_argument("--shared", help="the shared data folder (default: RAYCART_SHARED or ../shared)")
    p.add_argument("--dataset", default="beauty", choices=[*DATASETS, SHOP],
                   help=f"a real dataset from ../shared, or '{SHOP}': the synthetic shop (planted tastes)")
    p.add_argument("--config", help="training configuration YAML (default: configs/DATASET.yaml; e.g. the "
                                    "best.yaml of a `raycart tune` sweep)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port on 127.0.0.1")
    p.add_argument("--keep-serving", action="store_true", help="stay up until SIGINT/SIGTERM")
    p.add_argument("--smoke", action="store_true", help="small synthetic shop, tiny models (~2 min)")
    p.set_defaults(func=_cmd)
