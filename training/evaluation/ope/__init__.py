"""Off-policy evaluation: what a policy other than the one that served would have earned.

* :mod:`~training.evaluation.ope.serving_log`: Raycart's own slates (the serving feedback log),
  logged value and the greedy policy's slate IPS / SNIPS;
* :mod:`~training.evaluation.ope.slate_target`: a ranking model as the target on the serving log;
* :mod:`~training.evaluation.ope.slate_pi`: the pseudo-inverse estimator for slates;
* :mod:`~training.evaluation.ope.estimators`: IPS, SNIPS, DM, DR and Switch-DR on logged bandit
  feedback with positions (Open Bandit Dataset), with :mod:`~training.evaluation.ope.data` (the
  logged rounds and the target policy) and :mod:`~training.evaluation.ope.reward_model` (the
  cross-fitted reward model of DM and DR);
* :mod:`~training.commands.ope`: the ``raycart ope`` command (no library module imports it).

Import from the modules; this package imports nothing, so the CLI starts without numpy or pyarrow.
"""
