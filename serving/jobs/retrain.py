"""Retraining from the feedback log (run by `raycart retrain`, :mod:`serving.commands.retrain`, or on a schedule by the detached Retrainer): retrain the ranker, gate it, and promote it or keep the old one.

1. **Data**: the base dataset plus the log's engagement (:func:`training.data.from_feedback.merge_feedback`),
   and the shown slates as extra ranker lists -- engaged items against shown-and-skipped ones,
   each list weighted by the inverse examination probability of its engaged slot, estimated from
   the log's exploration draws (:mod:`training.data.exposure`).
2. **Train**: the serving ranker's configuration, warm-started from its weights
   (``RankerJob.init_from``), with Ray Train; the run is named after the inputs and the training
   settings, so a retrain killed midway resumes from its checkpoint when run again, and nothing of
   the serving model or the log is touched before the decision. The warm start is validated before
   the first epoch and returned unless an epoch beats it. Levers for fine-tuning on what is new
   (``recent_weight``, ``replay``, ``warmup_steps``, ``lr_scale``; see :class:`RetrainJob`).
3. **Gate** (:func:`gate`), both must pass:
   - *holdout*: a paired test over the users of the merged data's ``loo`` test split (each user's
     newest event -- for users with feedback, what they did after the serving model was trained):
     the bootstrap 95 % interval of the per-user NDCG@10 difference, candidate - serving
     (:func:`training.evaluation.compare.paired_bootstrap`), must exclude a loss larger than
     ``ndcg_tolerance`` (its lower bound >= -0.002 by default). A fixed margin on the means let
     slightly worse candidates through; the interval refuses them once the users show it;
   - *off-policy*: on the logged traffic, the slate IPS of epsilon-greedy over each model's ranking
     (:func:`training.evaluation.ope.slate_target.compare_targets`); the candidate is refused when it is
     worse with 95 % confidence (the paired bootstrap interval of new - old lies below 0). Where the
     logs barely overlap either model's rankings (effective sample size < ``min_ess``) this check
     is reported as inconclusive and the holdout decides.
4. **Promote**: with ``app_args`` (the running app's ``AppArgs`` as YAML/JSON), the app is
   redeployed with the candidate ``work/candidates/<version>`` and the merged data, named by its
   builder's import path and arguments as ``serve deploy`` names it (:func:`serving.deploy.run.run_app`:
   Serve replaces the replicas one at a time, no request is dropped -- ``tests/integration/test_serve.py``).
   Without it the decision report names the model directory to roll out.

Every run writes ``work/decisions/<version>.json``: inputs, data counts, both models' metrics, the
OPE comparison, the rules and the decision.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, replace

from training.common import storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrainJob:
    feedback: str  # the serving feedback log root
    data: str  # the base dataset the serving model was trained on
    model: str  # the serving ranker directory
    work: str  # where the merged data, the run, the candidate and the decisions go
    epochs: int | None = None  # None: the serving model's configuration
    workers: int = 1
    # the gate: the lower bound of the paired bootstrap 95 % interval of NDCG@10 (candidate - serving)
    ndcg_tolerance: float = 0.002
    epsilon: float = 0.05  # the serving policy's exploration (the OPE targets explore like it)
    min_ess: float = 10.0
    exposure: bool = True  # the shown slates as position-debiased ranker lists
    max_weight: float = 10.0  # cap of a list's position weight
    # fine-tuning levers (training.jobs.ranker_data.RankerJob): the lists whose target is in the log,
    # and the shown slates, weigh recent_weight; a `replay` fraction of the older lists is kept; the
    # learning rate warms up over warmup_steps optimiser steps and is the serving model's x lr_scale.
    # The defaults change nothing.
    recent_weight: float = 1.0
    replay: float = 1.0
    warmup_steps: int = 0
    lr_scale: float = 1.0
    app_args: str | None = None  # promote into the running app described by these AppArgs
    bootstrap: int = 1000


def gate(old: dict, new: dict, paired: dict, ope: dict, ndcg_tolerance: float, min_ess: float) -> dict:
    """The decision from the two models' holdout metrics, their paired comparison
    (:func:`~training.evaluation.compare.paired_bootstrap` of per-user NDCG@10) and the OPE
    comparison (rules in the module doc)."""
    if ndcg_tolerance < 0:
        raise ValueError(f"ndcg_tolerance must be >= 0, got {ndcg_tolerance}")
    low, high = paired["ci95"]
    holdout_ok = low >= -ndcg_tolerance
    ess = min(ope["old_effective_sample_size"], ope["new_effective_sample_size"])
    if ess < min_ess or "difference_ci95" not in ope:
        ope_verdict = "inconclusive"
    else:
        ope_verdict = "worse" if ope["difference_ci95"][1] < 0 else "not worse"
    promote = holdout_ok and ope_verdict != "worse"
    reasons = [f"holdout NDCG@10 {new['NDCG@10']:.4f} vs serving {old['NDCG@10']:.4f}: paired difference "
               f"{paired['difference']:+.4f}, 95% CI {low:+.4f}..{high:+.4f} over {paired['users']:,} users "
               f"(lower bound must be >= {-ndcg_tolerance:+.4f}): " + ("ok" if holdout_ok else "refused"),
               f"off-policy (slate IPS, new - old): {ope.get('difference', float('nan')):+.4f}"
               + (f", 95% CI {ope['difference_ci95'][0]:+.4f}..{ope['difference_ci95'][1]:+.4f}"
                  if "difference_ci95" in ope else "") + f", ESS {ess:.1f}: {ope_verdict}"]
    return {"promote": promote, "holdout_ok": holdout_ok, "holdout": paired, "ope": ope_verdict, "reasons": reasons}


def retrain(job: RetrainJob) -> dict:
    import pyarrow as pa
    import pyarrow.compute as pc

    from training.data.dataset import load_dataset, save_dataset
    from training.data.feedback import read_feedback
    from training.data.from_feedback import merge_feedback
    from training.evaluation.compare import paired_bootstrap
    from training.evaluation.ope.slate_target import compare_targets, model_ranker
    from training.evaluation.run import evaluate_model_dir
    from training.inference.modeldir import read_card
    from training.jobs.ranker_data import RankerJob, check_recency
    from training.models.kinds import trainer
    from training.models.ranker_config import RankerConfig

    check_recency(job.recent_weight, job.replay, job.warmup_steps, job.lr_scale)
    t0 = time.time()
    card = read_card(job.model)
    if card.kind != "ranker":
        from training.common.errors import DataError

        raise DataError(f"{job.model}: retrain needs the serving ranker directory; this one holds a {card.kind!r}")
    if card.reranks is None:
        from training.common.errors import DataError

        raise DataError(f"{job.model}: its model card names no retriever (reranks)")
    impressions, events = read_feedback(job.feedback, "impressions"), read_feedback(job.feedback, "events")
    # the inputs and the training settings name the run: the same ones resume a killed run, others start afresh
    digest = hashlib.sha256(f"{storage.absolute(job.model)}|{impressions.num_rows}|{events.num_rows}|{job.epochs}|"
                            f"{job.exposure}|{job.recent_weight}|{job.replay}|{job.warmup_steps}|{job.lr_scale}".encode())
    version = f"retrain-{time.strftime('%Y%m%d')}-{digest.hexdigest()[:8]}"
    log.info(f"[retrain] {version}: {impressions.num_rows:,} impressions, {events.num_rows:,} events from {job.feedback}")
    base = load_dataset(job.data)  # read once: merged into, and the histories the OPE replays
    merged, counts = merge_feedback(base, impressions, events)
    report: dict = {"version": version, "inputs": {"feedback": job.feedback, "data": job.data, "model": job.model},
                    "feedback": counts}
    if counts["kept"] == 0:
        report["decision"] = {"promote": False, "reasons": ["no engagement of known users in the log: nothing to learn"]}
        return _finish(job, report, t0)
    data = storage.join(job.work, "data", version)
    if not storage.exists(storage.join(data, "dataset.json")):
        save_dataset(merged, data, overwrite=True)
    log.info(f"[retrain] data: {counts['kept']:,} new events appended ({data})")
    exposure = None
    if job.exposure:
        from training.data.exposure import exposure_lists

        lists = exposure_lists(merged, impressions, events, max_weight=job.max_weight)
        report["exposure"] = lists.report
        if len(lists):
            exposure = storage.join(job.work, "exposure", f"{version}.parquet")
            lists.save(exposure)
        theta = lists.report["examination"].get("theta")
        log.info(f"[retrain] shown slates: {len(lists):,} lists of engaged vs shown-and-skipped items; examination by "
              f"slot {theta if theta else lists.report['examination'].get('note')}")
    recent_since = None
    if job.recent_weight != 1.0 or job.replay < 1.0:  # "new": at or after the log's first kept event
        recent_since = int(pc.min(merged.events.slice(base.events.num_rows)["timestamp"].cast(pa.int64())).as_py())
    cfg = RankerConfig(**card.config["ranker"])
    if job.epochs is not None:
        cfg = replace(cfg, epochs=job.epochs)
    cfg = replace(cfg, lr=cfg.lr * job.lr_scale)
    candidate = storage.join(job.work, "candidates", version)
    new_metrics = trainer("ranker").run_train(RankerJob(data=data, retriever=card.reranks.path, out=candidate, model=cfg,
                                         workers=job.workers, storage=storage.join(job.work, "runs"), name=version,
                                         init_from=job.model, exposure=exposure, overwrite=True,
                                         recent_since_us=recent_since, recent_weight=job.recent_weight,
                                         replay=job.replay, warmup_steps=job.warmup_steps))
    old_users: dict = {}
    new_users: dict = {}
    old_metrics = evaluate_model_dir(data, job.model, per_user=old_users)
    new_holdout = evaluate_model_dir(data, candidate, per_user=new_users)  # the same users, in order
    paired = paired_bootstrap(old_users["NDCG@10"], new_users["NDCG@10"], resamples=job.bootstrap)
    log.info(f"[retrain] holdout NDCG@10: candidate {new_holdout['NDCG@10']:.4f}, serving {old_metrics['NDCG@10']:.4f} "
             f"(paired difference {paired['difference']:+.4f}, 95% CI {paired['ci95'][0]:+.4f}..{paired['ci95'][1]:+.4f})")
    # the logged requests are replayed with the histories of *their* time: the base data (the merged
    # data holds the very clicks being evaluated, and a model never shows what a history holds)
    ope = compare_targets(impressions, events, model_ranker(job.model, base), model_ranker(candidate, base),
                          job.epsilon, bootstrap=job.bootstrap)
    decision = gate(old_metrics, new_holdout, paired, ope, job.ndcg_tolerance, job.min_ess)
    run = new_metrics["run"]
    report["training"] = {"run": version, "epochs": run["epoch_numbers"], "recent_weight": job.recent_weight,
                          "replay": job.replay, "warmup_steps": job.warmup_steps, "lr": cfg.lr,
                          "best_valid_NDCG@10": run.get("best_valid_NDCG@10"),
                          "resumes": run["resumes"], "seconds": run["seconds"]}
    report.update({"candidate": candidate, "data": data, "metrics": {"serving": _brief(old_metrics), "candidate": _brief(new_holdout)},
                   "ope": ope, "rules": {"ndcg_tolerance": job.ndcg_tolerance, "min_ess": job.min_ess,
                                         "holdout": "refuse unless the paired 95% interval of NDCG@10 "
                                                    "(new - old) has its lower bound >= -ndcg_tolerance",
                                         "ope": "refuse when the paired 95% interval of new - old is below 0"},
                   "decision": decision})
    if decision["promote"] and job.app_args:
        report["promoted"] = promote(job.app_args, candidate, version, data)
    return _finish(job, report, t0)


def _brief(metrics: dict) -> dict:
    return {k: metrics[k] for k in ("HR@10", "NDCG@10", "HR@20", "NDCG@20") if k in metrics}


def promote(app_args: str, candidate: str, version: str, data: str) -> dict:
    """Redeploy the app running with ``app_args`` (its AppArgs as YAML/JSON) with the candidate (a complete model directory, published atomically by
    training under its version's name) and the merged data ``data``."""
    import yaml

    from serving.core.schemas import AppArgs
    from serving.deploy.run import APP_BUILDER, run_app

    serving = AppArgs(**yaml.safe_load(storage.read_bytes(app_args)))
    # the merged data too: its histories hold the engagement the candidate learned from; the next
    # retrain merges the log into the base data again, not into this merge
    args = serving.model_copy(update={"model_dir": storage.absolute(candidate), "model_version": version,
                                      "data_dir": storage.absolute(data), "base_data_dir": serving.base_data})
    run_app(APP_BUILDER, args)  # declarative, as `serve deploy`: the builder's import path and its args
    log.info(f"[retrain] promoted {version}: the app now serves {candidate}")
    return {"model_dir": candidate, "model_version": version, "data_dir": data}


def _finish(job: RetrainJob, report: dict, t0: float) -> dict:
    from training.evaluation.run import write_json

    report["seconds"] = round(time.time() - t0, 1)
    path = storage.join(job.work, "decisions", f"{report['version']}.json")
    write_json(report, path)
    d = report["decision"]
    log.info(f"[retrain] decision: {'PROMOTE' if d['promote'] else 'KEEP the serving model'} ({report['seconds']} s)")
    for reason in d["reasons"]:
        log.info(f"  - {reason}")
    log.info(f"[retrain] report: {path}")
    report["report"] = path
    return report
