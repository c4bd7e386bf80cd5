"""``raycart ope``: off-policy evaluation of the serving log or of logged bandit feedback.

The command only parses its arguments, calls the library and logs a summary:

* ``--feedback ROOT``: the serving log, greedy target (:mod:`training.evaluation.ope.serving_log`),
  or a model directory as target (:mod:`training.evaluation.ope.slate_target`);
* ``--data DIR --target-policy FILE``: logged bandit feedback (:mod:`training.evaluation.ope.data`,
  :mod:`training.evaluation.ope.reward_model`, :mod:`training.evaluation.ope.estimators`).

The library modules are imported where the command runs, so ``raycart --help`` (which registers
every sub-command) loads neither numpy nor pyarrow nor torch.
"""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from training.common.errors import DataError

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)


def _cmd(a: argparse.Namespace) -> int:
    from training.evaluation.run import write_json

    if not a.feedback and not a.data:
        raise DataError("give --feedback ROOT (the serving log) or --data DIR (logged bandit feedback)")
    result = _serving_log(a) if a.feedback else _bandit_data(a)
    if a.out:
        write_json(result, a.out)
        log.info(f"wrote {a.out}")
    return 0


def _serving_log(a: argparse.Namespace) -> dict:
    from training.data.feedback import read_feedback
    from training.evaluation.ope.serving_log import off_policy_value

    impressions = read_feedback(a.feedback, "impressions")
    if impressions.num_rows == 0:
        raise DataError(f"{a.feedback}: the feedback log holds no impressions")
    if a.target_policy not in (None, "greedy"):
        return _model_target(a, impressions, read_feedback(a.feedback, "events"))
    result = off_policy_value(impressions, read_feedback(a.feedback, "events"), bootstrap=a.bootstrap)
    log.info(f"{result['requests']:,} requests, {result['impressions']:,} impressions, {result['events']:,} events")
    logged = result["logged"]
    log.info(f"logged policy: {logged['value']:.4f} reward per request"
          + (f" (95% CI {logged['value_95ci'][0]:.4f}-{logged['value_95ci'][1]:.4f})" if "value_95ci" in logged else ""))
    greedy = result["greedy"]
    if greedy is None:
        log.info("greedy policy: no estimate (these impressions carry no greedy flag)")
        return result
    def ci(k: str) -> str:
        return f" (95% CI {greedy[k][0]:.4f}-{greedy[k][1]:.4f})" if k in greedy else ""

    log.info(f"greedy policy (no exploration): slate IPS {greedy['ips']:.4f}{ci('ips_95ci')}, SNIPS {greedy['snips']:.4f}; "
          f"effective sample size {greedy['effective_sample_size']:.0f} of {greedy['requests']:,} requests, max weight "
          f"{greedy['max_weight']:.1f}")
    log.info(f"  independent-item IPS {greedy['iips']:.4f}{ci('iips_95ci')} (assumes no interaction between slots: "
          "see training/evaluation/ope/serving_log.py)")
    return result


def _model_target(a: argparse.Namespace, impressions: pa.Table, events: pa.Table) -> dict:
    from training.common import storage
    from training.evaluation.ope.slate_target import model_ranker, target_slate_value

    if not storage.exists(storage.join(a.target_policy, "model.json")):
        raise DataError(f"--target-policy {a.target_policy}: with --feedback, 'greedy' or a Raycart model directory")
    if not a.data:
        raise DataError("--data DIR is required with a model as --target-policy (the dataset it was trained on)")
    result = target_slate_value(impressions, events, model_ranker(a.target_policy, a.data), a.epsilon,
                                bootstrap=a.bootstrap, seed=a.seed)
    result["target_policy"] = a.target_policy
    ips, snips = result["ips"], result["snips"]
    def ci(r: dict) -> str:
        return f" (95% CI {r['ci95'][0]:.4f}-{r['ci95'][1]:.4f})" if "ci95" in r else ""

    log.info(f"{result['requests']:,} requests; logged {result['logged']['value']:.4f} reward per request")
    log.info(f"{a.target_policy} with epsilon {a.epsilon}: slate IPS {ips['value']:.4f}{ci(ips)}, SNIPS "
          f"{snips['value']:.4f}{ci(snips)}; effective sample size {result['effective_sample_size']:.1f}, "
          f"{result['supported_requests']:,} requests it could have shown")
    return result


def _bandit_data(a: argparse.Namespace) -> dict:
    from training.evaluation.ope.data import bandit_log, read_target_policy
    from training.evaluation.ope.estimators import estimate
    from training.evaluation.ope.reward_model import cross_fitted_rewards

    if not a.target_policy:
        raise DataError("--target-policy FILE is required with --data (a table item_id, position, probability)")
    bandit = bandit_log(a.data, a.logged_policy)
    dist = read_target_policy(a.target_policy, bandit)
    q_hat = cross_fitted_rewards(bandit.logged, bandit.features, folds=a.folds, seed=a.seed)
    est = estimate(bandit.logged, dist, q_hat, bootstrap=a.bootstrap, seed=a.seed, tau=a.tau)
    result = {"rounds": bandit.logged.n, "logged": {"value": float(bandit.logged.reward.mean())},
              "target_policy": a.target_policy, "reward_model": {"kind": "logistic", "folds": a.folds}, **est}
    log.info(f"{bandit.logged.n:,} logged rounds, {bandit.logged.n_actions} actions, {bandit.logged.n_positions} positions; "
          f"logged value {result['logged']['value']:.5f}")
    log.info(f"{'estimator':<10} {'value':>9} {'95% CI':>21} {'ESS':>9} {'max w':>8}")
    for name, r in est.items():
        ci = f"{r['ci95'][0]:.5f}-{r['ci95'][1]:.5f}" if "ci95" in r else ""
        log.info(f"{name:<10} {r['value']:>9.5f} {ci:>21} {r['effective_sample_size']:>9.0f} {r['max_weight']:>8.2f}")
    return result


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ope", help="off-policy evaluation (the serving log, or logged bandit feedback)",
                       description="--feedback ROOT: the serving log's logged value and the greedy policy's "
                                   "slate IPS/SNIPS (and independent-item IPS). --data DIR --target-policy FILE: "
                                   "IPS, SNIPS, DM, DR and Switch-DR of a target policy on a dataset's logged "
                                   "bandit feedback (e.g. the Open Bandit Dataset).")
    p.add_argument("--feedback", help="feedback log root (local or s3://)")
    p.add_argument("--data", help="a prepared dataset with a bandit table (raycart data prepare --source obd)")
    p.add_argument("--target-policy", help="CSV/Parquet table item_id, position, probability [, round]; "
                                           "with --feedback: 'greedy' (default) or a model directory")
    p.add_argument("--epsilon", type=float, default=0.05,
                   help="a model target explores like the serving policy, with this epsilon")
    p.add_argument("--logged-policy", help="only the rounds this logging policy logged (OBD: random or bts)")
    p.add_argument("--folds", type=int, default=3, help="cross-fitting folds of the reward model")
    p.add_argument("--tau", type=float, default=100.0, help="Switch-DR: largest weight corrected by the data")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap samples for the 95%% intervals")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the result JSON here")
    p.set_defaults(func=_cmd)
