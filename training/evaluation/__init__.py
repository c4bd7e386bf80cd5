"""Full-ranking evaluation: HR, Recall, NDCG, MRR and coverage over the whole catalogue."""

from training.evaluation.metrics import EvalConfig, evaluate, rank_targets

__all__ = ["EvalConfig", "evaluate", "rank_targets"]
