"""Full-ranking evaluation: HR, Recall, NDCG, MRR and coverage over the whole catalogue.

Import from :mod:`training.evaluation.metrics` (kept out of this package's import so the CLI
starts without loading torch). Off-policy evaluation is the sub-package :mod:`training.evaluation.ope`.
"""
